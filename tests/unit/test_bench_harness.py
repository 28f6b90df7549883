"""The benchmark harnesses' own logic: how bench/profile_requests.py attributes a sampled call
stack to an area, how it groups SQL, and how bench/annotation_loop.py reads its options and
tells the PostgreSQL processes working for it from the others; bench/rejection_sampling.py run
end to end on a tiny model."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.annotation_loop import batch_sizes, postgres_group, think_range
from bench.profile_requests import ORM, PYTHON, WAIT, Frame, area_of, kind_of, statement_shape

SITE = "/venv/lib/python3.11/site-packages"


def frame(function: str, path: str, cls: str | None = None, line: int = 10) -> Frame:
    """A frame as pyinstrument records it: function, file, first line, then attributes."""
    identifier = f"{function}\x00{path}\x001"
    if cls:
        identifier += f"\x01c{cls}"
    return Frame.parse(identifier + f"\x01l{line}")


REQUEST = [
    frame("__call__", f"{SITE}/django/core/handlers/wsgi.py", "WSGIHandler"),
    frame("__call__", f"{SITE}/django/utils/deprecation.py", "SessionMiddleware"),
    frame("__call__", f"{SITE}/csp/middleware.py", "CSPMiddleware"),
    frame("dispatch", f"{SITE}/rest_framework/views.py", "NextTaskView"),
]
QUERY = [
    frame("get", f"{SITE}/django/db/models/query.py", "QuerySet"),
    frame("execute", f"{SITE}/psycopg/cursor.py", "Cursor"),
]
WAITING = [frame("wait_c", f"{SITE}/psycopg/waiting.py")]


def test_the_token_lookups_sql_counts_as_authentication_and_its_wait_as_waiting():
    stack = [
        *REQUEST,
        frame("_authenticate", f"{SITE}/rest_framework/request.py", "Request"),
        frame(
            "authenticate_credentials",
            f"{SITE}/rest_framework/authentication.py",
            "TokenAuthentication",
            line=201,
        ),
        *QUERY,
        *WAITING,
    ]
    area, site = area_of(stack)
    assert area == "authentication (token lookup)"
    assert site.location() == (
        "TokenAuthentication.authenticate_credentials (rest_framework/authentication.py:201)"
    )
    assert kind_of(stack) == WAIT
    assert kind_of(stack[:-1]) == ORM


def test_a_model_method_a_serializer_calls_counts_as_serializers():
    stack = [
        *REQUEST,
        frame("post", "/repo/annotation_app/api/views.py", "NextTaskView"),
        frame("get_context", "/repo/annotation_app/api/serializers.py", "TaskSerializer"),
        frame("context", "/repo/annotation_app/models.py", "Comparison"),
        *QUERY,
    ]
    assert area_of(stack)[0] == "serializers"


def test_a_permission_class_in_our_views_counts_as_permissions_not_as_our_views():
    stack = [
        *REQUEST,
        frame("check_permissions", f"{SITE}/rest_framework/views.py", "NextTaskView"),
        frame("has_permission", "/repo/annotation_app/api/views.py", "Has_annotate"),
        frame("has_perm", f"{SITE}/django/contrib/auth/models.py", "User"),
        *QUERY,
    ]
    assert area_of(stack)[0] == "permissions"


def test_our_services_and_the_middleware_between_them_and_the_handler():
    service = [
        *REQUEST,
        frame("post", "/repo/annotation_app/api/views.py", "NextTaskView"),
        frame("next_assignment", "/repo/annotation_app/services/assignment.py"),
        frame("__exit__", f"{SITE}/django/db/transaction.py", "Atomic"),
    ]
    assert area_of(service)[0] == "our services"
    assert area_of(REQUEST[:3])[0].startswith("middleware")
    assert kind_of(REQUEST[:3]) == PYTHON
    assert area_of([frame("helper", "/elsewhere/tool.py")])[0] == "other"


def test_statements_are_grouped_without_their_columns_quotes_and_in_lists():
    one = 'SELECT "a"."id", "a"."x" FROM "annotation_app_assignment" a WHERE a.id IN (%s, %s)'
    other = 'SELECT "a"."id" FROM "annotation_app_assignment" a WHERE a.id IN (%s)'
    assert statement_shape(one) == statement_shape(other)
    assert statement_shape(one) == "SELECT … FROM assignment a WHERE a.id IN (…)"
    update = 'UPDATE "annotation_app_comparison" SET "n" = %s WHERE "id" = %s'
    assert statement_shape(update) == "UPDATE comparison SET … WHERE id = %s"


def test_the_loops_options_read_sizes_and_think_ranges_and_name_bad_ones():
    assert batch_sizes("5000,50_000, 200000") == [5000, 50000, 200000]
    assert think_range("2-5") == (2.0, 5.0)
    assert think_range("3") == (3.0, 3.0)
    for text in ("5000,x", "0"):
        with pytest.raises(argparse.ArgumentTypeError, match="5000|at least 1"):
            batch_sizes(text)
    for text in ("5-2", "a-b"):
        with pytest.raises(argparse.ArgumentTypeError, match=text):
            think_range(text)


def test_postgresql_processes_count_for_the_benchmark_only_when_they_work_for_its_database():
    ours = "postgres: 15/main: postgres pairwise_bench 127.0.0.1(40000) idle"
    theirs = "postgres: 15/main: postgres pairwise_bench_progress 127.0.0.1(40002) SELECT"
    assert postgres_group(ours, {}) == "postgres"
    assert postgres_group(theirs, {}) == "other"
    helper = "postgres: 15/main: parallel worker for PID 7"
    assert postgres_group(helper, {7: "other"}) == "other"
    assert postgres_group(helper, {7: "postgres"}) == "postgres"
    assert postgres_group("postgres: 15/main: checkpointer", {}) == "postgres"


def test_the_rejection_sampling_bench_times_both_sides_on_a_tiny_model():
    """bench/rejection_sampling.py end to end, at rejection-sample's batch sizes: both sides
    sample every prompt K times (1 to N tokens each) and the ratio is printed."""
    bench = Path(__file__).resolve().parents[2] / "bench" / "rejection_sampling.py"
    argv = ["--models", "tiny", "--prompts", "3", "--samples", "2", "--max-new-tokens", "4"]
    # Its own process: the bench sets torch's threads and transformers' logging for good.
    out = subprocess.run([sys.executable, bench, *argv], capture_output=True, text=True, check=True)
    out = out.stdout
    tokens = [int(n) for n in re.findall(r"tiny (?:ours|baseline) .*\((\d+) tokens\)", out)]
    assert len(tokens) == 2 and all(3 * 2 <= n <= 3 * 2 * 4 for n in tokens)  # ≥ 1, ≤ N each
    assert float(re.search(r"tiny ratio +([\d.]+)×", out).group(1)) > 0
