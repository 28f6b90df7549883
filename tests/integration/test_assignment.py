"""The assignment rules, on PostgreSQL: who gets which comparison, and how many times."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from annotation_app.errors import Conflict
from annotation_app.models import Assignment, Batch, Comparison
from annotation_app.roles import Role
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.assignment import extend_lease, next_assignment, release_assignment
from annotation_app.services.batches import close_batch
from tests.counters import assert_counters_match_rows
from tests.sqlite import run_on_sqlite

pytestmark = pytest.mark.django_db

JUDGEMENT = Judgement(preferred_side="A", strength="better")


def annotate(user, assignment, now=None):
    return submit_annotation(user, assignment.pk, JUDGEMENT, uuid.uuid4(), now=now)[0]


def test_an_annotator_never_gets_a_comparison_twice(make_batch, annotator):
    make_batch(comparisons=3, overlap=3)
    seen = []
    while (assignment := next_assignment(annotator)) is not None:
        seen.append(assignment.comparison_id)
        annotate(annotator, assignment)
    assert len(seen) == 3
    assert len(set(seen)) == 3


def test_a_live_lease_is_handed_back_instead_of_a_new_one(make_batch, annotator):
    make_batch(comparisons=3)
    first = next_assignment(annotator)
    assert next_assignment(annotator).pk == first.pk
    assert Assignment.objects.count() == 1


def test_overlap_counts_annotations_and_live_leases(make_batch, make_user):
    make_batch(comparisons=1, overlap=2)
    first, second, third = make_user(), make_user(), make_user()
    lease_one = next_assignment(first)
    lease_two = next_assignment(second)
    assert lease_one.comparison_id == lease_two.comparison_id
    assert next_assignment(third) is None  # two live leases fill the overlap
    annotate(first, lease_one)
    assert next_assignment(third) is None  # one annotation + one lease still fill it
    annotate(second, lease_two)
    comparison = Comparison.objects.get()
    assert comparison.annotation_count == 2
    assert comparison.status == Comparison.Status.COMPLETE
    assert next_assignment(third) is None


def test_expired_leases_return_their_slot_to_the_pool(make_batch, make_user):
    batch = make_batch(comparisons=1, overlap=1)
    slow, other = make_user(), make_user()
    lease = next_assignment(slow)
    assert next_assignment(other) is None
    later = timezone.now() + timedelta(minutes=batch.lease_minutes + 1)
    taken_over = next_assignment(other, now=later)
    assert taken_over is not None and taken_over.comparison_id == lease.comparison_id
    # The slow annotator's late submit finds the slot taken: refused, nothing recorded.
    with pytest.raises(Conflict, match="slot went to another annotator"):
        annotate(slow, lease, now=later)
    annotate(other, taken_over, now=later)
    assert Comparison.objects.get().annotation_count == 1


def test_a_late_submit_is_kept_while_its_slot_is_free(make_batch, annotator):
    batch = make_batch(comparisons=1, overlap=1)
    lease = next_assignment(annotator)
    later = timezone.now() + timedelta(minutes=batch.lease_minutes + 5)
    annotation = annotate(annotator, lease, now=later)
    assert annotation.comparison_id == lease.comparison_id


def test_heartbeat_extends_the_lease(make_batch, annotator):
    batch = make_batch(comparisons=1)
    lease = next_assignment(annotator)
    later = lease.expires_at - timedelta(minutes=1)
    extended = extend_lease(annotator, lease.pk, now=later)
    assert extended.expires_at == later + timedelta(minutes=batch.lease_minutes)


def test_skipped_and_flagged_comparisons_are_not_shown_again(make_batch, annotator, make_user):
    make_batch(comparisons=2, overlap=1)
    first = next_assignment(annotator)
    release_assignment(annotator, first.pk)
    second = next_assignment(annotator)
    assert second.comparison_id != first.comparison_id
    release_assignment(annotator, second.pk, flag_reason="truncated response")
    assert next_assignment(annotator) is None
    assert Comparison.objects.get(pk=second.comparison_id).flag_count == 1
    # Their slots went back to the pool for others.
    other = make_user()
    taken = set()
    while (lease := next_assignment(other)) is not None:
        taken.add(lease.comparison_id)
        annotate(other, lease)
    assert taken == {first.comparison_id, second.comparison_id}


def test_restricted_batches_reach_only_named_annotators_or_groups(make_batch, make_user):
    batch = make_batch(comparisons=2)
    named, in_group, outsider = make_user(), make_user(), make_user()
    reviewers = Group.objects.create(name="reviewers")
    in_group.groups.add(reviewers)
    batch.assigned_annotators.add(named)
    batch.assigned_groups.add(reviewers)
    assert next_assignment(outsider) is None
    assert next_assignment(named).comparison.batch_id == batch.pk
    assert next_assignment(in_group).comparison.batch_id == batch.pk


def test_only_active_batches_hand_out_work(make_batch, annotator):
    draft = make_batch(comparisons=2, active=False)
    assert next_assignment(annotator) is None
    active = make_batch(comparisons=1)
    lease = next_assignment(annotator)
    assert lease.comparison.batch_id == active.pk
    close_batch(active)
    assert next_assignment(annotator) is None
    with pytest.raises(Conflict, match="closed"):
        annotate(annotator, lease)
    assert draft.status == Batch.Status.DRAFT


def test_comparisons_waiting_for_generation_are_not_assignable(make_batch, annotator):
    batch = make_batch(comparisons=1)
    Comparison.objects.filter(batch=batch).update(status=Comparison.Status.WAITING)
    assert next_assignment(annotator) is None


def test_started_comparisons_are_finished_first(make_batch, make_user):
    make_batch(comparisons=3, overlap=2)
    first, second = make_user(), make_user()
    lease = next_assignment(first)
    annotate(first, lease)
    assert next_assignment(second).comparison_id == lease.comparison_id


def test_next_assignment_can_be_limited_to_one_batch(make_batch, annotator):
    make_batch(comparisons=2)
    wanted = make_batch(comparisons=2)
    assert next_assignment(annotator, batch=wanted).comparison.batch_id == wanted.pk


def test_role_without_annotate_permission_is_refused_by_the_api(make_batch, make_user, api_client):
    make_batch(comparisons=1)
    api_client.force_authenticate(make_user(Role.ML_STAFF))
    assert api_client.post("/api/v1/tasks/next/").status_code == 403


def test_many_comparisons_full_of_live_leases_do_not_hide_free_ones(make_batch, make_user):
    # Found by bench/annotation_loop.py: once more than a handful of comparisons at the head of
    # the queue were held by live leases, next-task answered "nothing left" with work open.
    make_batch(comparisons=60, overlap=1)
    holders = [make_user() for _ in range(55)]
    for holder in holders:
        assert next_assignment(holder) is not None
    late = make_user()
    lease = next_assignment(late)
    assert lease is not None
    held = set(Assignment.objects.exclude(pk=lease.pk).values_list("comparison_id", flat=True))
    assert lease.comparison_id not in held


def test_every_lease_change_keeps_the_counters_equal_to_a_recount(make_batch, make_user):
    """The counters are kept by increments, not recounts: after each kind of change they
    still equal what the rows say."""
    make_batch(comparisons=1, overlap=3)
    comparison = Comparison.objects.get()
    users = [make_user() for _ in range(5)]
    start = timezone.now()
    later = start + timedelta(minutes=1)

    leases = [
        next_assignment(user, now=start + timedelta(seconds=i)) for i, user in enumerate(users[:3])
    ]
    assert_counters_match_rows([comparison])
    assert comparison.leased_count == 3
    assert comparison.earliest_lease_expiry == leases[0].expires_at

    submit_annotation(users[1], leases[1].pk, Judgement("A", "better"), uuid.uuid4(), now=later)
    assert_counters_match_rows([comparison])  # a lease not the earliest finished
    release_assignment(users[0], leases[0].pk, now=later)
    assert_counters_match_rows([comparison])  # the earliest finished: the next one's
    assert comparison.earliest_lease_expiry == leases[2].expires_at
    extend_lease(users[2], leases[2].pk, now=later)
    assert_counters_match_rows([comparison])
    fourth = next_assignment(users[3], now=later + timedelta(minutes=5))
    assert_counters_match_rows([comparison])
    assert comparison.annotation_count + comparison.leased_count == 3  # full

    # The earliest lease expires: another annotator is given its slot.
    expired = Assignment.objects.get(pk=leases[2].pk).expires_at + timedelta(seconds=1)
    fifth = next_assignment(users[4], now=expired)
    assert fifth.comparison_id == comparison.pk
    assert Assignment.objects.get(pk=leases[2].pk).status == Assignment.Status.EXPIRED
    assert_counters_match_rows([comparison])

    release_assignment(users[4], fifth.pk, flag_reason="cut off", now=expired)
    assert_counters_match_rows([comparison])
    submit_annotation(users[3], fourth.pk, Judgement("B", "better"), uuid.uuid4(), now=expired)
    assert_counters_match_rows([comparison])
    assert comparison.leased_count == 0 and comparison.earliest_lease_expiry is None
    assert (comparison.annotation_count, comparison.status) == (2, Comparison.Status.READY)


SQLITE_LEASES = """
import uuid
from datetime import timedelta

import django

django.setup()
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

call_command("migrate", verbosity=0)
from annotation_app.models import Batch, Comparison, Conversation, Response, Turn
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.assignment import next_assignment, release_assignment
from tests.counters import assert_counters_match_rows

batch = Batch.objects.create(name="demo", kind="helpfulness", overlap=3, status="active")
conversation = Conversation.objects.create(batch=batch)
Turn.objects.create(conversation=conversation, index=0, role="user", content="Hello?")
comparison = Comparison.objects.create(
    batch=batch, conversation=conversation, context_length=1, status="ready"
)
for slot in (1, 2):
    Response.objects.create(comparison=comparison, slot=slot, text=f"Answer {slot}")
users = [get_user_model().objects.create(username=f"rater{i}") for i in range(3)]
now = timezone.now()
leases = [next_assignment(user, now=now + timedelta(seconds=i)) for i, user in enumerate(users)]
release_assignment(users[0], leases[0].pk, now=now)  # the earliest expiry finishes
assert_counters_match_rows([comparison])
later = now + timedelta(seconds=10)
submit_annotation(users[1], leases[1].pk, Judgement("A", "better"), uuid.uuid4(), now=later)
assert_counters_match_rows([comparison])
assert comparison.earliest_lease_expiry == leases[2].expires_at
print("counters kept on SQLite")
"""


def test_the_counters_are_kept_on_sqlite_the_demos_database(tmp_path):
    """The hot counter update is written in SQL: on SQLite too, datetimes compare as stored."""
    assert "counters kept on SQLite" in run_on_sqlite(SQLITE_LEASES, tmp_path)
