"""Where Django's time goes in one annotation cycle (next-task + submit), request by request.

In one process, without a network: the WSGI application that gunicorn serves
(``config.wsgi``) is called directly, with the request environ gunicorn would build, against a
fresh PostgreSQL database (``pairwise_bench_profile``) holding an active batch made by
``bench/annotation_loop.py``'s fixture code (imported from there, production settings as there).
Annotators take turns, one cycle each: POST /api/v1/tasks/next/, then POST /api/v1/annotations/.

After a warm-up, three passes of ``--cycles`` cycles each:

1. Timing, nothing attached: CPU time (this process: Django, DRF, psycopg's client side) and
   wall time per request. PostgreSQL's own CPU is in another process; here it shows as wall.
2. SQL: every statement each request runs, with its wall time (Django's execute_wrapper),
   grouped by statement.
3. Profile: pyinstrument samples the call stack every ``--interval-ms``. Each sample goes to
   one *area*, by the innermost frame on its stack that belongs to one (so the token lookup's
   SQL counts as authentication, a serializer's as serializers, the view's services as ours),
   and is split into waiting for PostgreSQL (psycopg waiting on its socket), ORM + driver
   (Django's ``django.db`` and psycopg running), and the rest. pyinstrument counts wall time;
   the CPU (all but the waiting) is scaled to the CPU measured in pass 1, which the profiler
   inflates (the factor is printed).

Printed: CPU and wall ms per request and per cycle, statements per request, the SQL of each
request with its share of the request's wall time, the areas' CPU per request and cycle, and
the top functions (self time) of each area: a before/after table for a change is the first
and third table of two runs. pyinstrument is a bench extra: ``pip install -e .[bench]``.

Usage: python bench/profile_requests.py [--comparisons 5000] [--cycles 300]
           [--annotators 32] [--overlap 3] [--interval-ms 1] [--top 5] [--keep-db]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import random
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.annotation_loop import (  # noqa: E402  (the repository first on the path)
    NEXT,
    REQUESTS,
    SUBMIT,
    build_fixture,
    django_env,
    drop_database,
    submit_body,
    table,
)

PROFILE_DB = "pairwise_bench_profile"
PATHS = {NEXT: "/api/v1/tasks/next/", SUBMIT: "/api/v1/annotations/"}
WARMUP_CYCLES = 20

# Areas, by where a frame's code lives (a path fragment) or what it is called (``function`` or
# ``Class.function``, the class of ``self`` at run time). A sample goes to
# the area of the innermost frame on its stack that matches a rule; the first rule that matches
# that frame wins. Code that serves whoever calls it (models, the ORM, psycopg, Django's
# HttpResponse) has no rule, so its time goes to its caller's area.
AREA_RULES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    # (area, path fragments, function names)
    ("permissions", ("rest_framework/permissions.py", "django/contrib/auth/backends.py"), (
        "check_permissions", "has_permission", "get_all_permissions", "has_perm",
    )),
    ("authentication (token lookup)", (
        "rest_framework/authentication.py", "rest_framework/authtoken/",
    ), ("_authenticate",)),
    ("throttles", ("rest_framework/throttling.py", "annotation_app/api/throttles.py"), (
        "check_throttles",
    )),
    ("DRF request: parsing, negotiation", (
        "rest_framework/parsers.py", "rest_framework/negotiation.py", "rest_framework/request.py",
    ), ("JSONParser.parse", "perform_content_negotiation", "initialize_request")),
    ("serializers", (
        "rest_framework/serializers.py", "rest_framework/fields.py",
        "rest_framework/relations.py", "rest_framework/utils/serializer_helpers.py",
        "annotation_app/api/serializers.py", "annotation_app/api/fields.py",
    ), ()),
    ("rendering the response", (
        "rest_framework/renderers.py", "rest_framework/response.py",
    ), ("finalize_response",)),
    ("our services", ("annotation_app/services/", "annotation_app/selectors.py"), ()),
    ("our views", ("annotation_app/api/views.py",), ()),
    ("DRF view: dispatch, errors", (
        "rest_framework/views.py", "rest_framework/viewsets.py", "rest_framework/generics.py",
        "annotation_app/api/errors.py",
    ), ()),
    ("middleware (Django, sessions, CSRF, CSP, axes, whitenoise)", (
        "django/middleware/", "django/contrib/sessions/", "django/contrib/messages/",
        "django/contrib/auth/middleware.py", "django/utils/deprecation.py", "csp/", "axes/",
        "whitenoise/",
    ), ()),
    ("Django: WSGI handler, URL routing, signals", (
        "django/core/handlers/", "django/urls/", "django/dispatch/",
    ), ()),
]  # fmt: skip
OTHER = "other"
AREAS = [area for area, _, _ in AREA_RULES] + [OTHER]
WAIT, ORM, PYTHON = "waiting for PostgreSQL", "ORM + driver", "python"
SMALL_SHARE = 0.005  # call sites below this share of the CPU are not listed


# --- arguments and setup --------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comparisons", type=int, default=5000, help="comparisons in the batch")
    parser.add_argument("--cycles", type=int, default=300, help="cycles in each pass")
    parser.add_argument("--annotators", type=int, default=32, help="annotators taking turns")
    parser.add_argument("--overlap", type=int, default=3, help="annotations per comparison")
    parser.add_argument(
        "--interval-ms", type=float, default=1.0, help="pyinstrument's sampling interval"
    )
    parser.add_argument("--top", type=int, default=5, help="functions shown per area")
    parser.add_argument("--import-chunk", type=int, default=20_000, help="records per import")
    parser.add_argument("--keep-db", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("pyinstrument") is None:
        parser.error("pyinstrument is missing: pip install -e .[bench]")
    needed = (3 * args.cycles + WARMUP_CYCLES + 1) / args.annotators
    if min(args.comparisons, args.overlap * args.comparisons / args.annotators) < needed:
        parser.error(
            f"{args.annotators} annotators doing {3 * args.cycles + WARMUP_CYCLES} cycles need "
            "a larger batch: raise --comparisons or --annotators"
        )
    return args


def wsgi_post(app, path: str, body: bytes, token: str) -> tuple[int, bytes]:
    """POST ``body`` (JSON) to the WSGI ``app`` as gunicorn would hand it over."""
    environ = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_ACCEPT": "application/json",
        "HTTP_AUTHORIZATION": f"Token {token}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    statuses: list[str] = []
    result = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        content = b"".join(result)
    finally:
        result.close()  # sends request_finished, as gunicorn does
    return int(statuses[0].split()[0]), content


class Cycles:
    """Annotators taking turns at next-task + submit through the WSGI application."""

    def __init__(self, app, tokens: list[str]):
        self.app, self.tokens, self.turn = app, tokens, 0
        self.rng = random.Random(0)

    def run(self, count: int, measure: Callable[[str], AbstractContextManager]) -> None:
        for _ in range(count):
            token = self.tokens[self.turn % len(self.tokens)]
            self.turn += 1
            with measure(NEXT):
                status, payload = wsgi_post(self.app, PATHS[NEXT], b"{}", token)
            if status != 200:
                raise RuntimeError(f"next-task answered {status}: {payload[:300]!r}")
            assignment = json.loads(payload)["assignment"]
            body = json.dumps(submit_body(assignment, self.rng)).encode()
            with measure(SUBMIT):
                status, payload = wsgi_post(self.app, PATHS[SUBMIT], body, token)
            if status != 201:
                raise RuntimeError(f"submit answered {status}: {payload[:300]!r}")


@contextmanager
def unmeasured(kind: str) -> Iterator[None]:
    yield


# --- pass 1: timing -------------------------------------------------------------------------


@dataclass
class Timing:
    cpu_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REQUESTS, 0.0))
    wall_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REQUESTS, 0.0))

    @contextmanager
    def measure(self, kind: str) -> Iterator[None]:
        cpu, wall = time.process_time(), time.perf_counter()
        yield
        self.cpu_ms[kind] += 1000 * (time.process_time() - cpu)
        self.wall_ms[kind] += 1000 * (time.perf_counter() - wall)


# --- pass 2: SQL ----------------------------------------------------------------------------


def statement_shape(sql: str) -> str:
    """A statement without its column list and with IN lists folded, to group it by; quotes
    and our tables' ``annotation_app_`` prefix left out, to read it."""
    sql = sql.replace('"', "").replace("annotation_app_", "")
    sql = re.sub(r"^SELECT .*? FROM", "SELECT … FROM", sql, flags=re.S)
    sql = re.sub(r"^(UPDATE \S+ SET) .*? WHERE", r"\1 … WHERE", sql, flags=re.S)
    sql = re.sub(r"^(INSERT INTO \S+) \(.*?\) VALUES .*?( RETURNING|$)", r"\1 …\2", sql, flags=re.S)
    return re.sub(r"IN \((%s, )*%s\)", "IN (…)", sql)


@dataclass
class SqlLog:
    kind: str = NEXT
    calls: dict[str, Counter] = field(default_factory=lambda: {k: Counter() for k in REQUESTS})
    ms: dict[str, Counter] = field(default_factory=lambda: {k: Counter() for k in REQUESTS})
    wall_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REQUESTS, 0.0))

    def execute(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            shape = statement_shape(sql)
            self.calls[self.kind][shape] += 1
            self.ms[self.kind][shape] += 1000 * (time.perf_counter() - started)

    @contextmanager
    def measure(self, kind: str) -> Iterator[None]:
        from django.db import connection

        self.kind = kind
        wall = time.perf_counter()
        with connection.execute_wrapper(self.execute):
            yield
        self.wall_ms[kind] += 1000 * (time.perf_counter() - wall)


# --- pass 3: profile ------------------------------------------------------------------------


@dataclass
class Profile:
    interval_s: float
    records: dict[str, list] = field(default_factory=lambda: {k: [] for k in REQUESTS})

    @contextmanager
    def measure(self, kind: str) -> Iterator[None]:
        from pyinstrument import Profiler

        profiler = Profiler(interval=self.interval_s, async_mode="disabled")
        profiler.start()
        yield
        self.records[kind] += profiler.stop().frame_records


class Frame(NamedTuple):
    """One frame of a pyinstrument sample: ``function\\0path\\0first line`` and attributes."""

    function: str
    qualified: str  # Class.function, with the class of self at run time, or function
    path: str
    first_line: str
    line: str  # the line running

    @classmethod
    def parse(cls, identifier: str) -> Frame:
        name, *attributes = identifier.split("\x01")
        function, path, first_line = name.split("\x00", 2)
        qualified, line = function, first_line
        for attribute in attributes:
            if attribute.startswith("c"):
                qualified = f"{attribute[1:]}.{function}"
            elif attribute.startswith("l"):
                line = attribute[1:]
        return cls(function, qualified, path, first_line, line)

    def location(self, running_line: bool = True) -> str:
        """``Class.function (path:line)``, the path from its package on; the line running, or
        with ``running_line=False`` the function's first line."""
        path = re.sub(r"^.*/lib/python3\.\d+/(site-packages/)?", "", self.path)
        line = self.line if running_line else self.first_line
        return f"{self.qualified} ({path.removeprefix(f'{ROOT}/')}:{line})"


def area_of(stack: list[Frame]) -> tuple[str, Frame]:
    """The sample's area, and the frame that put it there (its call site in the area)."""
    for frame in reversed(stack):  # leaf first
        for area, fragments, functions in AREA_RULES:
            named = frame.function in functions or frame.qualified in functions
            if named or any(fragment in frame.path for fragment in fragments):
                return area, frame
    return OTHER, stack[-1]


def kind_of(stack: list[Frame]) -> str:
    """Whether a sample waits for PostgreSQL, runs the ORM or driver, or anything else."""
    orm = False
    for frame in stack:
        if "psycopg" in frame.path and frame.function.startswith("wait"):
            return WAIT
        orm = orm or "psycopg" in frame.path or "django/db/" in frame.path
    return ORM if orm else PYTHON


@dataclass
class Attribution:
    """Seconds of samples per request by area and kind; CPU by call site and by function."""

    seconds: dict[tuple[str, str, str], float] = field(default_factory=lambda: defaultdict(float))
    sites: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    leaves: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))

    @classmethod
    def of(cls, profile: Profile) -> Attribution:
        attribution, frames = cls(), {}
        for request, records in profile.records.items():
            for identifiers, seconds in records:
                stack = [frames.get(i) or frames.setdefault(i, Frame.parse(i)) for i in identifiers]
                (area, site), kind = area_of(stack), kind_of(stack)
                attribution.seconds[request, area, kind] += seconds
                if kind != WAIT:
                    attribution.sites[area, site.location()] += seconds
                    attribution.leaves[area, stack[-1].location(running_line=False)] += seconds
        return attribution

    def total(self, request: str | None = None, area: str | None = None, kinds=None) -> float:
        return sum(
            seconds
            for (r, a, k), seconds in self.seconds.items()
            if request in (None, r) and area in (None, a) and (kinds is None or k in kinds)
        )


# --- report ---------------------------------------------------------------------------------


def print_timing(timing: Timing, sql: SqlLog, cycles: int) -> None:
    print(f"\nDjango per request, nothing attached ({cycles} cycles; ms per request)")
    rows = []
    for kind in (*REQUESTS, "cycle"):
        kinds = REQUESTS if kind == "cycle" else (kind,)
        statements = sum(sum(sql.calls[k].values()) for k in kinds) / cycles
        sql_ms = sum(sum(sql.ms[k].values()) for k in kinds) / cycles
        rows.append(
            [
                kind,
                f"{sum(timing.cpu_ms[k] for k in kinds) / cycles:.2f}",
                f"{sum(timing.wall_ms[k] for k in kinds) / cycles:.2f}",
                f"{statements:.1f}",
                f"{sql_ms:.2f}",
            ]
        )
    print(table(["request", "CPU ms", "wall ms", "SQL statements", "SQL wall ms"], rows))
    print(
        "  CPU = this process (Django, DRF, psycopg's client side); wall adds PostgreSQL's work."
        "\n  SQL wall ms: measured in pass 2, from sending each statement to its last row."
    )


def print_sql(sql: SqlLog, cycles: int) -> None:
    for kind in REQUESTS:
        calls, ms, wall = sql.calls[kind], sql.ms[kind], sql.wall_ms[kind] / cycles
        print(
            f"\nSQL of {kind}: {sum(calls.values()) / cycles:.1f} statements, "
            f"{sum(ms.values()) / cycles:.2f} ms of the request's {wall:.2f} ms wall"
        )
        rows = [
            [
                shape if len(shape) <= 120 else shape[:119] + "…",
                f"{calls[shape] / cycles:.2f}",
                f"{ms[shape] / cycles:.3f}",
                f"{100 * ms[shape] / cycles / wall:.0f}%",
            ]
            for shape in calls
        ]
        print(table(["statement", "per request", "ms", "of wall"], rows))


def print_areas(attribution: Attribution, timing: Timing, cycles: int) -> None:
    cpu_kinds = (ORM, PYTHON)
    # The profiler inflates the CPU (not the waiting): scale each request's to pass 1's.
    scale = {
        kind: timing.cpu_ms[kind] / max(1e-9, 1000 * attribution.total(kind, kinds=cpu_kinds))
        for kind in REQUESTS
    }
    factors = ", ".join(f"{kind} x{1 / scale[kind]:.2f}" for kind in REQUESTS)
    print(
        "\nWhere the CPU goes, by area (pyinstrument samples; ms per request, scaled to the CPU "
        f"measured without it;\n  the profiler's inflation: {factors})"
    )

    def cpu_ms(request: str, area: str | None, kinds=cpu_kinds) -> float:
        return 1000 * attribution.total(request, area, kinds) * scale[request] / cycles

    cycle_cpu = sum(cpu_ms(kind, None) for kind in REQUESTS)
    rows = []
    for area in AREAS:
        per_request = [cpu_ms(kind, area) for kind in REQUESTS]
        if sum(per_request) < 0.005:
            continue
        orm = sum(cpu_ms(kind, area, (ORM,)) for kind in REQUESTS)
        rows.append(
            [
                area,
                *(f"{ms:.2f}" for ms in per_request),
                f"{sum(per_request):.2f}",
                f"{100 * sum(per_request) / cycle_cpu:.0f}%",
                f"{orm:.2f}",
            ]
        )
    rows.append(
        [
            "total CPU",
            *(f"{cpu_ms(kind, None):.2f}" for kind in REQUESTS),
            f"{cycle_cpu:.2f}",
            "100%",
            f"{sum(cpu_ms(kind, None, (ORM,)) for kind in REQUESTS):.2f}",
        ]
    )
    waits = [1000 * attribution.total(kind, kinds=(WAIT,)) / cycles for kind in REQUESTS]
    rows.append([WAIT + " (wall)", *(f"{ms:.2f}" for ms in waits), f"{sum(waits):.2f}", "", ""])
    headers = ["area", *REQUESTS, "cycle", "share", "of which ORM + driver"]
    print(table(headers, rows))
    print(
        "  A sample's area is the innermost frame on its stack that belongs to one: SQL run to"
        " look up the token\n  is authentication, a model method a serializer calls is"
        " serializers. ORM + driver: django.db and psycopg."
    )


def print_top_functions(attribution: Attribution, timing: Timing, cycles: int, top: int):
    cpu = sum(timing.cpu_ms.values()) / cycles
    scale = cpu / max(1e-9, 1000 * attribution.total(kinds=(ORM, PYTHON)) / cycles)

    def ms(seconds: float) -> str:
        return f"{1000 * seconds * scale / cycles:.2f}"

    print(
        f"\nTop call sites of each area (CPU ms per cycle, scaled, with all they call; top {top})"
    )
    rows = []
    least = SMALL_SHARE * attribution.total(kinds=(ORM, PYTHON))
    for area in AREAS:
        sites = sorted(((s, site) for (a, site), s in attribution.sites.items() if a == area))
        rows += [[area, ms(s), site] for s, site in sites[::-1][:top] if s >= least]
    print(table(["area", "ms", "call site: the area's innermost frame, at its line"], rows))
    print(f"  (call sites under {SMALL_SHARE:.1%} of the cycle's CPU left out)")
    print(f"\nTop functions by self time (CPU ms per cycle, scaled; top {3 * top})")
    leaves = sorted(((s, area, f) for (area, f), s in attribution.leaves.items()), reverse=True)
    rows = [[function, ms(seconds), area] for seconds, area, function in leaves[: 3 * top]]
    print(table(["function (self time)", "ms", "area"], rows))


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = django_env(PROFILE_DB)
    print(
        f"Profiling the annotation cycle: {args.comparisons:,} comparisons, overlap "
        f"{args.overlap}, {args.annotators} annotators taking turns, {args.cycles} cycles a pass"
    )
    try:
        started = time.monotonic()
        fixture = build_fixture(
            PROFILE_DB, env, args.comparisons, args.overlap, args.annotators, args.import_chunk
        )
        print(f"  setup took {time.monotonic() - started:.1f} s")
        from config.wsgi import application

        cycles = Cycles(application, fixture.tokens)
        cycles.run(WARMUP_CYCLES, unmeasured)
        timing, sql, profile = Timing(), SqlLog(), Profile(args.interval_ms / 1000)
        cycles.run(args.cycles, timing.measure)
        cycles.run(args.cycles, sql.measure)
        cycles.run(args.cycles, profile.measure)
        attribution = Attribution.of(profile)
        print_timing(timing, sql, args.cycles)
        print_sql(sql, args.cycles)
        print_areas(attribution, timing, args.cycles)
        print_top_functions(attribution, timing, args.cycles, args.top)
    finally:
        from django.apps import apps

        if apps.ready:
            from django.db import connections

            connections.close_all()
        if not args.keep_db:
            drop_database(PROFILE_DB)
    return 0


if __name__ == "__main__":
    sys.exit(main())
