"""Throughput and latency of the annotation loop by batch size, against this machine's PostgreSQL.

What is measured
----------------
N simulated annotators (threads, one keep-alive HTTP connection each) work through one active
helpfulness batch over the real stack: gunicorn + Django + DRF + PostgreSQL with production
settings (``DEBUG=0``, persistent DB connections ``DB_CONN_MAX_AGE=60``; API throttles off).
Each annotator loops

    POST /api/v1/tasks/next/    lease a comparison           (the "next-task" request)
    ... reads it for --think-s seconds (none by default)
    POST /api/v1/annotations/   submit a random judgement    (the "submit" request)

until the time is up or the server answers 204 (no work left). One *cycle* is one lease plus
one submit answered 201. The first ``--warmup`` seconds are left out of rates and latencies
(their work still counts in the checks).

Two modes:

- Throughput (the default: 32 annotators, no think time). The server is saturated: cycles/s
  and the CPU that Django and PostgreSQL spend per cycle say what a cycle costs.
- Realistic (``--think-s 2-5 --annotators 200``). Each annotator reads every comparison for a
  time drawn uniformly from the range, so the load is offered (about annotators / mean think
  time cycles/s: 57 for 200 annotators at 2-5 s) and the latency percentiles are what
annotators feel. Annotators start spread
  over the first think range; the warm-up defaults to the longest think time, the measured
  time to 60 s.

Batch sizes
-----------
``--comparisons 5000,50000,200000`` runs the same load once per size, each on a fresh database
(VACUUM ANALYZEd before the load) and a fresh gunicorn, and ends with one row per size, each size's
cycles/s relative to the first size's. The batch goes through the import service (in files of
``--import-chunk`` records, as an admin would split a large batch; the import caps a file at
``PAIRWISE_IMPORT_MAX_RECORDS``) and is activated, so it holds exactly what production would;
how long that takes is printed.

Printed per size: cycles/s, requests/s, p50/p95/p99/max latency of each request, errors; the
CPU each party used (gunicorn workers, PostgreSQL, the load generator, anything else) per
second and per cycle, read from /proc (PostgreSQL: its processes serving the benchmark's
database and its background processes; a process that ends in the window, as a backend does
when Django replaces a connection older than ``DB_CONN_MAX_AGE``, counts with its last
reading); the SQL statements each request runs (counted on one uncontended cycle);
then checks on the database afterwards: annotations stored == submits answered 201, no
comparison above its overlap, the denormalised counters right, and no 204 "no work left" sent
while a comparison was still open to that annotator.

Gunicorn
--------
gthread workers, one process per core with 8 threads each: the request path is CPU-bound Python,
so more processes than cores only add contention, while the threads overlap each request's
database round trips. In gunicorn's gthread worker a kept-alive connection waits in the worker's
poller between requests, not in a thread (threads serve requests in progress only), so 200
mostly idle annotators need no 200 threads: each worker holds up to ``worker_connections``
(gunicorn's default, 1000) connections. Connections stay with the worker that accepted them; the
CPU of each worker is printed to show the balance. The keep-alive timeout is gunicorn's default
(2 s, as the Dockerfile runs it; ``--keep-alive`` changes it): shorter than a think time, so the
server closes a reading annotator's connection and the annotator opens a new one, as a browser
would. Like browsers (and urllib3) the load generator checks that a kept-alive connection is
still open before reusing it, and resends once a request that failed on a reused connection
before any answer (both requests are idempotent: next-task hands back a held lease, a submit
carries its idempotency key). New connections and resends are counted.

The baseline and the ratio
--------------------------
Once per run, after the sizes, ``pgbench -N`` (the "simple-update" script: BEGIN; UPDATE;
SELECT; INSERT; END, i.e. three statements in one small write transaction) runs on a scratch
database at scale 10 with as many clients as annotators (at most 32; this PostgreSQL allows
100 connections) and, like the benchmark, its client on the same machine. Its TPS is about the
most small write transactions this PostgreSQL commits per second with no application in front.

"cycles/s as a fraction of pgbench TPS" compares a whole annotation cycle with one pgbench
transaction. A cycle is far more work: two HTTP requests through Django/DRF and two write
transactions of a dozen or more SQL statements in all (counted and printed), with row locks.
So the ratio is well below 1 by construction; use it to compare runs and machines, and the CPU
table to see where a cycle's time goes: "ms per cycle" of gunicorn is Python, of PostgreSQL
the SQL (pgbench spends well under 1 ms of server CPU per transaction). With think time the
load is offered, not saturating, and the ratio says nothing about capacity.

Usage: python bench/annotation_loop.py [--comparisons 5000[,50000,...]] [--annotators 32]
           [--think-s LOW-HIGH] [--overlap 3] [--duration S] [--warmup S] [--workers W]
           [--threads T] [--keep-alive S] [--import-chunk N] [--keep-db] [--skip-pgbench]
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
import select
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
SERVERS = ("gunicorn", "postgres")  # the process groups of process_cpu()
REQUESTS = (NEXT, SUBMIT)
OTHER_CPU_WARNING = 0.2  # cores used by processes outside the benchmark before we warn
PGBENCH_MAX_CLIENTS = 32  # PostgreSQL's max_connections (100) is shared with the tests
GUNICORN_WORKER_CONNECTIONS = 1000  # gunicorn's default, stated so the docstring holds
GUNICORN_DEFAULT_KEEP_ALIVE_S = 2.0  # gunicorn's default, and so the Dockerfile's


# --- arguments ------------------------------------------------------------------------------


def batch_sizes(text: str) -> list[int]:
    """``5000`` or ``5000,50000,200000``: the batch sizes to run, in order."""
    try:
        sizes = [int(part.strip().replace("_", "")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers of comparisons separated by commas (e.g. 5000,50000), not {text!r}"
        ) from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"every batch size must be at least 1, not {text!r}")
    return sizes


def think_range(text: str) -> tuple[float, float]:
    """``2-5`` (uniform between 2 and 5 seconds) or ``3`` (always 3 seconds)."""
    low, dash, high = text.partition("-")
    try:
        low_s = float(low)
        high_s = float(high) if dash else low_s
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds as LOW-HIGH (e.g. 2-5) or one number, not {text!r}"
        ) from None
    if not 0 <= low_s <= high_s:
        raise argparse.ArgumentTypeError(f"expected 0 <= LOW <= HIGH seconds, not {text!r}")
    return low_s, high_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip('"'))
    parser.add_argument(
        "--comparisons",
        type=batch_sizes,
        default=[5000],
        help="comparisons in the batch, or several sizes separated by commas (one run each)",
    )
    parser.add_argument("--annotators", type=int, default=32, help="concurrent annotators")
    parser.add_argument(
        "--think-s",
        type=think_range,
        default=None,
        help="seconds an annotator reads each task before submitting, LOW-HIGH (uniform)",
    )
    parser.add_argument("--overlap", type=int, default=3, help="annotations per comparison")
    parser.add_argument(
        "--duration", type=float, default=None, help="measured seconds (30; 60 with think time)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="unmeasured seconds first (3; the longest think time with think time)",
    )
    parser.add_argument("--workers", type=int, default=cores, help="gunicorn worker processes")
    parser.add_argument(
        "--threads", type=int, default=8, help="threads per worker (>1 uses gthread workers)"
    )
    parser.add_argument(
        "--keep-alive",
        type=float,
        default=GUNICORN_DEFAULT_KEEP_ALIVE_S,
        help="seconds gunicorn keeps an idle connection open (its default: 2)",
    )
    parser.add_argument(
        "--import-chunk",
        type=int,
        default=20_000,
        help="records per imported file when building the batch",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the annotators")
    parser.add_argument(
        "--pgbench-seconds", type=float, default=20.0, help="how long the baseline runs"
    )
    parser.add_argument("--keep-db", action="store_true", help="keep the databases afterwards")
    parser.add_argument("--skip-pgbench", action="store_true", help="skip the baseline")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 60.0 if args.think_s else 30.0
    if args.warmup is None:
        args.warmup = max(3.0, args.think_s[1]) if args.think_s else 3.0
    if args.import_chunk < 1:
        parser.error("--import-chunk must be at least 1")
    return args


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
    """A fresh database with an active batch, its annotators, and what building it took."""

    tokens: list[str]
    annotator_ids: list[int]
    probe_token: str  # an annotator of its own, for measurements outside the load
    setup_s: dict[str, float]  # seconds per step of the setup


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )


def start_django(env: dict[str, str]) -> None:
    """Set up Django in this process on ``env``'s database (again: only on the same one)."""
    from django.apps import apps

    if apps.ready:
        from django.conf import settings
        from django.contrib.contenttypes.models import ContentType

        name = env["DATABASE_URL"].rsplit("/", 1)[1]
        if settings.DATABASES["default"]["NAME"] != name:
            raise RuntimeError(f"Django is set up on another database than {name}")
        ContentType.objects.clear_cache()  # the database was made anew
        return
    os.environ.update(env)
    # The in-process test client talks to "testserver"; gunicorn only ever sees 127.0.0.1.
    os.environ["ALLOWED_HOSTS"] = "127.0.0.1,testserver"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def canonical_records(first: int, count: int) -> bytes:
    """``count`` canonical comparisons, numbered from ``first``, as a JSONL file's bytes."""
    lines = []
    for i in range(first, first + count):
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
    """``count`` annotators with API tokens, as (user id, token) pairs."""
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


def create_batch(comparisons: int, overlap: int, import_chunk: int) -> None:
    """An active helpfulness batch, imported and activated by the services, as an admin would."""
    from annotation_app.models import Batch
    from annotation_app.services.batches import activate_batch
    from annotation_app.services.imports import import_comparisons

    batch = Batch.objects.create(
        name="bench-helpfulness",
        kind=Batch.Kind.HELPFULNESS,
        overlap=overlap,
        guidelines="Pick the more helpful response.",
    )
    rng = random.Random(0)
    for number, first in enumerate(range(0, comparisons, import_chunk), start=1):
        stream = io.BytesIO(canonical_records(first, min(import_chunk, comparisons - first)))
        import_comparisons(batch, stream, f"bench-{number:03d}.jsonl", "canonical", rng=rng)
    activate_batch(batch)


def build_fixture(
    name: str, env: dict[str, str], comparisons: int, overlap: int, annotators: int, chunk: int
) -> Fixture:
    """Database ``name`` made anew: migrated, annotators, an active batch, ANALYZEd.

    Django stays set up in this process on it (connections closed) for measurements.
    """
    setup_s: dict[str, float] = {}
    started = time.monotonic()
    recreate_database(name)
    migrate(env)
    setup_s["create database + migrate"] = time.monotonic() - started
    start_django(env)
    from django.db import connections

    step = time.monotonic()
    people = create_annotators(annotators, "annotator")
    (_, probe_token), *_ = create_annotators(1, "probe")
    setup_s["annotators"] = time.monotonic() - step
    step = time.monotonic()
    create_batch(comparisons, overlap, chunk)
    setup_s[f"import (files of {chunk:,}) + activate"] = time.monotonic() - step
    step = time.monotonic()
    with connections["default"].cursor() as cursor:
        # Fresh tables have no statistics yet; autovacuum would ANALYZE them within about a
        # minute. Measure the steady state, not the planner's first guesses.
        cursor.execute("VACUUM ANALYZE")
    setup_s["VACUUM ANALYZE"] = time.monotonic() - step
    connections.close_all()
    return Fixture(
        tokens=[token for _, token in people],
        annotator_ids=[pk for pk, _ in people],
        probe_token=probe_token,
        setup_s=setup_s,
    )


def count_sql_per_request(token: str) -> dict[str, int]:
    """One cycle through the in-process test client, counting the SQL each request runs."""
    from django.db import connection, connections
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
    connections.close_all()
    return counts


# --- gunicorn -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_command(port: int, args: argparse.Namespace) -> list[str]:
    worker_class = "gthread" if args.threads > 1 else "sync"
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi:application",
        f"--bind=127.0.0.1:{port}",
        f"--workers={args.workers}",
        f"--threads={args.threads}",
        f"--worker-class={worker_class}",
        f"--worker-connections={GUNICORN_WORKER_CONNECTIONS}",
        f"--keep-alive={args.keep_alive:g}",
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
def gunicorn(env: dict[str, str], args: argparse.Namespace, log: Path) -> Iterator[Server]:
    port = free_port()
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            gunicorn_command(port, args),
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
    replayed: int = 0  # submits answered 200 (an idempotent replay; only after a resend)
    connections: int = 0  # TCP connections opened
    resent: int = 0  # requests sent again after a reused connection failed unanswered
    stopped_on_204_at: float | None = None
    error_examples: list[str] = field(default_factory=list)


def submit_body(assignment: int, rng: random.Random) -> dict:
    return {
        "assignment": assignment,
        "preferred": rng.choice("AB"),
        "strength": rng.choice(STRENGTHS),
        "idempotency_key": str(uuid.uuid4()),
    }


def closed_by_server(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection can no longer be used (the server closed it).

    An open idle connection has nothing to read; a closed one reads as end of file, and bytes
    nobody asked for make it unusable too. (Not ``recv`` with ``MSG_DONTWAIT``: on a socket
    with a timeout Python first waits for it to become readable.)
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


# A reused connection the server had closed fails like this before any answer comes back.
UNANSWERED_ON_REUSE = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


class Annotator(threading.Thread):
    def __init__(
        self,
        port: int,
        token: str,
        seed: int,
        start: threading.Barrier,
        end: float,
        think_s: tuple[float, float] | None,
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

    def send(self, path: str, body: str) -> tuple[int, bytes]:
        """One request, on the kept-alive connection if the server still holds it open."""
        for attempt in (1, 2):
            reused = self.conn.sock is not None
            if reused and closed_by_server(self.conn.sock):
                self.conn.close()
                reused = False
            if self.conn.sock is None:
                self.result.connections += 1
            try:
                self.conn.request("POST", path, body, self.headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException) as error:
                self.conn.close()  # reconnects on the next request
                if attempt == 1 and reused and isinstance(error, UNANSWERED_ON_REUSE):
                    self.result.resent += 1
                    continue
                return 0, repr(error).encode()
        raise AssertionError("unreachable")

    def post(self, kind: str, path: str, body: dict) -> tuple[int, bytes]:
        started = time.monotonic()
        status, payload = self.send(path, json.dumps(body))
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
            time.sleep(self.rng.uniform(*self.think_s))
        status, _ = self.post(SUBMIT, "/api/v1/annotations/", submit_body(assignment, self.rng))
        if status == 201:
            self.result.created += 1
            self.result.cycle_ends.append(time.monotonic())
        elif status == 200:
            self.result.replayed += 1
        return True

    def run(self) -> None:
        self.start_barrier.wait()
        if self.think_s:
            # Annotators arrive spread out, as if each were somewhere in a task already.
            time.sleep(self.rng.uniform(0, self.think_s[1]))
        try:
            while time.monotonic() < self.end and self.cycle():
                pass
        finally:
            self.conn.close()


@dataclass
class LoadResult:
    annotators: list[AnnotatorResult]
    window: tuple[float, float]  # the measured interval, time.monotonic()
    cpu_s: dict[str, float]  # CPU seconds in the window, see CpuMeter
    gunicorn_cpu_s: list[float]  # CPU seconds in the window of each gunicorn process


def postgres_group(title: str, groups: dict[int, str]) -> str:
    """ "postgres" for a PostgreSQL process working for the benchmark, else "other".

    Backends (their title names a client address) and autovacuum workers name their
    database; a parallel worker works for its leader's; the rest (checkpointer, WAL writer,
    ...) serve every database and count as PostgreSQL's.
    """
    leader = re.search(r"parallel worker for PID (\d+)", title)
    if leader:
        return groups.get(int(leader.group(1)), "other")
    if "(" in title or "autovacuum worker" in title:
        return "postgres" if re.search(rf"(?<!\w){BENCH_DB}(?!\w)", title) else "other"
    return "postgres"


def process_cpu(master_pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by each process of gunicorn and of PostgreSQL, keyed by pid.

    PostgreSQL processes working for other databases count as "other" (see postgres_group).
    """
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[str, float]] = {}
    titles: dict[int, str] = {}
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
            found[pid], titles[pid] = ("postgres", seconds), cmdline
    groups: dict[int, str] = {}
    for pid in sorted(titles, key=lambda pid: "parallel worker" in titles[pid]):  # leaders first
        groups[pid] = postgres_group(titles[pid], groups)
        found[pid] = (groups[pid], found[pid][1])
    return found


def machine_cpu() -> float:
    """CPU seconds all cores spent busy (not idle, not waiting for I/O) since boot."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used over a window by gunicorn, PostgreSQL, this client, and the machine.

    /proc is read every ``poll_s`` in between, and a process that ended in the window counts
    with its last reading: PostgreSQL backends end within it (Django closes a connection
    older than ``DB_CONN_MAX_AGE`` and opens another), and would otherwise be lost.
    """

    def __init__(self, master_pid: int, poll_s: float = 0.5):
        self.master_pid, self.poll_s = master_pid, poll_s
        self.first = self.last = process_cpu(master_pid)
        self.client, self.machine = time.process_time(), machine_cpu()
        self.done = threading.Event()
        self.poller = threading.Thread(target=self.poll, daemon=True)
        self.poller.start()

    def poll(self) -> None:
        while not self.done.wait(self.poll_s):
            self.last = {**self.last, **process_cpu(self.master_pid)}

    def stop(self) -> tuple[dict[str, float], list[float]]:
        """CPU seconds by group ("gunicorn", "postgres", "client", "other", "machine"), and
        of each gunicorn process, largest first."""
        self.done.set()
        self.poller.join()
        last = {**self.last, **process_cpu(self.master_pid)}
        client, machine = time.process_time() - self.client, machine_cpu() - self.machine
        used_by: dict[str, list[float]] = {group: [] for group in SERVERS}
        for pid, (group, seconds) in last.items():
            if group in used_by:  # a process new in the window counts from zero
                used_by[group].append(seconds - self.first.get(pid, (group, 0.0))[1])
        used = {group: sum(seconds) for group, seconds in used_by.items()}
        used |= {"client": client, "machine": machine}
        used["other"] = machine - used["gunicorn"] - used["postgres"] - client
        return used, sorted(used_by["gunicorn"], reverse=True)


def run_load(server: Server, tokens: list[str], args: argparse.Namespace) -> LoadResult:
    barrier = threading.Barrier(len(tokens) + 1)
    begin = time.monotonic() + 0.5
    window = (begin + args.warmup, begin + args.warmup + args.duration)
    threads = [
        Annotator(server.port, token, args.seed * 100_003 + i, barrier, window[1], args.think_s)
        for i, token in enumerate(tokens)
    ]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, begin - time.monotonic()))
    barrier.wait()
    time.sleep(max(0.0, window[0] - time.monotonic()))
    meter = CpuMeter(server.pid)
    time.sleep(max(0.0, window[1] - time.monotonic()))
    cpu_s, gunicorn_cpu_s = meter.stop()
    for thread in threads:
        thread.join()
    return LoadResult([t.result for t in threads], window, cpu_s, gunicorn_cpu_s)


# --- figures --------------------------------------------------------------------------------


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def is_error(sample: Sample) -> bool:
    return sample.status not in (200, 201, 204)


@dataclass
class SizeResult:
    """The figures of one batch size, for the summary."""

    comparisons: int
    setup_s: float
    seconds: float  # measured
    cycles: int  # in the measured window
    latencies_ms: dict[str, list[float]]  # sorted, answered requests in the window
    errors: dict[str, int]  # failed requests in the window
    cpu_s: dict[str, float]
    sql_per_request: dict[str, int]
    ok: bool

    @property
    def cycles_per_s(self) -> float:
        return self.cycles / self.seconds

    def ms_per_cycle(self, who: str) -> float:
        return 1000 * self.cpu_s[who] / max(1, self.cycles)

    def cores(self, who: str) -> float:
        return self.cpu_s[who] / self.seconds


def measured(result: LoadResult) -> list[Sample]:
    start, end = result.window
    return [s for a in result.annotators for s in a.samples if start <= s.started < end]


def latencies(samples: list[Sample]) -> tuple[dict[str, list[float]], dict[str, int]]:
    values = {
        kind: sorted(s.latency_ms for s in samples if s.kind == kind and not is_error(s))
        for kind in REQUESTS
    }
    errors = {kind: sum(1 for s in samples if s.kind == kind and is_error(s)) for kind in REQUESTS}
    return values, errors


def latency_cells(values: list[float]) -> list[str]:
    cells = [f"{percentile(values, q):.1f}" for q in (0.50, 0.95, 0.99)]
    return cells + [f"{values[-1]:.1f}" if values else "-"]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        parts = [first.ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        return "  " + "  ".join(parts)

    rule = "  " + "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


CPU_PARTIES = {
    "gunicorn": "gunicorn workers (Django)",
    "postgres": "PostgreSQL (all processes)",
    "client": "load generator (this process)",
    "other": "other (kernel, other processes)",
    "machine": f"machine total (of {os.cpu_count()} cores)",
}


def summarize_load(result: LoadResult, args: argparse.Namespace) -> tuple[int, float]:
    """Print one size's load figures; returns the cycles and seconds of the measured window."""
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
        [
            "TCP connections opened / requests resent",
            f"{sum(a.connections for a in result.annotators)} / "
            f"{sum(a.resent for a in result.annotators)}",
        ],
    ]
    print(table(["figure", "value"], rows))
    print("\nLatency in the measured window (ms; failed requests left out of percentiles)")
    values, errors = latencies(samples)
    rows = [[k, str(len(values[k])), str(errors[k]), *latency_cells(values[k])] for k in REQUESTS]
    print(table(["request", "count", "errors", "p50", "p95", "p99", "max"], rows))
    print("\nCPU in the measured window")
    cpu = result.cpu_s
    rows = [
        [label, f"{cpu[key] / seconds:.2f}", f"{1000 * cpu[key] / max(1, cycles):.1f}"]
        for key, label in CPU_PARTIES.items()
    ]
    print(table(["who", "cores busy", "ms per cycle"], rows))
    split = " / ".join(f"{s / seconds:.2f}" for s in result.gunicorn_cpu_s)
    print(f"  cores busy per gunicorn process (workers and master): {split}")
    other = cpu["other"]
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
    return cycles, seconds


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


def lease_counter_drift(conn: psycopg.Connection) -> int | None:
    """Comparisons whose held-lease counter is off, or None where the schema has none."""
    has_counter = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'annotation_app_comparison'"
        " AND column_name = 'leased_count'"
    ).fetchone()
    if not has_counter:
        return None
    return conn.execute(
        "SELECT count(*) FROM annotation_app_comparison c LEFT JOIN (SELECT comparison_id,"
        " count(*) AS n FROM annotation_app_assignment WHERE status = 'leased'"
        " GROUP BY comparison_id) a ON a.comparison_id = c.id"
        " WHERE c.leased_count <> coalesce(a.n, 0)"
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
        lease_drift = lease_counter_drift(conn)
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
    if lease_drift is not None:
        checks.append(
            ["comparison.leased_count matches leases", f"{lease_drift} differ", lease_drift == 0]
        )
    print("\nCorrectness (database after the run)")
    rows = [[name, value, "OK" if ok else "FAIL"] for name, value, ok in checks]
    print(table(["check", "value", "result"], rows))
    print(
        f"  ({open_left} comparisons still open; 200 replays: "
        f"{sum(a.replayed for a in result.annotators)})"
    )
    return all(ok for *_, ok in checks)


# --- pgbench baseline -----------------------------------------------------------------------


def pgbench_clients(args: argparse.Namespace) -> int:
    return min(args.annotators, PGBENCH_MAX_CLIENTS)


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


# --- one size, and the summary --------------------------------------------------------------


def run_size(comparisons: int, args: argparse.Namespace, env: dict[str, str]) -> SizeResult:
    print(f"\n=== {comparisons:,} comparisons ===")
    started = time.monotonic()
    fixture = build_fixture(
        BENCH_DB, env, comparisons, args.overlap, args.annotators, args.import_chunk
    )
    sql = count_sql_per_request(fixture.probe_token)
    setup_s = time.monotonic() - started
    steps = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in fixture.setup_s.items())
    print(f"Setup took {setup_s:.1f} s: {steps}")
    print(
        f"SQL statements per request (one uncontended cycle): next-task {sql[NEXT]}, "
        f"submit {sql[SUBMIT]}"
    )
    with tempfile.TemporaryDirectory() as tmp, gunicorn(env, args, Path(tmp) / "log") as server:
        result = run_load(server, fixture.tokens, args)
    cycles, seconds = summarize_load(result, args)
    ok = verify(fixture, result, args.overlap)
    values, errors = latencies(measured(result))
    return SizeResult(comparisons, setup_s, seconds, cycles, values, errors, result.cpu_s, sql, ok)


def print_summary(results: list[SizeResult], tps: float | None, args: argparse.Namespace):
    mode = (
        f"think time {args.think_s[0]:g}-{args.think_s[1]:g} s (offered load)"
        if args.think_s
        else "no think time (saturated)"
    )
    print(f"\n=== Summary: {args.annotators} annotators, {mode}, overlap {args.overlap} ===")
    if tps is None:
        print("  (pgbench skipped)")
    else:
        clients = pgbench_clients(args)
        print(
            f"  pgbench -N (simple-update), scale 10, -c {clients} -j {min(clients, 2)} "
            f"-T {round(args.pgbench_seconds)}, measured after the sizes: {tps:.0f} TPS"
        )
    first = results[0].cycles_per_s
    rows = [
        [
            f"{r.comparisons:,}",
            f"{r.setup_s:.0f}",
            f"{r.cycles_per_s:.1f}",
            f"{r.cycles_per_s / first:.2f}" if first else "-",
            f"{r.ms_per_cycle('gunicorn'):.1f}",
            f"{r.ms_per_cycle('postgres'):.1f}",
            f"{r.cores('other'):.2f}",
            f"{r.sql_per_request[NEXT]} + {r.sql_per_request[SUBMIT]}",
            f"{r.cycles_per_s / tps:.4f}" if tps else "-",
            "OK" if r.ok else "FAIL",
        ]
        for r in results
    ]
    headers = [
        "comparisons",
        "setup s",
        "cycles/s",
        "vs first",
        "Django ms/cycle",
        "PostgreSQL ms/cycle",
        "other cores",
        "SQL next + submit",
        "/ pgbench TPS",
        "checks",
    ]
    print(table(headers, rows))
    print(
        "  Django = CPU of the gunicorn processes, PostgreSQL = CPU of its processes serving the"
        " benchmark,\n  per cycle; other cores = CPU used meanwhile by anything else (high:"
        " the figures are disturbed)."
    )
    print("\nLatency in the measured windows (ms)")
    rows = [
        [
            f"{r.comparisons:,}",
            *latency_cells(r.latencies_ms[NEXT]),
            *latency_cells(r.latencies_ms[SUBMIT]),
            f"{r.errors[NEXT]} + {r.errors[SUBMIT]}",
        ]
        for r in results
    ]
    quantiles = ("p50", "p95", "p99", "max")
    headers = ["comparisons", *(f"{short} {q}" for short in ("next", "submit") for q in quantiles)]
    headers.append("errors")
    print(table(headers, rows))


# --- main -----------------------------------------------------------------------------------


def print_header(args: argparse.Namespace) -> None:
    kind = f"gthread x {args.threads} threads" if args.threads > 1 else "sync"
    think = f"think {args.think_s[0]:g}-{args.think_s[1]:g} s" if args.think_s else "no think time"
    sizes = ", ".join(f"{size:,}" for size in args.comparisons)
    print("Pairwise annotation loop benchmark")
    print(
        f"  {args.annotators} annotators ({think}), batch of {sizes} comparisons, overlap "
        f"{args.overlap}; gunicorn {args.workers} workers ({kind}, keep-alive "
        f"{args.keep_alive:g} s); {os.cpu_count()} CPU cores shared by client, gunicorn and "
        "PostgreSQL"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print_header(args)
    env = django_env(BENCH_DB)
    results: list[SizeResult] = []
    try:
        for comparisons in args.comparisons:
            results.append(run_size(comparisons, args, env))
        tps = None
        if not args.skip_pgbench:
            tps = pgbench_tps(pgbench_clients(args), args.pgbench_seconds)
        print_summary(results, tps, args)
    finally:
        if not args.keep_db:
            drop_database(BENCH_DB)
            drop_database(PGBENCH_DB)
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
