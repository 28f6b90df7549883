"""Bad input gets a clear 4xx naming the problem, never a 500, and changes nothing (issue 9).

Each case below was a server error or a silent change once: too large a number, a NUL
character (PostgreSQL text cannot hold one), a lone surrogate, JSON too deep or not a number,
a name too long for its column, a batch id that is not a number. Imports have their own in
test_imports.py and tests/unit/test_import_parsing.py; hub ids in test_registry.py.
"""

from __future__ import annotations

import html
import json
import uuid

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from annotation_app.forms import MAX_FLAG_REASON_CHARS, USERNAME_MAX_LENGTH
from annotation_app.models import (
    Annotation,
    Assignment,
    Batch,
    Comparison,
    Conversation,
    ModelVersion,
    TrainingRun,
    Turn,
)
from annotation_app.roles import Role
from annotation_app.services import assignment as assignment_service
from annotation_app.services import dialogues
from annotation_app.services.annotations import MAX_RATIONALE_CHARS, Judgement, submit_annotation
from tests.api_errors import error_body, error_fields
from tests.conftest import FAST_PLAN

pytestmark = pytest.mark.django_db

NUL = "\x00"
MODELS = (Batch, Conversation, Turn, Comparison, Assignment, Annotation, ModelVersion, TrainingRun)


def row_counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in (*MODELS, AccessAttempt)}


def page_text(response) -> str:
    return html.unescape(response.content.decode())


def client_of(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def lease(annotator, make_batch) -> Assignment:
    batch = make_batch(comparisons=2)
    return assignment_service.next_assignment(annotator, batch=batch)


def submit_body(lease: Assignment, **changes) -> dict:
    return {
        "assignment": lease.pk,
        "preferred": "A",
        "strength": "better",
        "idempotency_key": str(uuid.uuid4()),
        **changes,
    }


# --- API: submits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"time_spent_ms": 99_999_999_999}, "time_spent_ms"),
        ({"time_spent_ms": 2**31}, "time_spent_ms"),
        ({"rationale": f"fine{NUL}"}, "rationale"),
        ({"rationale": "lone \ud800"}, "rationale"),
        ({"idempotency_key": None}, "idempotency_key"),
    ],
    ids=[
        "time-spent-huge",
        "time-spent-int-max+1",
        "rationale-nul",
        "rationale-surrogate",
        "no-key",
    ],
)
def test_a_bad_submit_is_a_400_naming_the_field(annotator, lease, changes, field):
    body = {k: v for k, v in submit_body(lease, **changes).items() if v is not None}
    before = row_counts()
    response = client_of(annotator).post(  # json.dumps writes a lone surrogate as \\ud800
        "/api/v1/annotations/", json.dumps(body), content_type="application/json"
    )
    assert response.status_code == 400, response.content
    assert error_fields(response) == {field}
    assert row_counts() == before
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.LEASED


def test_the_largest_time_spent_the_column_holds_is_accepted(annotator, lease):
    body = submit_body(lease, time_spent_ms=2**31 - 1)
    response = client_of(annotator).post("/api/v1/annotations/", body, format="json")
    assert response.status_code == 201, response.content
    assert Annotation.objects.get().time_spent_ms == 2**31 - 1


# --- API: batches --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"assigned_annotators": [f"ann{NUL}otator"]}, "assigned_annotators"),
        ({"assigned_annotators": ["\udcff"]}, "assigned_annotators"),
        ({"assigned_groups": [f"{Role.ANNOTATOR.value}{NUL}"]}, "assigned_groups"),
        ({"name": f"na{NUL}me"}, "name"),
        ({"guidelines": f"Be kind{NUL}"}, "guidelines"),
        ({"sampling_plan": {"sides": [{"model_version": f"v{NUL}"}, {}]}}, "sampling_plan"),
        ({"sampling_plan": {"sides": [{"temperature": "1e400"}, {}]}}, "sampling_plan"),
        ({"sampling_plan": {f"ke{NUL}y": 1}}, "sampling_plan"),
        ({"overlap": 0}, "overlap"),
        ({"lease_minutes": 0}, "lease_minutes"),
        ({"max_turns": 0}, "max_turns"),
    ],
)
def test_a_bad_batch_is_a_400_naming_the_field_and_nothing_is_created(batch_admin, changes, field):
    before = row_counts()
    # A number too large for a float: JSON allows it, Python reads it as infinity.
    body = json.dumps({"name": "New batch", "kind": "helpfulness", **changes})
    body = body.replace('"1e400"', "1e400")
    response = client_of(batch_admin).post(
        "/api/v1/batches/", body, content_type="application/json"
    )
    assert response.status_code == 400, response.content
    assert error_fields(response) == {field}
    assert row_counts() == before


def test_a_json_field_sent_as_form_text_null_is_a_400(batch_admin):
    body = {"name": "Form", "kind": "helpfulness", "sampling_plan": "null"}
    response = client_of(batch_admin).post("/api/v1/batches/", body, format="multipart")
    assert response.status_code == 400
    assert error_fields(response) == {"sampling_plan"}
    assert not Batch.objects.exists()


def test_a_bad_batch_change_changes_nothing(batch_admin, make_batch, annotator):
    batch = make_batch(comparisons=1, active=False)
    url = f"/api/v1/batches/{batch.pk}/"
    for body in (
        {"assigned_annotators": [annotator.username, f"x{NUL}"]},
        {"assigned_groups": [f"{NUL}"]},
    ):
        response = client_of(batch_admin).patch(url, body, format="json")
        assert response.status_code == 400
    batch.refresh_from_db()
    assert not batch.assigned_annotators.exists() and not batch.assigned_groups.exists()


def test_the_batch_api_sets_annotator_prompts_and_turns(batch_admin, annotator):
    api = client_of(batch_admin)
    created = api.post(
        "/api/v1/batches/",
        {
            "name": "Dialogues",
            "kind": "helpfulness",
            "allow_annotator_prompts": True,
            "max_turns": 3,
            "assigned_annotators": [annotator.username],
            "assigned_groups": [Role.ANNOTATOR.value],
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    assert (created.json()["allow_annotator_prompts"], created.json()["max_turns"]) == (True, 3)
    batch = Batch.objects.get(name="Dialogues")
    assert (batch.allow_annotator_prompts, batch.max_turns) == (True, 3)
    assert list(batch.assigned_groups.all()) == [Group.objects.get(name=Role.ANNOTATOR.value)]
    changed = api.patch(f"/api/v1/batches/{batch.pk}/", {"max_turns": 5}, format="json")
    assert changed.status_code == 200 and changed.json()["max_turns"] == 5
    batch.refresh_from_db()
    assert batch.max_turns == 5


# --- API: JSON values, models, training ------------------------------------------------------


def test_json_nested_too_deeply_is_a_400(batch_admin):
    before = row_counts()
    body = '{"name": "Deep", "kind": "helpfulness", "sampling_plan": ' + "[" * 100_000
    body += "]" * 100_000 + "}"
    response = client_of(batch_admin).post(
        "/api/v1/batches/", body, content_type="application/json"
    )
    assert response.status_code == 400
    assert "nested too deeply" in error_body(response)["detail"]
    assert row_counts() == before


def test_json_that_is_not_json_is_a_400(batch_admin):
    response = client_of(batch_admin).post(
        "/api/v1/batches/", '{"name": NaN}', content_type="application/json"
    )
    assert response.status_code == 400
    assert error_body(response)["detail"].startswith("JSON parse error")


@pytest.mark.parametrize(
    "metrics",
    [{"note": f"a{NUL}b"}, {"accuracy": "1e400"}, {"deep": json.loads("[" * 70 + "]" * 70)}],
    ids=["nul", "infinity", "deep"],
)
def test_model_metrics_postgresql_cannot_store_are_a_400(ml_staff, tiny_policy_dir, metrics):
    before = row_counts()
    body = json.dumps({"path": str(tiny_policy_dir), "role": "policy", "metrics": metrics})
    body = body.replace('"1e400"', "1e400")  # read as infinity, which JSON columns refuse
    response = client_of(ml_staff).post("/api/v1/models/", body, content_type="application/json")
    assert response.status_code == 400
    assert error_fields(response) == {"metrics"}
    assert row_counts() == before


def test_a_model_path_the_file_system_cannot_hold_is_a_400(ml_staff):
    response = client_of(ml_staff).post(
        "/api/v1/models/", {"path": "/tmp/" + "x" * 300, "role": "policy"}, format="json"
    )
    assert response.status_code == 400
    assert error_fields(response) == {"path"}
    assert not ModelVersion.objects.exists()


def test_a_training_config_postgresql_cannot_store_is_a_400(ml_staff, make_batch):
    batch = make_batch(comparisons=1)
    before = row_counts()
    body = json.dumps({"kind": "helpfulness", "batches": [batch.pk], "config": {f"x{NUL}": 1}})
    response = client_of(ml_staff).post(
        "/api/v1/training-runs/", body, content_type="application/json"
    )
    assert response.status_code == 400
    assert error_fields(response) == {"config"}
    assert row_counts() == before


def test_a_user_name_longer_than_any_is_a_400_not_a_failed_sign_in(client):
    before = row_counts()
    response = client.post(
        "/api/v1/auth/token/", {"username": "x" * 300, "password": "secret"}, "application/json"
    )
    assert response.status_code == 400
    assert error_fields(response) == {"username"}
    assert row_counts() == before  # django-axes recorded no attempt


@pytest.mark.parametrize("page", ["/login/", "/admin/login/"])
def test_a_user_name_longer_than_any_is_a_form_error_on_the_sign_in_pages(client, page):
    before = row_counts()
    response = client.post(page, {"username": "x" * 300, "password": "secret"})
    assert response.status_code == 200  # the form again, not a server error
    assert response.context["form"].errors["username"] == [
        f"Ensure this value has at most {USERNAME_MAX_LENGTH} characters (it has 300)."
    ]
    assert row_counts() == before  # django-axes recorded no attempt
    assert not response.wsgi_request.user.is_authenticated


def test_a_prompt_for_a_batch_id_that_is_not_a_number_is_a_404(annotator):
    response = client_of(annotator).post("/api/v1/batches/abc/prompts/", {"prompt": "Hi"})
    assert response.status_code == 404
    assert error_body(response)["errors"] == []


def test_a_lone_surrogate_quoted_by_an_error_is_written_out(batch_admin):
    body = json.dumps({"name": "Odd", "kind": "\ud800"})  # JSON: "\\ud800"
    response = client_of(batch_admin).post(
        "/api/v1/batches/", body, content_type="application/json"
    )
    assert response.status_code == 400
    assert error_fields(response) == {"kind"}
    assert '"\\ud800" is not a valid choice.' in error_body(response)["errors"][0]["message"]
    assert not Batch.objects.exists()


# --- API: one error shape for every error -----------------------------------------------


def test_every_api_error_has_the_one_shape(annotator, lease):
    anonymous = APIClient()
    unauthenticated = anonymous.get("/api/v1/batches/")
    assert unauthenticated.status_code == 401
    assert unauthenticated["WWW-Authenticate"].startswith("Token")
    assert "credentials were not provided" in error_body(unauthenticated)["detail"]
    api = client_of(annotator)
    forbidden = api.get("/api/v1/batches/")
    assert forbidden.status_code == 403
    assert "permission" in error_body(forbidden)["detail"]
    missing = api.get("/api/v1/assignments/999999/")
    assert missing.status_code == 404
    error_body(missing)
    not_allowed = api.delete(f"/api/v1/assignments/{lease.pk}/")
    assert not_allowed.status_code == 405
    assert "DELETE" in error_body(not_allowed)["detail"]
    malformed = api.post("/api/v1/annotations/", "{oops", content_type="application/json")
    assert malformed.status_code == 400
    assert error_body(malformed)["detail"].startswith("JSON parse error")
    media = api.post("/api/v1/annotations/", "x", content_type="text/csv")
    assert media.status_code == 415
    error_body(media)
    conflict = api.post(f"/api/v1/assignments/{lease.pk}/skip/")
    again = api.post(f"/api/v1/assignments/{lease.pk}/skip/")
    assert (conflict.status_code, again.status_code) == (200, 409)
    assert "already skipped" in error_body(again)["detail"]


def test_nested_validation_errors_name_the_path_to_their_field(ml_staff, make_batch):
    make_batch(comparisons=1)
    response = client_of(ml_staff).post(
        "/api/v1/training-runs/",
        {"kind": "helpfulness", "batches": ["x", 999_999]},
        format="json",
    )
    assert response.status_code == 400
    body = error_body(response)
    assert {error["field"] for error in body["errors"]} == {"batches"}
    assert {error["code"] for error in body["errors"]} <= {"incorrect_type", "does_not_exist"}
    assert body["detail"].startswith("batches: ")


# --- web pages ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "1.5", "99999999999999999999999", "-1"])
def test_annotate_with_a_batch_that_is_not_a_number_is_a_404(client, annotator, value):
    client.force_login(annotator)
    before = row_counts()
    assert client.get(f"/annotate/?batch={value}").status_code == 404
    assert row_counts() == before


def test_a_prompt_with_a_nul_is_refused_naming_the_field(client, annotator):
    batch = Batch.objects.create(
        name="open", kind="helpfulness", status=Batch.Status.ACTIVE, allow_annotator_prompts=True
    )
    client.force_login(annotator)
    before = row_counts()
    response = client.post(f"/batches/{batch.pk}/write/", {"prompt": f"Hello{NUL}there"})
    assert response.status_code == 400
    assert "prompt: Null characters are not allowed." in response.content.decode()
    assert row_counts() == before


def test_a_flag_reason_with_a_nul_is_refused_and_the_task_stays(client, annotator, lease):
    client.force_login(annotator)
    before = row_counts()
    response = client.post(
        f"/tasks/{lease.pk}/release/", {"action": "flag", "reason": f"cut{NUL}off"}
    )
    assert response.status_code == 400
    assert "Not flagged: reason: Null characters are not allowed." in response.content.decode()
    assert row_counts() == before
    lease.refresh_from_db()
    assert (lease.status, lease.flag_reason) == (Assignment.Status.LEASED, "")
    assert Comparison.objects.get(pk=lease.comparison_id).flag_count == 0


def test_a_flag_reason_is_bounded_on_the_page_as_in_the_api(client, annotator, lease):
    client.force_login(annotator)
    page = client.get(f"/tasks/{lease.pk}/").content.decode()
    assert f'id="flag-reason" rows="3" required maxlength="{MAX_FLAG_REASON_CHARS}"' in page
    assert f'id="rationale" rows="2" maxlength="{MAX_RATIONALE_CHARS}"' in page
    before = row_counts()
    response = client.post(
        f"/tasks/{lease.pk}/release/",
        {"action": "flag", "reason": "x" * (MAX_FLAG_REASON_CHARS + 1)},
    )
    assert response.status_code == 400
    assert (
        f"Not flagged: reason: Ensure this value has at most {MAX_FLAG_REASON_CHARS} characters"
        in response.content.decode()
    )
    assert row_counts() == before
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.LEASED
    api = client_of(annotator).post(
        f"/api/v1/assignments/{lease.pk}/flag/", {"reason": "x" * (MAX_FLAG_REASON_CHARS + 1)}
    )
    assert api.status_code == 400 and error_fields(api) == {"reason"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rationale", f"because{NUL}", "Null characters are not allowed."),
        ("time_spent_ms", "99999999999", "time spent is at most"),
    ],
)
def test_a_judgement_the_database_cannot_hold_is_refused_on_its_field(
    client, annotator, lease, field, value, message
):
    client.force_login(annotator)
    before = row_counts()
    response = client.post(
        f"/tasks/{lease.pk}/submit/",
        {"rating": "A:better", field: value, "idempotency_key": str(uuid.uuid4())},
        follow=True,
    )
    assert message in response.content.decode()
    assert row_counts() == before
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.LEASED


@pytest.mark.slow  # generates two responses with the tiny policy (about a second)
def test_a_next_turn_with_a_nul_is_refused(
    client, annotator, tiny_policy, django_capture_on_commit_callbacks
):
    batch = Batch.objects.create(
        name="dialogue",
        kind="helpfulness",
        status=Batch.Status.ACTIVE,
        allow_annotator_prompts=True,
        max_turns=3,
        sampling_plan=FAST_PLAN,
    )
    with django_capture_on_commit_callbacks(execute=True):  # generation is sent on commit
        first = dialogues.write_prompt(annotator, batch, "Tell me a story.")
    submit_annotation(annotator, first.pk, Judgement("A", "better"), uuid.uuid4())
    client.force_login(annotator)
    before = row_counts()
    response = client.post(f"/tasks/{first.pk}/continue/", {"text": f"And then{NUL}?"})
    assert response.status_code == 400
    assert "text: Null characters are not allowed." in response.content.decode()
    assert row_counts() == before


# --- the admin ------------------------------------------------------------------------------


def test_a_nul_in_an_admin_filter_or_bulk_action_is_a_400_naming_the_parameter(
    client, batch_admin, make_batch
):
    """The admin passes filter values and selected rows to queries as they come (a database
    error once); RefuseNulInAdminParameters refuses them first, whatever the list."""
    make_batch(comparisons=1)
    client.force_login(batch_admin)
    refused = {
        "/admin/annotation_app/comparison/?status=%00": "'status'",
        "/admin/annotation_app/batch/?kind__exact=ok%00": "'kind__exact'",
    }
    for url, parameter in refused.items():
        response = client.get(url)
        assert response.status_code == 400
        assert f"the parameter {parameter} contains a NUL character" in page_text(response)
    before = row_counts()
    response = client.post(
        "/admin/annotation_app/comparison/",
        {"action": "retry_generation", "_selected_action": [NUL]},
    )
    assert response.status_code == 400
    assert "the parameter '_selected_action' contains a NUL" in page_text(response)
    assert row_counts() == before
    # Without a NUL the same lists answer as ever.
    assert client.get("/admin/annotation_app/comparison/?status=ready").status_code == 200
