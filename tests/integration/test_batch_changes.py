"""Changing a batch's settings: the kind is fixed once annotated, a new overlap recomputes the
comparisons' statuses at once; and a submission key reused on another assignment is refused.

Every refusal names the problem and changes nothing.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.test import Client
from django.utils import timezone

from annotation_app.errors import InvalidInput
from annotation_app.models import Annotation, Assignment, Batch, Comparison, JudgedDataReadOnly
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.assignment import next_assignment
from annotation_app.services.batches import update_batch
from tests.admin_forms import admin_post_data
from tests.counters import assert_counters_match_rows
from tests.workers import wait_for

pytestmark = pytest.mark.django_db


def judge(batch: Batch, user) -> Comparison:
    lease = next_assignment(user, batch=batch)
    submit_annotation(user, lease.pk, Judgement("A", "better"), uuid.uuid4())
    return Comparison.objects.get(pk=lease.comparison_id)


def state(batch: Batch) -> dict:
    batch.refresh_from_db()
    return {
        "batch": (batch.kind, batch.overlap, batch.name, batch.guidelines),
        "statuses": dict(batch.comparisons.values_list("pk", "status")),
        "annotations": Annotation.objects.filter(comparison__batch=batch).count(),
        "leases": sorted(Assignment.objects.values_list("pk", "status", "expires_at")),
    }


def fields_named(body: dict) -> set:
    """The fields an API error names; the body must be in the API's one error shape."""
    assert set(body) == {"detail", "errors"}, body
    assert isinstance(body["detail"], str) and body["errors"], body
    for error in body["errors"]:
        assert {"field", "message"} <= set(error), error
    return {error["field"] for error in body["errors"]}


def statuses(batch: Batch) -> list[str]:
    return list(batch.comparisons.order_by("pk").values_list("status", flat=True))


@pytest.fixture
def admin_api(batch_admin, api_client):
    api_client.force_authenticate(batch_admin)
    return api_client


# --- kind -----------------------------------------------------------------------------------


def test_the_kind_of_an_annotated_batch_cannot_change(make_batch, annotator, admin_api):
    batch = make_batch(comparisons=2)
    judge(batch, annotator)
    before = state(batch)
    url = f"/api/v1/batches/{batch.pk}/"
    for method, body in (
        (admin_api.patch, {"kind": "safety", "guidelines": "New rules."}),
        (admin_api.put, {"name": batch.name, "kind": "safety", "overlap": 1}),
    ):
        refused = method(url, body, format="json")
        assert refused.status_code == 400, refused.content
        assert fields_named(refused.json()) == {"kind"}
        # The model's own refusal (Batch.JUDGED_FIELDS), as the admin and a save give it.
        assert (
            f"batch {batch.name!r} (1 annotation): kind cannot change; judged data is read-only"
        ) in refused.json()["detail"]
        assert state(batch) == before
    # Other settings still change, and so does the kind of a batch nobody annotated yet.
    assert admin_api.patch(url, {"guidelines": "New rules."}, format="json").status_code == 200
    fresh = make_batch(comparisons=1)
    changed = admin_api.patch(f"/api/v1/batches/{fresh.pk}/", {"kind": "safety"}, format="json")
    assert changed.status_code == 200 and changed.json()["kind"] == "safety"


def test_the_models_keep_the_kind_of_an_annotated_batch(make_batch, annotator):
    batch = make_batch(comparisons=1)
    judge(batch, annotator)
    batch.kind = Batch.Kind.SAFETY
    with pytest.raises(JudgedDataReadOnly, match=r"batch .* \(1 annotation\): kind cannot change"):
        batch.save()
    with pytest.raises(JudgedDataReadOnly, match="kind cannot change"):
        Batch.objects.filter(pk=batch.pk).update(kind=Batch.Kind.SAFETY)
    with pytest.raises(InvalidInput, match=r"\(1 annotation\): kind cannot change") as refused:
        update_batch(batch, {"kind": Batch.Kind.SAFETY})
    assert refused.value.field == "kind"
    assert Batch.objects.get(pk=batch.pk).kind == Batch.Kind.HELPFULNESS


def test_the_admin_form_names_a_changed_kind(make_batch, annotator, batch_admin):
    batch = make_batch(comparisons=1)
    judge(batch, annotator)
    client = Client()
    client.force_login(batch_admin)
    url = f"/admin/annotation_app/batch/{batch.pk}/change/"
    data = admin_post_data(client.get(url))
    before = state(batch)
    refused = client.post(url, {**data, "kind": "safety", "guidelines": "Changed too."})
    assert refused.status_code == 200
    errors = refused.context["adminform"].form.errors
    assert "kind cannot change; judged data is read-only" in errors["kind"][0]
    assert state(batch) == before


# --- overlap --------------------------------------------------------------------------------


def test_a_new_overlap_recomputes_statuses_in_the_api(make_batch, annotator, make_user, admin_api):
    batch = make_batch(comparisons=3, overlap=1)
    judge(batch, annotator)
    judge(batch, annotator)
    assert sorted(statuses(batch)) == ["complete", "complete", "ready"]
    url = f"/api/v1/batches/{batch.pk}/"

    raised = admin_api.patch(url, {"overlap": 2}, format="json")
    assert raised.status_code == 200 and raised.json()["overlap"] == 2
    assert statuses(batch) == ["ready"] * 3  # each wants a second annotation now
    judge(batch, make_user())  # handed out again: a second annotation completes one
    assert sorted(statuses(batch)) == ["complete", "ready", "ready"]

    lowered = admin_api.patch(url, {"overlap": 1}, format="json")
    assert lowered.status_code == 200
    assert sorted(statuses(batch)) == ["complete", "complete", "ready"]
    assert Annotation.objects.filter(comparison__batch=batch).count() == 3


def test_an_overlap_below_the_annotations_keeps_them_all(make_batch, make_user):
    batch = make_batch(comparisons=1, overlap=3)
    for _ in range(2):
        judge(batch, make_user())
    update_batch(batch, {"overlap": 1})
    comparison = batch.comparisons.get()
    assert (comparison.status, comparison.annotation_count) == ("complete", 2)
    assert Annotation.objects.filter(comparison=comparison).count() == 2


def test_an_overlap_below_open_leases_is_refused_until_they_end(
    make_batch, make_user, admin_api, batch_admin
):
    batch = make_batch(comparisons=1, overlap=3)
    judge(batch, make_user())
    lease = next_assignment(make_user(), batch=batch)  # 1 annotation + 1 open lease
    url = f"/api/v1/batches/{batch.pk}/"
    before = state(batch)
    refused = admin_api.patch(url, {"overlap": 1}, format="json")
    assert refused.status_code == 400
    assert fields_named(refused.json()) == {"overlap"}
    assert (
        f"overlap 1 is below what comparison {lease.comparison_id} already holds: "
        "1 annotations and 1 open leases"
    ) in refused.json()["detail"]
    assert "lower it to 2 or more now" in refused.json()["detail"]
    assert state(batch) == before

    # The admin form says the same, on the field.
    client = Client()
    client.force_login(batch_admin)
    admin_url = f"/admin/annotation_app/batch/{batch.pk}/change/"
    page = client.post(admin_url, {**admin_post_data(client.get(admin_url)), "overlap": "1"})
    assert "lower it to 2 or more now" in page.context["adminform"].form.errors["overlap"][0]
    assert state(batch) == before

    assert admin_api.patch(url, {"overlap": 2}, format="json").status_code == 200
    Assignment.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(1))
    assert admin_api.patch(url, {"overlap": 1}, format="json").status_code == 200
    assert statuses(batch) == ["complete"]
    # The lease past its expiry gave its slot up: submitted late, it would go over overlap 1.
    assert Assignment.objects.get(pk=lease.pk).status == Assignment.Status.EXPIRED
    assert_counters_match_rows(batch.comparisons.all())


def test_an_overlap_under_one_is_refused(make_batch, admin_api):
    batch = make_batch(comparisons=1)
    before = state(batch)
    refused = admin_api.patch(f"/api/v1/batches/{batch.pk}/", {"overlap": 0}, format="json")
    assert refused.status_code == 400 and fields_named(refused.json()) == {"overlap"}
    assert state(batch) == before


def test_the_admin_recomputes_statuses_when_it_saves_an_overlap(make_batch, annotator, batch_admin):
    batch = make_batch(comparisons=2, overlap=1)
    judge(batch, annotator)
    client = Client()
    client.force_login(batch_admin)
    url = f"/admin/annotation_app/batch/{batch.pk}/change/"
    saved = client.post(url, {**admin_post_data(client.get(url)), "overlap": "2"})
    assert saved.status_code == 302
    assert Batch.objects.get(pk=batch.pk).overlap == 2
    assert statuses(batch) == ["ready", "ready"]


@pytest.mark.django_db(transaction=True)
def test_a_submit_that_waited_on_an_overlap_change_counts_against_the_new_one(
    make_batch, annotator, monkeypatch
):
    """update_batch holds every comparison's lock; a submit that read the batch before then
    waits for that lock and must read the overlap again once it has it."""
    from annotation_app.services import batches

    batch = make_batch(comparisons=1, overlap=1)
    lease = next_assignment(annotator, batch=batch)
    paused, resume = threading.Event(), threading.Event()
    recompute = batches.recompute_statuses

    def pausing_recompute(locked):
        paused.set()
        resume.wait(30)
        recompute(locked)

    monkeypatch.setattr(batches, "recompute_statuses", pausing_recompute)

    def in_thread(work):
        def run():
            try:
                work()
            finally:
                connections.close_all()

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    changing = in_thread(lambda: update_batch(batch, {"overlap": 2}))
    assert paused.wait(30)
    submitting = in_thread(
        lambda: submit_annotation(annotator, lease.pk, Judgement("A", "better"), uuid.uuid4())
    )

    def submit_waits_for_a_lock() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return cursor.fetchone()[0] > 0

    wait_for(submit_waits_for_a_lock, timeout=30, message="the submit never waited")
    resume.set()
    changing.join(30)
    submitting.join(30)
    comparison = batch.comparisons.get()
    assert (comparison.annotation_count, comparison.status) == (1, "ready")  # 1 of 2


# --- idempotency keys -----------------------------------------------------------------------


def test_a_key_reused_on_another_assignment_is_a_conflict(make_batch, annotator, api_client):
    batch = make_batch(comparisons=2)
    api_client.force_authenticate(annotator)
    key = str(uuid.uuid4())
    first = api_client.post("/api/v1/tasks/next/", {}, format="json").json()["assignment"]
    body = {"preferred": "A", "strength": "better", "idempotency_key": key}
    created = api_client.post("/api/v1/annotations/", {**body, "assignment": first}, format="json")
    assert created.status_code == 201
    retried = api_client.post("/api/v1/annotations/", {**body, "assignment": first}, format="json")
    assert retried.status_code == 200 and retried.json()["id"] == created.json()["id"]

    second = api_client.post("/api/v1/tasks/next/", {}, format="json").json()["assignment"]
    before = state(batch)
    reused = {**body, "strength": "slightly_better", "assignment": second}
    refused = api_client.post("/api/v1/annotations/", reused, format="json")
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"idempotency_key {key} was already used to submit assignment {first}, not {second}: "
        "use a new key for each judgement"
    )
    assert state(batch) == before
    assert Assignment.objects.get(pk=second).status == Assignment.Status.LEASED
