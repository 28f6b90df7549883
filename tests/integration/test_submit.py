"""Submitting annotations: side mapping, validation, idempotency (also under a race)."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection

from annotation_app.errors import Conflict, InvalidInput, NotFound
from annotation_app.models import Annotation, Assignment, Comparison
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.assignment import next_assignment


@pytest.mark.django_db
@pytest.mark.parametrize("left_slot", [1, 2])
def test_display_sides_map_to_the_stored_slots(make_batch, annotator, left_slot):
    make_batch("safety", comparisons=1)
    lease = next_assignment(annotator)
    Assignment.objects.filter(pk=lease.pk).update(left_slot=left_slot)
    judgement = Judgement(
        preferred_side="B",
        strength="slightly_better",
        a_safe=True,
        b_safe=False,
        rationale="  B is kinder.  ",
        time_spent_ms=4200,
    )
    annotation, created = submit_annotation(annotator, lease.pk, judgement, uuid.uuid4())
    right_slot = 3 - left_slot
    assert created
    assert annotation.preferred_slot == right_slot
    assert annotation.left_slot == left_slot
    assert annotation.is_safe(left_slot) is True
    assert annotation.is_safe(right_slot) is False
    assert annotation.safety_bin == "one_safe"
    assert annotation.rationale == "B is kinder."
    assert annotation.time_spent_ms == 4200
    assert Assignment.objects.get(pk=lease.pk).status == Assignment.Status.SUBMITTED


@pytest.mark.django_db
def test_retry_with_the_same_key_returns_the_first_annotation(make_batch, annotator):
    make_batch(comparisons=2)
    lease = next_assignment(annotator)
    key = uuid.uuid4()
    judgement = Judgement(preferred_side="A", strength="better")
    first, created = submit_annotation(annotator, lease.pk, judgement, key)
    again, created_again = submit_annotation(annotator, lease.pk, judgement, key)
    assert created and not created_again
    assert again.pk == first.pk
    assert Annotation.objects.count() == 1
    assert Comparison.objects.get(pk=lease.comparison_id).annotation_count == 1
    with pytest.raises(Conflict, match="already submitted"):
        submit_annotation(annotator, lease.pk, judgement, uuid.uuid4())


@pytest.mark.django_db
def test_a_key_cannot_be_replayed_by_someone_else(make_batch, make_user):
    make_batch(comparisons=2)
    first, second = make_user(), make_user()
    key = uuid.uuid4()
    submit_annotation(first, next_assignment(first).pk, Judgement("A", "better"), key)
    with pytest.raises(Conflict, match="someone else"):
        submit_annotation(second, next_assignment(second).pk, Judgement("A", "better"), key)


@pytest.mark.django_db
def test_someone_elses_lease_does_not_exist_for_you(make_batch, make_user):
    make_batch(comparisons=1)
    owner, intruder = make_user(), make_user()
    lease = next_assignment(owner)
    with pytest.raises(NotFound):
        submit_annotation(intruder, lease.pk, Judgement("A", "better"), uuid.uuid4())


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("judgement", "field"),
    [
        (Judgement("C", "better", True, True), "preferred"),
        (Judgement("A", "much_better", True, True), "strength"),
        (Judgement("A", "better", None, True), "a_safe"),
        (Judgement("A", "better", True, None), "b_safe"),
        (Judgement("A", "better", True, True, rationale="x" * 10_001), "rationale"),
        (Judgement("A", "better", True, True, time_spent_ms=-1), "time_spent_ms"),
    ],
)
def test_bad_judgements_name_the_field_and_change_nothing(make_batch, annotator, judgement, field):
    make_batch("safety", comparisons=1)
    lease = next_assignment(annotator)
    with pytest.raises(InvalidInput) as error:
        submit_annotation(annotator, lease.pk, judgement, uuid.uuid4())
    assert error.value.field == field
    assert Annotation.objects.count() == 0
    assert Assignment.objects.get(pk=lease.pk).status == Assignment.Status.LEASED


@pytest.mark.django_db
def test_safety_labels_are_optional_in_helpfulness_batches(make_batch, annotator):
    make_batch("helpfulness", comparisons=1)
    lease = next_assignment(annotator)
    annotation, _ = submit_annotation(annotator, lease.pk, Judgement("A", "better"), uuid.uuid4())
    assert annotation.slot1_safe is None and annotation.safety_bin == ""


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_of_one_submit_create_one_annotation(make_batch, annotator):
    make_batch(comparisons=1)
    lease = next_assignment(annotator)
    key = uuid.uuid4()
    results, errors = [], []
    barrier = threading.Barrier(8)

    def submit():
        try:
            barrier.wait()
            results.append(submit_annotation(annotator, lease.pk, Judgement("A", "better"), key))
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({annotation.pk for annotation, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert Annotation.objects.count() == 1
    assert Comparison.objects.get().annotation_count == 1
