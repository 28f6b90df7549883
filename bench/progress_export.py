"""Batch progress and export at scale: the progress API's latency and the export's memory.

What is measured
----------------
A batch of ``--annotations`` annotations (600,000 by default: 200,000 comparisons judged three
times by ``--annotators`` annotators, plus 5 % ready comparisons nobody judged yet, references
on a quarter, gold checks on a twentieth, skips and flags) is written straight into a fresh
PostgreSQL database with ``INSERT … SELECT generate_series`` (under a minute), with the
comparisons' denormalised counters set as the services would (``annotation_count``,
``slot1_count``, ``status``, ``flag_count``, no lease held: ``leased_count`` 0,
``earliest_lease_expiry`` NULL), then VACUUM ANALYZEd. A second batch ten times smaller and
an empty one come with it.

1. ``GET /api/v1/batches/{id}/progress/`` through gunicorn (one sync worker, production
   settings, token auth, a new connection per request): one unmeasured request, then ``--repeats``
   timed ones; median and max. The baseline is the same request answered by the code before
   this change (progress computed by loading every annotation into Python), kept below as
   ``legacy_batch_progress`` and patched into the API by :func:`legacy_wsgi_application`, in
   the same run on the same data. Both answers must be equal (to 1e-9 on floats).
2. The export's peak memory (VmHWM, the resident set's high-water mark): the canonical export
   of the empty, the small and the large batch, in that order, (a) streamed by
   ``GET /api/v1/export/`` from one gunicorn worker (its VmHWM read from /proc after each
   download), (b) written by ``manage.py export_preferences --out -`` in a fresh process each
   (its max RSS from ``wait4``). The baseline of each is the same process exporting the empty
   batch (Django loaded, nothing exported); constant memory means the large batch peaks no
   higher than the small one.

Usage: python bench/progress_export.py [--annotations 600000] [--overlap 3] [--annotators 100]
           [--repeats 7] [--skip-export] [--skip-legacy] [--keep-db]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations
from pathlib import Path
from statistics import median

from annotation_loop import (
    database_url,
    django_env,
    drop_database,
    free_port,
    migrate,
    recreate_database,
    start_django,
    stop_process,
    table,
    wait_until_up,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "pairwise_bench_progress"
PROGRESS_BOUND_MS = 500.0  # issue 10: the progress API answers in under 500 ms
EXPORT_BOUND_MB = 300.0  # issue 10: exporting keeps the process under 300 MB


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip('"'))
    parser.add_argument("--annotations", type=int, default=600_000, help="in the large batch")
    parser.add_argument("--overlap", type=int, default=3, help="annotations per comparison")
    parser.add_argument("--annotators", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7, help="timed progress requests")
    parser.add_argument("--skip-export", action="store_true", help="time the progress API only")
    parser.add_argument("--skip-legacy", action="store_true", help="no baseline progress runs")
    parser.add_argument("--keep-db", action="store_true", help="keep the database afterwards")
    return parser.parse_args(argv)


# --- the code before: progress computed in Python from every annotation (the baseline) -------


def _legacy_agreement(annotations: list[tuple[int, int, int]]) -> float | None:
    by_comparison: dict[int, list[int]] = defaultdict(list)
    for comparison_id, _, preferred_slot in annotations:
        by_comparison[comparison_id].append(preferred_slot)
    agreeing = total = 0
    for preferences in by_comparison.values():
        for first, second in combinations(preferences, 2):
            total += 1
            agreeing += first == second
    return agreeing / total if total else None


def legacy_batch_progress(batch, now: datetime | None = None) -> dict:
    from django.db.models import Count
    from django.utils import timezone

    from annotation_app.models import Annotation, Assignment, Comparison

    now = now or timezone.now()
    status_counts = dict(batch.comparisons.values_list("status").annotate(n=Count("id")).order_by())
    total = sum(status_counts.values())
    annotations = list(
        Annotation.objects.filter(comparison__batch=batch).values_list(
            "comparison_id", "annotator_id", "preferred_slot"
        )
    )
    wanted = total * batch.overlap
    live_leases = Assignment.objects.filter(
        comparison__batch=batch, status=Assignment.Status.LEASED, expires_at__gt=now
    ).count()
    reference = dict(
        batch.comparisons.filter(reference_preferred_slot__isnull=False).values_list(
            "id", "reference_preferred_slot"
        )
    )
    with_reference = [(c, p) for c, _, p in annotations if c in reference]
    return {
        "batch": batch.pk,
        "name": batch.name,
        "kind": batch.kind,
        "status": batch.status,
        "overlap": batch.overlap,
        "comparisons": total,
        "comparisons_by_status": {
            status: status_counts.get(status, 0) for status in Comparison.Status.values
        },
        "annotations": len(annotations),
        "annotations_wanted": wanted,
        "percent_complete": round(100.0 * len(annotations) / wanted, 1) if wanted else 0.0,
        "live_leases": live_leases,
        "flagged_comparisons": batch.comparisons.filter(flag_count__gt=0).count(),
        "inter_annotator_agreement": _legacy_agreement(annotations),
        "agreement_with_reference": (
            sum(reference[c] == p for c, p in with_reference) / len(with_reference)
            if with_reference
            else None
        ),
        "annotators": legacy_annotator_quality(batch),
    }


def legacy_annotator_quality(batch) -> list[dict]:
    from django.db.models import Count

    from annotation_app.models import Annotation, Assignment

    rows = Annotation.objects.filter(comparison__batch=batch).values_list(
        "annotator__username",
        "time_spent_ms",
        "is_gold_check",
        "preferred_slot",
        "comparison__reference_preferred_slot",
    )
    stats: dict[str, dict] = defaultdict(
        lambda: {"count": 0, "times": [], "gold": 0, "gold_correct": 0}
    )
    for username, time_spent_ms, is_gold, preferred, reference in rows:
        entry = stats[username]
        entry["count"] += 1
        if time_spent_ms is not None:
            entry["times"].append(time_spent_ms)
        if is_gold:
            entry["gold"] += 1
            entry["gold_correct"] += preferred == reference
    skips = dict(
        Assignment.objects.filter(
            comparison__batch=batch,
            status__in=[Assignment.Status.SKIPPED, Assignment.Status.FLAGGED],
        )
        .values_list("annotator__username")
        .annotate(n=Count("id"))
        .order_by()
    )
    return [
        {
            "annotator": username,
            "annotations": entry["count"],
            "median_seconds": round(median(entry["times"]) / 1000, 1) if entry["times"] else None,
            "gold_checks": entry["gold"],
            "gold_accuracy": entry["gold_correct"] / entry["gold"] if entry["gold"] else None,
            "skipped_or_flagged": skips.get(username, 0),
        }
        for username, entry in sorted(stats.items())
    ]


def legacy_wsgi_application():
    """gunicorn's application for the baseline: the API as it is, with the old progress."""
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()
    import annotation_app.api.views as api_views

    api_views.batch_progress = legacy_batch_progress
    return application


# --- the fixture: batches written straight into PostgreSQL -----------------------------------


@dataclass(frozen=True)
class BenchBatch:
    pk: int
    name: str
    annotations: int
    comparisons: int


def create_users(annotators: int) -> tuple[list[int], str]:
    """The annotators' ids, and the token of a batch admin who reads progress and exports."""
    from django.contrib.auth.models import Group, User
    from rest_framework.authtoken.models import Token

    from annotation_app.roles import Role

    users = User.objects.bulk_create(
        User(username=f"annotator{i:03d}", password="!") for i in range(annotators)
    )
    group = Group.objects.get(name=Role.ANNOTATOR.value)
    User.groups.through.objects.bulk_create(
        User.groups.through(user_id=user.pk, group_id=group.pk) for user in users
    )
    admin = User.objects.create(username="benchadmin", password="!", is_staff=True)
    admin.groups.add(Group.objects.get(name=Role.BATCH_ADMIN.value))
    return [user.pk for user in users], Token.objects.create(user=admin).key


def next_id(cursor, table_name: str) -> int:
    cursor.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table_name}")
    return cursor.fetchone()[0]


def follow_ids(cursor, table_name: str) -> None:
    """Move the id sequence past ids written explicitly, for the rows inserted next."""
    cursor.execute(
        f"SELECT setval(pg_get_serial_sequence('{table_name}', 'id'), "
        f"(SELECT COALESCE(MAX(id), 1) FROM {table_name}))"
    )


def create_batch(name: str, annotations: int, overlap: int, annotator_ids: list[int]) -> BenchBatch:
    """A batch with ``annotations`` annotations, ``overlap`` per comparison, in a few statements.

    Comparison ``i`` (0-based) is judged by annotators ``(7 i + 13 j) mod U`` for ``j <
    overlap`` (distinct as long as U does not divide 13 j), and skipped by annotator
    ``(7 i + 13 overlap) mod U`` when ``i mod 25 = 3`` and flagged by the next one when
    ``i mod 50 = 7``. A quarter of the comparisons carry a reference preference, a twentieth
    are gold checks. Preferences, strengths and times are drawn with a fixed seed.
    """
    from django.db import connection

    full, remainder = divmod(annotations, overlap)
    judged = full + (1 if remainder else 0)
    ready_untouched = max(1, judged // 20)
    comparisons = judged + ready_untouched
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(0.42)")
        cursor.execute(
            """INSERT INTO annotation_app_batch (name, kind, status, guidelines, overlap,
                   sampling_plan, lease_minutes, created_at, activated_at,
                   allow_annotator_prompts, max_turns)
               VALUES (%s, 'helpfulness', 'active', 'Pick the more helpful response.', %s,
                   '{}', 30, now(), now(), false, 1)
               RETURNING id""",
            [name, overlap],
        )
        batch_id = cursor.fetchone()[0]
        conversation0 = next_id(cursor, "annotation_app_conversation")
        comparison0 = next_id(cursor, "annotation_app_comparison")
        assignment0 = next_id(cursor, "annotation_app_assignment")
        params = {
            "batch": batch_id,
            "n": comparisons,
            "full": full,
            "remainder": remainder,
            "overlap": overlap,
            "cv0": conversation0,
            "c0": comparison0,
            "a0": assignment0,
            "users": annotator_ids,
            "u": len(annotator_ids),
        }
        cursor.execute(
            """INSERT INTO annotation_app_conversation
                   (id, risk_category, attack_vector, source, created_at, batch_id)
               SELECT %(cv0)s + i, '', '', 'bench', now(), %(batch)s
               FROM generate_series(0, %(n)s - 1) AS i""",
            params,
        )
        follow_ids(cursor, "annotation_app_conversation")
        cursor.execute(
            """INSERT INTO annotation_app_turn (index, role, content, conversation_id)
               SELECT 0, 'user', 'Bench prompt ' || i || ': explain topic ' || i
                   || ' to a curious reader, with an example.', %(cv0)s + i
               FROM generate_series(0, %(n)s - 1) AS i""",
            params,
        )
        # One row per annotation: comparison i, its j-th annotation, k-th of the batch.
        cursor.execute(
            """CREATE TEMP TABLE bench_slots AS
               SELECT i, j, row_number() OVER (ORDER BY i, j) - 1 AS k,
                   (%(users)s::int[])[1 + (7 * i + 13 * j) %% %(u)s] AS annotator,
                   1 + (random() < 0.5 + 0.2 * ((i %% 3) - 1))::int AS preferred
               FROM generate_series(0, %(full)s) AS i, generate_series(0, %(overlap)s - 1) AS j
               WHERE i < %(full)s OR j < %(remainder)s""",
            params,
        )
        cursor.execute(
            """INSERT INTO annotation_app_comparison
                   (id, context_length, status, annotation_count, flag_count,
                    reference_preferred_slot, is_gold, generation_error, created_at, batch_id,
                    conversation_id, leased_count, earliest_lease_expiry, slot1_count)
               SELECT %(c0)s + i, 1,
                   CASE WHEN counts.n >= %(overlap)s THEN 'complete' ELSE 'ready' END,
                   counts.n, (i %% 50 = 7)::int,
                   CASE WHEN i %% 4 = 0 THEN 1 + (i / 4) %% 2 END, i %% 20 = 0, '', now(),
                   %(batch)s, %(cv0)s + i, 0, NULL, 0
               FROM generate_series(0, %(n)s - 1) AS i
               CROSS JOIN LATERAL (
                   SELECT CASE WHEN i < %(full)s THEN %(overlap)s
                               WHEN i = %(full)s THEN %(remainder)s ELSE 0 END AS n
               ) AS counts""",
            params,
        )
        follow_ids(cursor, "annotation_app_comparison")
        cursor.execute(
            """INSERT INTO annotation_app_response
                   (slot, text, source, model_name, sampling_params, created_at, comparison_id,
                    finish_reason, prompt_tokens_dropped)
               SELECT slot, repeat('Answer ' || slot || ' to prompt ' || i
                   || ' explains the topic step by step. ', 8), 'imported',
                   'bench-' || slot, '{}', now(), %(c0)s + i, '', 0
               FROM generate_series(0, %(n)s - 1) AS i, generate_series(1, 2) AS slot""",
            params,
        )
        cursor.execute(
            """INSERT INTO annotation_app_assignment
                   (id, status, left_slot, leased_at, expires_at, finished_at, flag_reason,
                    annotator_id, comparison_id)
               SELECT %(a0)s + k, 'submitted', 1 + (k %% 2), now() - interval '1 hour',
                   now() + interval '1 hour', now(), '', annotator, %(c0)s + i
               FROM bench_slots""",
            params,
        )
        follow_ids(cursor, "annotation_app_assignment")
        cursor.execute(
            """INSERT INTO annotation_app_assignment
                   (status, left_slot, leased_at, expires_at, finished_at, flag_reason,
                    annotator_id, comparison_id)
               SELECT CASE WHEN i %% 50 = 7 THEN 'flagged' ELSE 'skipped' END, 1,
                   now() - interval '1 hour', now() + interval '1 hour', now(),
                   CASE WHEN i %% 50 = 7 THEN 'response is cut off' ELSE '' END,
                   (%(users)s::int[])[1 + (7 * i + 13 * %(overlap)s) %% %(u)s], %(c0)s + i
               FROM generate_series(0, %(n)s - 1) AS i
               WHERE i %% 25 = 3 OR i %% 50 = 7""",
            params,
        )
        cursor.execute(
            """INSERT INTO annotation_app_annotation
                   (preferred_slot, strength, safety_bin, rationale, left_slot, time_spent_ms,
                    is_gold_check, idempotency_key, created_at, annotator_id, assignment_id,
                    comparison_id, batch_id)
               SELECT preferred,
                   (ARRAY['significantly_better', 'better', 'slightly_better',
                          'negligibly_better'])[1 + floor(random() * 4)::int],
                   '', CASE WHEN k %% 10 = 0 THEN 'The second one answers the question.'
                            ELSE '' END,
                   1 + (k %% 2),
                   CASE WHEN k %% 97 = 0 THEN NULL ELSE 2000 + floor(random() * 90000)::int END,
                   i %% 20 = 0, gen_random_uuid(), now(), annotator, %(a0)s + k, %(c0)s + i,
                   %(batch)s
               FROM bench_slots""",
            params,
        )
        cursor.execute(
            """UPDATE annotation_app_comparison AS c SET slot1_count = judged.slot1
               FROM (SELECT comparison_id, count(*) FILTER (WHERE preferred_slot = 1) AS slot1
                     FROM annotation_app_annotation WHERE batch_id = %(batch)s
                     GROUP BY comparison_id) AS judged
               WHERE c.id = judged.comparison_id""",
            params,
        )
        cursor.execute("DROP TABLE bench_slots")
    return BenchBatch(batch_id, name, annotations, comparisons)


# --- measuring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    port: int
    worker_pid: int


@contextlib.contextmanager
def gunicorn(env: dict[str, str], application: str, log: Path) -> Iterator[Server]:
    """One sync worker, no request timeout (an export of 600,000 lines takes minutes)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        application,
        f"--bind=127.0.0.1:{port}",
        "--workers=1",
        "--worker-class=sync",
        "--timeout=0",
        f"--pythonpath={ROOT / 'bench'}",
        "--log-level=warning",
    ]
    with log.open("wb") as log_file:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=log_file)
        try:
            wait_until_up(proc, port)
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            yield Server(port, int(children[0]))
        except BaseException:
            print(f"--- gunicorn log ({log}) ---\n{log.read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            stop_process(proc)


def peak_rss_mb(pid: int) -> float:
    """The process's resident-set high-water mark (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def api_get(port: int, token: str, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    conn.request("GET", path, headers={"Authorization": f"Token {token}"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {response.read()[:500]!r}")
    return response


def time_progress(server: Server, token: str, batch: BenchBatch, repeats: int):
    """(milliseconds of each timed request, the answer), after one unmeasured request."""

    def one() -> tuple[float, dict]:
        started = time.perf_counter()
        body = api_get(server.port, token, f"/api/v1/batches/{batch.pk}/progress/").read()
        return (time.perf_counter() - started) * 1000, json.loads(body)

    _, answer = one()
    return [one()[0] for _ in range(repeats)], answer


def same_answer(first, second) -> bool:
    if isinstance(first, float) or isinstance(second, float):
        return (
            first is not None
            and second is not None
            and math.isclose(first, second, rel_tol=1e-9, abs_tol=1e-12)
        )
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(
            same_answer(first[k], second[k]) for k in first
        )
    if isinstance(first, list) and isinstance(second, list):
        return len(first) == len(second) and all(map(same_answer, first, second))
    return first == second


@dataclass(frozen=True)
class ExportRun:
    way: str
    batch: BenchBatch
    lines: int
    megabytes: float
    seconds: float
    peak_mb: float


def export_through_api(server: Server, token: str, batch: BenchBatch) -> ExportRun:
    started = time.perf_counter()
    response = api_get(server.port, token, f"/api/v1/export/?format=canonical&batch={batch.pk}")
    lines = size = 0
    while chunk := response.read(1 << 20):
        lines += chunk.count(b"\n")
        size += len(chunk)
    seconds = time.perf_counter() - started
    return ExportRun(
        "API stream", batch, lines, size / 2**20, seconds, peak_rss_mb(server.worker_pid)
    )


def export_through_command(env: dict[str, str], batch: BenchBatch, log: Path) -> ExportRun:
    started = time.perf_counter()
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "export_preferences", "--format=canonical"]
            + ["--batch", batch.name, "--out", "-"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        lines = size = 0
        while chunk := proc.stdout.read(1 << 20):
            lines += chunk.count(b"\n")
            size += len(chunk)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"export_preferences failed:\n{log.read_text()[-4000:]}")
    seconds = time.perf_counter() - started
    return ExportRun("command", batch, lines, size / 2**20, seconds, usage.ru_maxrss / 1024)


# --- the run ---------------------------------------------------------------------------------


def measure_progress(
    env: dict[str, str], token: str, batch: BenchBatch, args: argparse.Namespace, logs: Path
) -> None:
    rows, answers, baseline_ms = [], {}, None
    servers = [("app: annotation_app.selectors", "config.wsgi:application")]
    if not args.skip_legacy:
        servers.insert(
            0, ("legacy: every annotation into Python", "progress_export:legacy_wsgi_application()")
        )
    for label, application in servers:
        with gunicorn(env, application, logs / "gunicorn-progress.log") as server:
            times, answers[label] = time_progress(server, token, batch, args.repeats)
        middle = statistics.median(times)
        baseline_ms = baseline_ms or middle
        rows.append([label, f"{middle:.0f}", f"{max(times):.0f}", f"{baseline_ms / middle:.1f}x"])
    print(
        f"\nGET /api/v1/batches/{{id}}/progress/ with {batch.annotations:,} annotations over "
        f"{batch.comparisons:,} comparisons, gunicorn (1 sync worker), {args.repeats} requests "
        "after one unmeasured:"
    )
    print(table(["code", "median ms", "max ms", "speed-up vs legacy"], rows))
    verdict = "PASS" if statistics.median(times) < PROGRESS_BOUND_MS else "FAIL"
    print(f"  bound: median under {PROGRESS_BOUND_MS:.0f} ms: {verdict}")
    if len(answers) == 2:
        before, after = answers.values()
        print(f"  legacy and app answer the same: {'yes' if same_answer(before, after) else 'NO'}")
    after = answers[servers[-1][0]]
    print(
        f"  answer: {after['annotations']:,} annotations, agreement "
        f"{after['inter_annotator_agreement']:.4f}, with reference "
        f"{after['agreement_with_reference']:.4f}, {len(after['annotators'])} annotators, "
        f"{after['flagged_comparisons']:,} flagged"
    )


def measure_export(env: dict[str, str], token: str, batches: list[BenchBatch], logs: Path) -> None:
    runs: list[ExportRun] = []
    with gunicorn(env, "config.wsgi:application", logs / "gunicorn-export.log") as server:
        runs += [export_through_api(server, token, batch) for batch in batches]
    runs += [export_through_command(env, batch, logs / "export-command.log") for batch in batches]
    print(
        "\nCanonical export, peak resident memory (VmHWM) of the exporting process; the API "
        "stream's\nworker exports the three batches in turn, the command is a fresh process "
        "each time:"
    )
    rows = []
    for run in runs:
        baseline = next(r for r in runs if r.way == run.way).peak_mb  # the empty batch
        rows.append(
            [
                f"{run.way}, {run.batch.name}",
                f"{run.lines:,}",
                f"{run.megabytes:,.0f}",
                f"{run.seconds:.1f}",
                f"{run.lines / run.seconds:,.0f}" if run.lines else "-",
                f"{run.peak_mb:.0f}",
                f"{run.peak_mb / baseline:.2f}x",
            ]
        )
    print(
        table(["process, batch", "lines", "MiB out", "s", "lines/s", "peak MiB", "vs empty"], rows)
    )
    for way in ("API stream", "command"):
        mine = [r for r in runs if r.way == way]
        small, large = mine[-2], mine[-1]
        verdict = "PASS" if large.peak_mb < EXPORT_BOUND_MB else "FAIL"
        print(
            f"  {way}: {large.lines:,} lines peak at {large.peak_mb:.0f} MiB, "
            f"{large.peak_mb - small.peak_mb:+.0f} MiB over {small.lines:,} lines "
            f"(bound {EXPORT_BOUND_MB:.0f} MB: {verdict})"
        )
        expected = large.batch.annotations
        if large.lines != expected:
            print(f"  {way}: WRONG line count, {large.lines:,} for {expected:,} annotations")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    env = django_env(BENCH_DB)
    logs = ROOT / "var" / "bench-progress-export"
    logs.mkdir(parents=True, exist_ok=True)
    recreate_database(BENCH_DB)
    try:
        migrate(env)
        start_django(env)
        from django.db import connection, connections

        annotator_ids, token = create_users(args.annotators)
        started = time.perf_counter()
        batches = [
            create_batch(name, count, args.overlap, annotator_ids)
            for name, count in (
                ("bench-empty", 0),
                ("bench-small", args.annotations // 10),
                ("bench-large", args.annotations),
            )
        ]
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")  # as autovacuum would soon after a load
        connections.close_all()
        print(
            f"Fixture: {', '.join(f'{b.name} {b.annotations:,} annotations' for b in batches)}, "
            f"{args.annotators} annotators, written in {time.perf_counter() - started:.0f} s "
            f"(database {database_url(BENCH_DB)})"
        )
        measure_progress(env, token, batches[-1], args, logs)
        if not args.skip_export:
            measure_export(env, token, batches, logs)
    finally:
        if args.keep_db:
            print(f"kept the database {BENCH_DB}")
        else:
            drop_database(BENCH_DB)


if __name__ == "__main__":
    main()
