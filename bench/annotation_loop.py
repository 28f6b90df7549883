"""Throughput and latency of the annotation loop, against this machine's PostgreSQL baseline.

What is measured
----------------
N simulated annotators (threads, one keep-alive HTTP connection each) work through one active
helpfulness batch over the real stack: gunicorn + Django + DRF + PostgreSQL, ``DEBUG=0``,
persistent DB connections (``DB_CONN_MAX_AGE=60``). Each annotator loops

    POST /api/v1/tasks/next/    lease a comparison           (the "next-task" request)
    POST /api/v1/annotations/   submit a random judgement    (the "submit" request)

until the time is up or the server answers 204 (no work left), by default with no reading time
in between (``--think-ms`` adds some). One *cycle* is one lease plus one submit answered 201.
The first ``--warmup`` seconds are left out of rates and latencies (their work still counts in
the checks). The database is set up fresh for every run and ANALYZEd before the load starts.

Printed: cycles/s, requests/s, p50/p95/p99 latency of each request, errors; the CPU each party
used (gunicorn workers, PostgreSQL, the load generator, anything else) per second and per
cycle; then checks on the database afterwards: annotations stored == submits answered 201, no
comparison above its overlap, the denormalised counters right, and no 204 "no work left" sent
while a comparison was still open to that annotator.

Gunicorn runs gthread workers by default, one process per core with 8 threads each: the
request path is CPU-bound Python, so more processes than cores only add contention, while the
threads overlap each request's database round trips; gthread also keeps connections alive
(sync workers close them after every response).

The baseline and the ratio
--------------------------
In the same run ``pgbench -N`` (the "simple-update" script: BEGIN; UPDATE; SELECT; INSERT;
END, i.e. three statements in one small write transaction) runs on a scratch database at
scale 10 with as many clients as annotators and, like the benchmark, its client on the same
machine. Its TPS is about the most small write transactions this PostgreSQL commits per second
with no application in front of it.

"cycles/s as a fraction of pgbench TPS" compares a whole annotation cycle with one pgbench
transaction. A cycle is far more work: two HTTP requests through Django/DRF and two write
transactions of about twenty SQL statements in all (counted and printed), with row locks. So
the ratio is well below 1 by construction; use it to compare runs and machines, and the CPU
table to see where a cycle's time goes: "ms per cycle" of gunicorn is Python, of PostgreSQL
the SQL (pgbench spends well under 1 ms of server CPU per transaction).

Usage: python bench/annotation_loop.py [--annotators 32] [--comparisons N] [--overlap 3]
           [--duration S] [--workers W] [--threads T] [--think-ms MS] [--keep-db]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
BENCH_DB, PGBENCH_DB = "pairwise_bench", "pairwise_bench_pgbench"
STRENGTHS = ("significantly_better", "better", "slightly_better", "negligibly_better")
NEXT, SUBMIT = "next-task", "submit"
OTHER_CPU_WARNING = 0.2  # cores used by processes outside the benchmark before we warn


# --- arguments ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip('"'))
    parser.add_argument("--annotators", type=int, default=32, help="concurrent annotators")
    parser.add_argument(
        "--comparisons",
        type=int,
        default=5000,
        help="comparisons in the batch; next-task's cost grows with it",
    )
    parser.add_argument("--overlap", type=int, default=3, help="annotations per comparison")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--workers", type=int, default=cores, help="gunicorn worker processes")
    parser.add_argument(
        "--threads", type=int, default=8, help="threads per worker (>1 uses gthread workers)"
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="mean time an annotator reads a task before submitting (exponential; 0 = none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the annotators")
    parser.add_argument("--keep-db", action="store_true", help="keep the databases afterwards")
    parser.add_argument("--skip-pgbench", action="store_true", help="skip the baseline")
    return parser.parse_args(argv)


# --- databases ------------------------------------------------------------------------------


def database_url(name: str) -> str:
    return f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def admin_sql(*statements: str) -> None:
    with psycopg.connect(database_url("postgres"), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def recreate_database(name: str) -> None:
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def django_env(name: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": database_url(name),
        "DEBUG": "0",
        "SECRET_KEY": "bench-" + uuid.uuid4().hex,
        # Production settings, served over plain HTTP, with the API throttles off: the load is
        # the point (32 annotators at full speed would pass any per-user rate).
        "PAIRWISE_HTTPS": "0",
        "PAIRWISE_THROTTLE_USER": "off",
        "PAIRWISE_THROTTLE_ANON": "off",
        "PAIRWISE_THROTTLE_TOKEN": "off",
        "ALLOWED_HOSTS": "127.0.0.1",
        "DB_CONN_MAX_AGE": "60",
        "LOG_LEVEL": "WARNING",
    }


# --- setup (in-process Django) --------------------------------------------------------------


@dataclass
class Fixture:
    tokens: list[str]
    annotator_ids: list[int]
    sql_per_request: dict[str, int]


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )


def start_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    # The in-process test client talks to "testserver"; gunicorn only ever sees 127.0.0.1.
    os.environ["ALLOWED_HOSTS"] = "127.0.0.1,testserver"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def canonical_records(count: int) -> bytes:
    lines = []
    for i in range(count):
        record = {
            "comparison_id": f"bench-{i}",
            "conversation": [{"role": "user", "content": f"Bench prompt {i}: explain topic {i}."}],
            "responses": [
                {"text": f"First answer to prompt {i}. " * 8, "model": "bench-a"},
                {"text": f"Second answer to prompt {i}. " * 8, "model": "bench-b"},
            ],
        }
        lines.append(json.dumps(record))
    return ("\n".join(lines) + "\n").encode()


def create_annotators(count: int, prefix: str) -> list[tuple[int, str]]:
    from django.contrib.auth.models import Group, User
    from rest_framework.authtoken.models import Token

    from annotation_app.roles import Role

    group = Group.objects.get(name=Role.ANNOTATOR.value)
    users = User.objects.bulk_create(
        User(username=f"{prefix}{i:03d}", password="!") for i in range(count)
    )
    User.groups.through.objects.bulk_create(
        User.groups.through(user_id=user.pk, group_id=group.pk) for user in users
    )
    tokens = Token.objects.bulk_create(Token(user=u, key=Token.generate_key()) for u in users)
    return [(token.user.pk, token.key) for token in tokens]


def create_batch(comparisons: int, overlap: int) -> None:
    from annotation_app.models import Batch
    from annotation_app.services.batches import activate_batch
    from annotation_app.services.imports import import_comparisons

    batch = Batch.objects.create(
        name="bench-helpfulness",
        kind=Batch.Kind.HELPFULNESS,
        overlap=overlap,
        guidelines="Pick the more helpful response.",
    )
    stream = io.BytesIO(canonical_records(comparisons))
    import_comparisons(batch, stream, "bench.jsonl", "canonical", rng=random.Random(0))
    activate_batch(batch)


def count_sql_per_request(token: str) -> dict[str, int]:
    """One cycle through the in-process test client, counting the SQL each request runs."""
    from django.db import connection
    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    counts: dict[str, int] = {}

    def counter(name: str):
        def wrapper(execute, sql, params, many, context):
            counts[name] = counts.get(name, 0) + 1
            return execute(sql, params, many, context)

        return wrapper

    with connection.execute_wrapper(counter(NEXT)):
        task = client.post("/api/v1/tasks/next/", {}, content_type="application/json")
    assert task.status_code == 200, task.content
    body = submit_body(task.json()["assignment"], random.Random(0))
    with connection.execute_wrapper(counter(SUBMIT)):
        done = client.post("/api/v1/annotations/", body, content_type="application/json")
    assert done.status_code == 201, done.content
    return counts


def build_fixture(args: argparse.Namespace, env: dict[str, str]) -> Fixture:
    migrate(env)
    start_django(env)
    from django.db import connections

    annotators = create_annotators(args.annotators, "annotator")
    (_, probe_token), *_ = create_annotators(1, "probe")
    create_batch(args.comparisons, args.overlap)
    sql_counts = count_sql_per_request(probe_token)
    with connections["default"].cursor() as cursor:
        # Fresh tables have no statistics yet; autovacuum would ANALYZE them within about a
        # minute. Measure the steady state, not the planner's first guesses.
        cursor.execute("ANALYZE")
    connections.close_all()
    return Fixture(
        tokens=[token for _, token in annotators],
        annotator_ids=[pk for pk, _ in annotators],
        sql_per_request=sql_counts,
    )


# --- gunicorn -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_command(port: int, workers: int, threads: int) -> list[str]:
    worker_class = "gthread" if threads > 1 else "sync"
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi:application",
        f"--bind=127.0.0.1:{port}",
        f"--workers={workers}",
        f"--threads={threads}",
        f"--worker-class={worker_class}",
        "--keep-alive=30",
        "--timeout=60",
        "--log-level=warning",
    ]


def wait_until_up(proc: subprocess.Popen, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with status {proc.returncode}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/api/v1/tasks/next/")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
        finally:
            conn.close()
    raise RuntimeError(f"gunicorn did not answer within {timeout:.0f} s")


@dataclass(frozen=True)
class Server:
    port: int
    pid: int  # the gunicorn master; its children are the workers


@contextlib.contextmanager
def gunicorn(env: dict[str, str], workers: int, threads: int, log: Path) -> Iterator[Server]:
    port = free_port()
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            gunicorn_command(port, workers, threads),
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_up(proc, port)
            yield Server(port, proc.pid)
        except BaseException:
            print(f"--- gunicorn log ({log}) ---\n{log.read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- simulated annotators -------------------------------------------------------------------


@dataclass
class Sample:
    kind: str
    started: float  # time.monotonic()
    latency_ms: float
    status: int  # 0 when the request failed without a response


@dataclass
class AnnotatorResult:
    samples: list[Sample] = field(default_factory=list)
    cycle_ends: list[float] = field(default_factory=list)
    created: int = 0  # submits answered 201
    replayed: int = 0  # submits answered 200 (an idempotent replay; never expected here)
    stopped_on_204_at: float | None = None
    error_examples: list[str] = field(default_factory=list)


def submit_body(assignment: int, rng: random.Random) -> dict:
    return {
        "assignment": assignment,
        "preferred": rng.choice("AB"),
        "strength": rng.choice(STRENGTHS),
        "idempotency_key": str(uuid.uuid4()),
    }


class Annotator(threading.Thread):
    def __init__(
        self, port: int, token: str, seed: int, start: threading.Barrier, end: float, think_s: float
    ):
        super().__init__(daemon=True)
        self.port, self.rng, self.start_barrier, self.end = port, random.Random(seed), start, end
        self.think_s = think_s
        self.headers = {
            "Authorization": f"Token {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.result = AnnotatorResult()
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, kind: str, path: str, body: dict) -> tuple[int, bytes]:
        started = time.monotonic()
        try:
            self.conn.request("POST", path, json.dumps(body), self.headers)
            response = self.conn.getresponse()
            status, payload = response.status, response.read()
        except (OSError, http.client.HTTPException) as error:
            self.conn.close()  # reconnects on the next request
            status, payload = 0, repr(error).encode()
        latency_ms = (time.monotonic() - started) * 1000
        self.result.samples.append(Sample(kind, started, latency_ms, status))
        if status not in (200, 201, 204) and len(self.result.error_examples) < 3:
            self.result.error_examples.append(f"{kind} {status}: {payload[:300]!r}")
        return status, payload

    def cycle(self) -> bool:
        """One lease and submit; False when the server has no work left for us."""
        status, payload = self.post(NEXT, "/api/v1/tasks/next/", {})
        if status == 204:
            self.result.stopped_on_204_at = time.monotonic()
            return False
        if status != 200:
            return True
        assignment = json.loads(payload)["assignment"]
        if self.think_s:
            time.sleep(self.rng.expovariate(1 / self.think_s))
        status, _ = self.post(SUBMIT, "/api/v1/annotations/", submit_body(assignment, self.rng))
        if status == 201:
            self.result.created += 1
            self.result.cycle_ends.append(time.monotonic())
        elif status == 200:
            self.result.replayed += 1
        return True

    def run(self) -> None:
        self.start_barrier.wait()
        try:
            while time.monotonic() < self.end and self.cycle():
                pass
        finally:
            self.conn.close()


@dataclass
class LoadResult:
    annotators: list[AnnotatorResult]
    window: tuple[float, float]  # the measured interval, time.monotonic()
    cpu_s: dict[str, float]  # CPU seconds in the window, see cpu_used()


def process_cpu(master_pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by each process of gunicorn and of PostgreSQL, keyed by pid.

    PostgreSQL backends serving other databases count as "other", not as PostgreSQL.
    """
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[str, float]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended meanwhile
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        pid, ppid = int(proc.name), int(fields[1])
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        if master_pid in (pid, ppid):
            found[pid] = ("gunicorn", seconds)
        elif comm.startswith("postgres"):
            other_client = "(" in cmdline and f" {BENCH_DB} " not in cmdline
            found[pid] = ("other", seconds) if other_client else ("postgres", seconds)
    return found


def machine_cpu() -> float:
    """CPU seconds all cores spent busy (not idle, not waiting for I/O) since boot."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


CpuSnapshot = tuple[dict[int, tuple[str, float]], float, float]  # processes, client, machine


def cpu_snapshot(master_pid: int) -> CpuSnapshot:
    return process_cpu(master_pid), time.process_time(), machine_cpu()


def cpu_used(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
    """CPU seconds between two snapshots by gunicorn, postgres, client, other and machine."""
    (procs_start, client_start, machine_start), (procs_end, client_end, machine_end) = start, end
    used = {"gunicorn": 0.0, "postgres": 0.0}
    for pid, (group, seconds) in procs_end.items():
        if group in used:  # processes that ended in between are lost; they land in "other"
            used[group] += seconds - procs_start.get(pid, (group, 0.0))[1]
    used["client"] = client_end - client_start
    used["machine"] = machine_end - machine_start
    used["other"] = used["machine"] - used["gunicorn"] - used["postgres"] - used["client"]
    return used


def run_load(server: Server, tokens: list[str], args: argparse.Namespace) -> LoadResult:
    barrier = threading.Barrier(len(tokens) + 1)
    begin = time.monotonic() + 0.5
    window = (begin + args.warmup, begin + args.warmup + args.duration)
    threads = [
        Annotator(
            server.port, token, args.seed * 100_003 + i, barrier, window[1], args.think_ms / 1000
        )
        for i, token in enumerate(tokens)
    ]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, begin - time.monotonic()))
    barrier.wait()
    time.sleep(max(0.0, window[0] - time.monotonic()))
    cpu_start = cpu_snapshot(server.pid)
    time.sleep(max(0.0, window[1] - time.monotonic()))
    cpu_end = cpu_snapshot(server.pid)
    for thread in threads:
        thread.join()
    return LoadResult([t.result for t in threads], window, cpu_used(cpu_start, cpu_end))


# --- figures --------------------------------------------------------------------------------


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def measured(result: LoadResult) -> list[Sample]:
    start, end = result.window
    return [s for a in result.annotators for s in a.samples if start <= s.started < end]


def is_error(sample: Sample) -> bool:
    return sample.status not in (200, 201, 204)


def latency_rows(samples: list[Sample]) -> list[list[str]]:
    rows = []
    for kind in (NEXT, SUBMIT):
        values = sorted(s.latency_ms for s in samples if s.kind == kind and not is_error(s))
        errors = sum(1 for s in samples if s.kind == kind and is_error(s))
        rows.append(
            [kind, str(len(values)), str(errors)]
            + [f"{percentile(values, q):.1f}" for q in (0.50, 0.95, 0.99)]
            + [f"{values[-1]:.1f}" if values else "-"]
        )
    return rows


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        parts = [first.ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        return "  " + "  ".join(parts)

    rule = "  " + "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def cpu_rows(result: LoadResult, cycles: int) -> list[list[str]]:
    seconds = result.window[1] - result.window[0]
    cpu = result.cpu_s
    names = {
        "gunicorn": "gunicorn workers (Django)",
        "postgres": "PostgreSQL (all processes)",
        "client": "load generator (this process)",
        "other": "other (kernel, other processes)",
        "machine": f"machine total (of {os.cpu_count()} cores)",
    }
    return [
        [label, f"{cpu[key] / seconds:.2f}", f"{1000 * cpu[key] / max(1, cycles):.1f}"]
        for key, label in names.items()
    ]


def summarize_load(result: LoadResult, args: argparse.Namespace) -> float:
    """Print the load figures; returns cycles per second."""
    start, end = result.window
    seconds = end - start
    samples = measured(result)
    cycles = sum(1 for a in result.annotators for t in a.cycle_ends if start <= t < end)
    errors_all = sum(1 for a in result.annotators for s in a.samples if is_error(s))
    stopped = [a.stopped_on_204_at for a in result.annotators if a.stopped_on_204_at]
    print(f"\nLoad ({seconds:.0f} s measured after {args.warmup:.0f} s warm-up)")
    rows = [
        ["cycles/s (lease + submit answered 201)", f"{cycles / seconds:.1f}"],
        ["HTTP requests/s", f"{len(samples) / seconds:.1f}"],
        ["errors (non-2xx) in window / whole run", f"{sum(map(is_error, samples))} / {errors_all}"],
        ["annotators stopped by 204 (no work)", f"{len(stopped)} of {len(result.annotators)}"],
    ]
    print(table(["figure", "value"], rows))
    print("\nLatency in the measured window (ms; failed requests left out of percentiles)")
    headers = ["request", "count", "errors", "p50", "p95", "p99", "max"]
    print(table(headers, latency_rows(samples)))
    print("\nCPU in the measured window")
    print(table(["who", "cores busy", "ms per cycle"], cpu_rows(result, cycles)))
    other = result.cpu_s["other"]
    if other / seconds > OTHER_CPU_WARNING:
        print(
            f"\nWarning: other work used {other / seconds:.2f} cores during the window; the"
            " figures are understated. Rerun on a quiet machine."
        )
    examples = [e for a in result.annotators for e in a.error_examples][:5]
    if examples:
        print("\nFirst errors:\n  " + "\n  ".join(examples))
    if stopped:
        first = min(stopped) - start
        print(
            f"\nNote: the first 204 came {first:+.1f} s after the window opened; inside the "
            "window the rate is understated (the batch ran out of work, or the server wrongly"
            " said so: see the correctness check)."
        )
    return cycles / seconds


# --- correctness ----------------------------------------------------------------------------


def spurious_204s(conn: psycopg.Connection, fixture: Fixture, result: LoadResult) -> int:
    """Annotators told "no work left" (204) although a comparison was still open to them.

    Every lease in this benchmark is submitted, so a comparison still open now had a free
    slot when the 204 was sent; if the annotator never had it, the 204 was wrong.
    """
    stopped = [
        pk
        for pk, annotator in zip(fixture.annotator_ids, result.annotators, strict=True)
        if annotator.stopped_on_204_at is not None
    ]
    if not stopped:
        return 0
    return conn.execute(
        "SELECT count(*) FROM unnest(%s::bigint[]) AS u(id) WHERE EXISTS ("
        " SELECT 1 FROM annotation_app_comparison c WHERE c.status = 'ready' AND NOT EXISTS ("
        "  SELECT 1 FROM annotation_app_assignment a"
        "  WHERE a.comparison_id = c.id AND a.annotator_id = u.id))",
        (stopped,),
    ).fetchone()[0]


def verify(fixture: Fixture, result: LoadResult, overlap: int) -> bool:
    created = sum(a.created for a in result.annotators)
    with psycopg.connect(database_url(BENCH_DB)) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM annotation_app_annotation WHERE annotator_id = ANY(%s)",
            (fixture.annotator_ids,),
        ).fetchone()[0]
        worst = conn.execute(
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM annotation_app_annotation"
            " GROUP BY comparison_id) AS per_comparison"
        ).fetchone()[0]
        drift = conn.execute(
            "SELECT count(*) FROM annotation_app_comparison c LEFT JOIN (SELECT comparison_id,"
            " count(*) AS n FROM annotation_app_annotation GROUP BY comparison_id) a"
            " ON a.comparison_id = c.id WHERE c.annotation_count <> coalesce(a.n, 0)"
        ).fetchone()[0]
        open_left = conn.execute(
            "SELECT count(*) FROM annotation_app_comparison WHERE status = 'ready'"
        ).fetchone()[0]
        missed = spurious_204s(conn, fixture, result)
    checks = [
        ["annotations stored == submits answered 201", f"{stored} == {created}", stored == created],
        [
            "most annotations on one comparison <= overlap",
            f"{worst} <= {overlap}",
            worst <= overlap,
        ],
        ["comparison.annotation_count matches rows", f"{drift} differ", drift == 0],
        ["204 only when no work was left for them", f"{missed} wrong 204s", missed == 0],
    ]
    print("\nCorrectness (database after the run)")
    rows = [[name, value, "OK" if ok else "FAIL"] for name, value, ok in checks]
    print(table(["check", "value", "result"], rows))
    print(
        f"  ({open_left} comparisons still open; 200 replays: "
        f"{sum(a.replayed for a in result.annotators)})"
    )
    return all(ok for *_, ok in checks)


# --- pgbench baseline -----------------------------------------------------------------------


def pgbench_tps(clients: int, seconds: float) -> float:
    recreate_database(PGBENCH_DB)
    base = ["pgbench", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER]
    subprocess.run(
        [*base, "-i", "-s", "10", "-q", PGBENCH_DB], check=True, capture_output=True, text=True
    )
    jobs = min(clients, 2)
    run = subprocess.run(
        [*base, "-N", "-c", str(clients), "-j", str(jobs), "-T", str(round(seconds)), PGBENCH_DB],
        check=True,
        capture_output=True,
        text=True,
    )
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", run.stdout)
    match = match or re.search(r"tps = ([\d.]+)", run.stdout)
    if match is None:
        raise RuntimeError(f"no TPS in pgbench output:\n{run.stdout}\n{run.stderr}")
    return float(match.group(1))


def print_baseline(tps: float, cycles_per_s: float, fixture: Fixture, args: argparse.Namespace):
    sql = fixture.sql_per_request
    clients = args.annotators
    print(
        f"\nPostgreSQL baseline: pgbench -N (simple-update), scale 10, -c {clients} "
        f"-j {min(clients, 2)} -T {round(args.duration)}"
    )
    print(
        table(
            ["figure", "value"],
            [
                ["pgbench TPS", f"{tps:.0f}"],
                ["annotation cycles/s", f"{cycles_per_s:.1f}"],
                ["cycles/s as a fraction of pgbench TPS", f"{cycles_per_s / tps:.3f}"],
            ],
        )
    )
    print(
        f"  One cycle = 2 HTTP requests = 2 write transactions running {sql[NEXT]} + "
        f"{sql[SUBMIT]} = {sum(sql.values())} SQL statements\n"
        "  (counted on one uncontended cycle, plus BEGIN/COMMIT; under load next-task runs more"
        " when it retries\n  past full comparisons); one pgbench -N transaction = 3 statements"
        " plus BEGIN/END."
    )


# --- main -----------------------------------------------------------------------------------


def print_header(args: argparse.Namespace) -> None:
    kind = f"gthread x {args.threads} threads" if args.threads > 1 else "sync"
    print("Pairwise annotation loop benchmark")
    print(
        f"  {args.annotators} annotators, {args.comparisons} comparisons, overlap "
        f"{args.overlap}; gunicorn {args.workers} workers ({kind}); "
        f"{os.cpu_count()} CPU cores shared by client, gunicorn and PostgreSQL"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print_header(args)
    env = django_env(BENCH_DB)
    ok = True
    try:
        started = time.monotonic()
        recreate_database(BENCH_DB)
        fixture = build_fixture(args, env)
        print(
            f"  setup (create db, migrate, users, import) took {time.monotonic() - started:.1f} s"
        )
        with (
            tempfile.TemporaryDirectory() as tmp,
            gunicorn(env, args.workers, args.threads, Path(tmp) / "gunicorn.log") as server,
        ):
            result = run_load(server, fixture.tokens, args)
        cycles_per_s = summarize_load(result, args)
        ok = verify(fixture, result, args.overlap)
        if not args.skip_pgbench:
            tps = pgbench_tps(args.annotators, args.duration)
            print_baseline(tps, cycles_per_s, fixture, args)
    finally:
        if not args.keep_db:
            drop_database(BENCH_DB)
            drop_database(PGBENCH_DB)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
