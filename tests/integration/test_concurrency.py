"""Many annotators at once, over real HTTP, against PostgreSQL.

Each client is a thread with its own token; the live server answers each request in its own
thread with its own database connection. Clients also retry some submits, as a flaky network
would make them do.
"""

from __future__ import annotations

import json
import random
import threading
import urllib.error
import urllib.request
import uuid
from collections import Counter

import pytest
from rest_framework.authtoken.models import Token

from annotation_app.models import Annotation, Comparison
from tests.counters import assert_counters_match_rows

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CLIENTS = 20
COMPARISONS = 30
OVERLAP = 3


def call(base_url: str, token: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        base_url + path,
        data=json.dumps(body or {}).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = response.read()
            return response.status, json.loads(payload) if payload else {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def annotate_until_done(base_url: str, token: str, seed: int, log: list, failures: list) -> None:
    rng = random.Random(seed)
    while True:
        status, task = call(base_url, token, "/api/v1/tasks/next/")
        if status == 204:
            return
        if status != 200:
            failures.append(("next", status, task))
            return
        submission = {
            "assignment": task["assignment"],
            "preferred": rng.choice("AB"),
            "strength": rng.choice(
                ["significantly_better", "better", "slightly_better", "negligibly_better"]
            ),
            "idempotency_key": str(uuid.uuid4()),
        }
        attempts = 2 if rng.random() < 0.25 else 1  # a retried submit, same key
        ids = set()
        for attempt in range(attempts):
            status, annotation = call(base_url, token, "/api/v1/annotations/", submission)
            expected = 201 if attempt == 0 else 200
            if status != expected:
                failures.append(("submit", status, annotation))
                return
            ids.add(annotation["id"])
        if len(ids) != 1:
            failures.append(("retry created a second annotation", ids))
        log.append(ids.pop())


def test_many_annotators_fill_a_batch_to_exactly_its_overlap(live_server, make_batch, make_user):
    batch = make_batch(comparisons=COMPARISONS, overlap=OVERLAP)
    tokens = [Token.objects.create(user=make_user()).key for _ in range(CLIENTS)]
    created: list[int] = []
    failures: list = []
    threads = [
        threading.Thread(
            target=annotate_until_done, args=(live_server.url, token, seed, created, failures)
        )
        for seed, token in enumerate(tokens)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []

    # No submit was lost: every 201 is a row, and there are no others.
    assert sorted(created) == sorted(Annotation.objects.values_list("id", flat=True))
    assert len(created) == COMPARISONS * OVERLAP
    per_comparison = Counter(
        Annotation.objects.filter(comparison__batch=batch).values_list("comparison_id", flat=True)
    )
    assert set(per_comparison.values()) == {OVERLAP}
    assert len(per_comparison) == COMPARISONS
    for comparison in Comparison.objects.filter(batch=batch):
        annotators = list(comparison.annotations.values_list("annotator_id", flat=True))
        assert len(set(annotators)) == OVERLAP
        assert comparison.annotation_count == OVERLAP
        assert comparison.status == Comparison.Status.COMPLETE
    assert_counters_match_rows(Comparison.objects.filter(batch=batch))


def annotate_cycles(base_url: str, token: str, cycles: int, log: list, failures: list) -> None:
    rng = random.Random(token)
    for _ in range(cycles):
        status, task = call(base_url, token, "/api/v1/tasks/next/")
        if status != 200:
            failures.append(("next", status, task))
            return
        submission = {
            "assignment": task["assignment"],
            "preferred": rng.choice("AB"),
            "strength": "better",
            "idempotency_key": str(uuid.uuid4()),
        }
        status, annotation = call(base_url, token, "/api/v1/annotations/", submission)
        if status != 201:
            failures.append(("submit", status, annotation))
            return
        log.append(annotation["id"])


def test_many_annotators_on_a_batch_of_fifty_thousand(live_server, make_user):
    """At Llama 2's weekly scale: the same rules hold, and started comparisons come first."""
    from annotation_app.models import Assignment
    from tests.bulk import ready_batch

    batch = ready_batch(50_000, overlap=OVERLAP)
    clients, cycles = 16, 12
    tokens = [Token.objects.create(user=make_user()).key for _ in range(clients)]
    created: list[int] = []
    failures: list = []
    threads = [
        threading.Thread(
            target=annotate_cycles, args=(live_server.url, token, cycles, created, failures)
        )
        for token in tokens
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []

    annotations = Annotation.objects.filter(comparison__batch=batch)
    assert sorted(created) == sorted(annotations.values_list("id", flat=True))  # none lost
    pairs = list(annotations.values_list("comparison_id", "annotator_id"))
    assert len(set(pairs)) == len(pairs) == clients * cycles  # never the same one twice
    per_comparison = Counter(comparison for comparison, _ in pairs)
    assert max(per_comparison.values()) <= OVERLAP
    # Started comparisons come first: the work piles up on few comparisons, most finished.
    assert len(per_comparison) <= len(pairs) // OVERLAP + clients
    # The counters next-task and progress read agree with the rows they summarise.
    assert_counters_match_rows(Comparison.objects.filter(pk__in=per_comparison))
    for comparison in Comparison.objects.filter(pk__in=per_comparison):
        assert comparison.annotation_count == per_comparison[comparison.pk]
        held = comparison.assignments.filter(status=Assignment.Status.LEASED)
        assert comparison.leased_count == held.count() == 0
        expected = (
            Comparison.Status.COMPLETE
            if per_comparison[comparison.pk] == OVERLAP
            else (Comparison.Status.READY)
        )
        assert comparison.status == expected
