"""Upgrading a database that holds annotations: the data migrations fill what they add."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

BEFORE = [("annotation_app", "0008_comparison_lease_counts")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_annotations_get_their_batch_and_comparisons_their_slot1_counts():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes("annotation_app")
    old = migrate(BEFORE)
    try:
        User = old.get_model("auth", "User")
        Batch, Conversation, Comparison, Annotation = (
            old.get_model("annotation_app", name)
            for name in ("Batch", "Conversation", "Comparison", "Annotation")
        )
        users = [User.objects.create(username=f"rater{i}") for i in range(3)]
        expected = {}
        for b in range(2):
            batch = Batch.objects.create(name=f"week {b}", kind="helpfulness", overlap=3)
            for preferences in [(1, 1, 2), (2, 2), ()]:
                comparison = Comparison.objects.create(
                    batch=batch,
                    conversation=Conversation.objects.create(batch=batch),
                    context_length=1,
                    status="ready",
                    annotation_count=len(preferences),
                )
                for user, slot in zip(users, preferences, strict=False):
                    Annotation.objects.create(
                        comparison=comparison,
                        annotator=user,
                        preferred_slot=slot,
                        strength="better",
                        left_slot=1,
                    )
                expected[comparison.pk] = (batch.pk, preferences.count(1))
    finally:
        new = migrate(latest)

    Comparison = new.get_model("annotation_app", "Comparison")
    Annotation = new.get_model("annotation_app", "Annotation")
    for comparison in Comparison.objects.filter(pk__in=expected):
        batch_id, slot1 = expected[comparison.pk]
        assert comparison.slot1_count == slot1
        batches = set(
            Annotation.objects.filter(comparison=comparison).values_list("batch_id", flat=True)
        )
        assert batches <= {batch_id}
    assert not Annotation.objects.filter(batch__isnull=True).exists()
