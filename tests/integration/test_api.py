"""The REST API end to end: a batch admin sets a batch up, an annotator works through it.

Also the OpenAPI schema (served, valid, generated without warnings) and its Swagger UI page,
which must load its assets from this server, not from a CDN.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

from annotation_app.models import Annotation, Assignment, Batch, Comparison
from annotation_app.roles import Role
from annotation_app.services.assignment import settle_comparison
from tests.api_errors import error_fields
from tests.conftest import comparison_lines

pytestmark = pytest.mark.django_db

NEXT = "/api/v1/tasks/next/"
ANNOTATIONS = "/api/v1/annotations/"


def logged_in(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def admin_api(batch_admin) -> APIClient:
    return logged_in(batch_admin)


@pytest.fixture
def annotator_api(annotator) -> APIClient:
    return logged_in(annotator)


def next_task(client: APIClient, **data):
    return client.post(NEXT, data, format="json")


def submit(client: APIClient, assignment: int, key: uuid.UUID | str | None = None, **fields):
    body = {
        "assignment": assignment,
        "preferred": "A",
        "strength": "better",
        "idempotency_key": str(key or uuid.uuid4()),
        **fields,
    }
    return client.post(ANNOTATIONS, {k: v for k, v in body.items() if v is not None}, "json")


def side_of_slot(assignment_id: int, slot: int) -> str:
    """The display side ("A" left, "B" right) on which the lease shows response ``slot``."""
    return "A" if Assignment.objects.get(pk=assignment_id).left_slot == slot else "B"


def upload(count: int, *, prefix: str = "Question", name: str = "batch.jsonl"):
    return SimpleUploadedFile(name, comparison_lines(count, prefix=prefix), "application/jsonl")


def set_up_batch(admin_api: APIClient, *, annotators=(), count=3, **fields) -> int:
    """Create, import into and activate a batch through the API; returns its id."""
    created = admin_api.post(
        "/api/v1/batches/",
        {
            "name": fields.pop("name", f"API batch {uuid.uuid4().hex[:8]}"),
            "kind": fields.pop("kind", "helpfulness"),
            "assigned_annotators": [user.username for user in annotators],
            **fields,
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    batch_id = created.json()["id"]
    imported = admin_api.post(
        f"/api/v1/batches/{batch_id}/import/", {"file": upload(count)}, format="multipart"
    )
    assert imported.status_code == 201, imported.content
    activated = admin_api.post(f"/api/v1/batches/{batch_id}/activate/")
    assert activated.status_code == 200, activated.content
    return batch_id


# --- setting a batch up ----------------------------------------------------------------------


def test_batch_admin_creates_imports_and_activates_a_batch(
    admin_api, batch_admin, annotator, make_user
):
    created = admin_api.post(
        "/api/v1/batches/",
        {
            "name": "Week 12 helpfulness",
            "kind": "helpfulness",
            "guidelines": "Prefer the answer you would rather receive.",
            "overlap": 1,
            "lease_minutes": 20,
            "assigned_annotators": [annotator.username],
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "draft"
    assert body["assigned_annotators"] == [annotator.username]
    assert body["comparison_count"] == 0
    batch = Batch.objects.get(pk=body["id"])
    assert batch.created_by == batch_admin
    assert list(batch.assigned_annotators.all()) == [annotator]

    imported = admin_api.post(
        f"/api/v1/batches/{batch.pk}/import/", {"file": upload(3)}, format="multipart"
    )
    assert imported.status_code == 201, imported.content
    assert imported.json() == {
        "format": "canonical",
        "records": 3,
        "comparisons": 3,
        "waiting_for_generation": 0,
    }
    assert batch.comparisons.filter(status=Comparison.Status.READY).count() == 3
    assert admin_api.get(f"/api/v1/batches/{batch.pk}/").json()["comparison_count"] == 3

    activated = admin_api.post(f"/api/v1/batches/{batch.pk}/activate/")
    assert activated.status_code == 200
    assert activated.json()["status"] == "active"
    assert activated.json()["activated_at"] is not None
    assert admin_api.post(f"/api/v1/batches/{batch.pk}/activate/").status_code == 409

    # Assigned to one annotator: another one gets nothing from it.
    assert next_task(logged_in(make_user(Role.ANNOTATOR))).status_code == 204
    assert next_task(logged_in(annotator)).json()["batch"]["id"] == batch.pk


def test_batch_create_names_a_bad_field(admin_api):
    response = admin_api.post(
        "/api/v1/batches/",
        {"name": "Bad", "kind": "helpfulness", "assigned_annotators": ["no-such-user"]},
        format="json",
    )
    assert response.status_code == 400
    assert error_fields(response) == {"assigned_annotators"}
    bad_kind = admin_api.post("/api/v1/batches/", {"name": "Bad", "kind": "fun"}, format="json")
    assert bad_kind.status_code == 400
    assert error_fields(bad_kind) == {"kind"}
    assert not Batch.objects.exists()


def test_a_bad_import_names_line_and_field_and_keeps_nothing(admin_api):
    batch_id = admin_api.post(
        "/api/v1/batches/", {"name": "Draft", "kind": "helpfulness"}, format="json"
    ).json()["id"]
    good, _ = comparison_lines(2).decode().splitlines()
    bad = json.dumps({"conversation": [{"role": "user", "content": "Hi?"}], "responses": []})
    file = SimpleUploadedFile("broken.jsonl", f"{good}\n{bad}\n".encode())
    response = admin_api.post(
        f"/api/v1/batches/{batch_id}/import/", {"file": file}, format="multipart"
    )
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors == [
        {
            "file": "broken.jsonl",
            "line": 2,
            "field": "responses",
            "message": errors[0]["message"],
        }
    ]
    assert not Comparison.objects.exists()
    assert admin_api.post(f"/api/v1/batches/{batch_id}/activate/").status_code == 409


# --- the annotator's loop ----------------------------------------------------------------------


def test_next_task_gives_context_and_two_responses_then_204(admin_api, annotator_api, annotator):
    batch_id = set_up_batch(
        admin_api, annotators=[annotator], count=2, lease_minutes=45, guidelines="Be fair."
    )
    before = timezone.now()
    response = next_task(annotator_api)
    assert response.status_code == 200
    task = response.json()
    assert {
        "assignment",
        "batch",
        "context",
        "responses",
        "safety_labels_required",
        "status",
        "expires_at",
    } <= set(task)
    assert not [key for key in task if "model" in key or "slot" in key]
    assert task["batch"] == {
        "id": batch_id,
        "name": Batch.objects.get(pk=batch_id).name,
        "kind": "helpfulness",
        "guidelines": "Be fair.",
    }
    assert task["status"] == "leased"
    assert task["safety_labels_required"] is False
    assignment = Assignment.objects.get(pk=task["assignment"])
    index = re.fullmatch(r"Question (\d+)\?", task["context"][0]["content"]).group(1)
    assert task["context"] == [{"role": "user", "content": f"Question {index}?"}]
    texts = {r.slot: r.text for r in assignment.comparison.responses.all()}
    assert task["responses"] == {
        "A": texts[assignment.left_slot],
        "B": texts[assignment.right_slot],
    }
    assert set(task["responses"].values()) == {
        f"First answer to question {index}.",
        f"Second answer to question {index}.",
    }
    expires = parse_datetime(task["expires_at"])
    assert before + timedelta(minutes=45) <= expires <= timezone.now() + timedelta(minutes=45)

    # Asking again returns the live lease instead of taking a second slot.
    assert next_task(annotator_api).json()["assignment"] == task["assignment"]
    assert Assignment.objects.count() == 1

    assert submit(annotator_api, task["assignment"]).status_code == 201
    second = next_task(annotator_api).json()
    assert second["assignment"] != task["assignment"]
    assert submit(annotator_api, second["assignment"]).status_code == 201

    done = next_task(annotator_api)
    assert done.status_code == 204
    assert done.content == b""


def test_submit_then_retry_with_the_same_key(admin_api, annotator_api, annotator, ml_staff):
    batch_id = set_up_batch(admin_api, annotators=[annotator], count=2)
    assignment_id = next_task(annotator_api).json()["assignment"]
    key = uuid.uuid4()

    first = submit(
        annotator_api,
        assignment_id,
        key,
        preferred="B",
        strength="slightly_better",
        rationale="  Because B answers the question.  ",
        time_spent_ms=1500,
    )
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["assignment"] == assignment_id
    assert body["preferred"] == "B"
    assert body["strength"] == "slightly_better"
    assert body["rationale"] == "Because B answers the question."
    assert body["time_spent_ms"] == 1500
    assert body["idempotency_key"] == str(key)
    assert body["a_safe"] is None and body["safety_bin"] == ""
    lease = Assignment.objects.get(pk=assignment_id)
    stored = Annotation.objects.get()
    assert stored.preferred_slot == lease.right_slot
    assert lease.status == Assignment.Status.SUBMITTED
    comparison = Comparison.objects.get(pk=lease.comparison_id)
    assert comparison.annotation_count == 1
    assert comparison.status == Comparison.Status.COMPLETE

    # A retry (even one whose body changed) returns the first annotation.
    retry = submit(annotator_api, assignment_id, key, preferred="A", strength="better")
    assert retry.status_code == 200
    assert retry.json()["id"] == body["id"]
    assert retry.json()["preferred"] == "B"
    assert Annotation.objects.count() == 1

    other_key = submit(annotator_api, assignment_id, uuid.uuid4())
    assert other_key.status_code == 409
    assert "already submitted" in other_key.json()["detail"]
    assert Annotation.objects.count() == 1
    assert Comparison.objects.get(pk=comparison.pk).annotation_count == 1

    listing = annotator_api.get(ANNOTATIONS).json()
    assert [row["id"] for row in listing["results"]] == [body["id"]]

    export = logged_in(ml_staff).get(f"/api/v1/export/?batch={batch_id}")
    assert export.status_code == 200
    assert export["Content-Type"].startswith("application/jsonl")
    lines = [json.loads(line) for line in export.getvalue().decode().splitlines()]
    assert len(lines) == 1
    assert lines[0]["comparison_id"] == comparison.pk


@pytest.fixture
def safety_task(make_batch, annotator_api):
    make_batch("safety", comparisons=1)
    return next_task(annotator_api).json()


VALID_SAFETY = {"preferred": "A", "strength": "better", "a_safe": True, "b_safe": False}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"a_safe": None}, "a_safe"),
        ({"b_safe": None}, "b_safe"),
        ({"a_safe": None, "b_safe": None}, "a_safe,b_safe"),  # both are named
        ({"strength": "much_much_better"}, "strength"),
        ({"strength": None}, "strength"),
        ({"preferred": "C"}, "preferred"),
        ({"time_spent_ms": -5}, "time_spent_ms"),
        ({"rationale": "x" * 10_001}, "rationale"),
        ({"idempotency_key": "not-a-uuid"}, "idempotency_key"),
    ],
    ids=lambda value: value if isinstance(value, str) else ",".join(value),
)
def test_invalid_submits_name_the_field(annotator_api, safety_task, change, field):
    assert safety_task["safety_labels_required"] is True
    body = {
        "assignment": safety_task["assignment"],
        "idempotency_key": str(uuid.uuid4()),
        **VALID_SAFETY,
        **change,
    }
    response = annotator_api.post(
        ANNOTATIONS, {k: v for k, v in body.items() if v is not None}, format="json"
    )
    assert response.status_code == 400, response.content
    assert error_fields(response) == set(field.split(","))
    assert not Annotation.objects.exists()
    assert Assignment.objects.get(pk=safety_task["assignment"]).status == Assignment.Status.LEASED


def test_a_valid_safety_submit_records_the_bin(annotator_api, safety_task):
    response = submit(annotator_api, safety_task["assignment"], **VALID_SAFETY)
    assert response.status_code == 201
    assert response.json()["a_safe"] is True
    assert response.json()["b_safe"] is False
    assert response.json()["safety_bin"] == "one_safe"


def test_skip_and_flag_are_never_handed_back(make_batch, make_user, annotator_api, admin_api):
    batch = make_batch(comparisons=3)
    skipped = next_task(annotator_api).json()
    response = annotator_api.post(f"/api/v1/assignments/{skipped['assignment']}/skip/")
    assert response.status_code == 200
    assert response.json()["status"] == "skipped"
    assert (
        annotator_api.post(f"/api/v1/assignments/{skipped['assignment']}/skip/").status_code == 409
    )
    heartbeat = annotator_api.post(f"/api/v1/assignments/{skipped['assignment']}/heartbeat/")
    assert heartbeat.status_code == 409

    flagged = next_task(annotator_api).json()
    assert flagged["assignment"] != skipped["assignment"]
    no_reason = annotator_api.post(
        f"/api/v1/assignments/{flagged['assignment']}/flag/", {}, format="json"
    )
    assert no_reason.status_code == 400
    assert error_fields(no_reason) == {"reason"}
    response = annotator_api.post(
        f"/api/v1/assignments/{flagged['assignment']}/flag/",
        {"reason": "Response B is cut off."},
        format="json",
    )
    assert response.status_code == 200
    assert response.json()["status"] == "flagged"
    lease = Assignment.objects.get(pk=flagged["assignment"])
    assert lease.flag_reason == "Response B is cut off."
    assert Comparison.objects.get(pk=lease.comparison_id).flag_count == 1
    skipped_comparison = Assignment.objects.get(pk=skipped["assignment"]).comparison_id
    assert Comparison.objects.get(pk=skipped_comparison).flag_count == 0

    last = next_task(annotator_api).json()
    assert submit(annotator_api, last["assignment"]).status_code == 201
    # The skipped and flagged comparisons still have free slots, but not for this annotator.
    assert next_task(annotator_api).status_code == 204
    progress = admin_api.get(f"/api/v1/batches/{batch.pk}/progress/").json()
    assert progress["flagged_comparisons"] == 1

    # Their slots went back to the pool: someone else gets exactly those two.
    other = logged_in(make_user(Role.ANNOTATOR))
    seen = set()
    while (task := next_task(other)).status_code == 200:
        seen.add(Assignment.objects.get(pk=task.json()["assignment"]).comparison_id)
        assert submit(other, task.json()["assignment"]).status_code == 201
    assert seen == {skipped_comparison, lease.comparison_id}


def test_heartbeat_extends_the_lease(make_batch, annotator_api, make_user):
    make_batch(comparisons=1, lease_minutes=45)
    task = next_task(annotator_api).json()
    soon = timezone.now() + timedelta(minutes=1)
    Assignment.objects.filter(pk=task["assignment"]).update(expires_at=soon)

    before = timezone.now()
    response = annotator_api.post(f"/api/v1/assignments/{task['assignment']}/heartbeat/")
    assert response.status_code == 200
    expires = Assignment.objects.get(pk=task["assignment"]).expires_at
    assert before + timedelta(minutes=45) <= expires <= timezone.now() + timedelta(minutes=45)
    assert parse_datetime(response.json()["expires_at"]) == expires

    # An expired lease whose slot is still free comes back to life...
    Assignment.objects.filter(pk=task["assignment"]).update(
        expires_at=timezone.now() - timedelta(minutes=5)
    )
    revived = annotator_api.post(f"/api/v1/assignments/{task['assignment']}/heartbeat/")
    assert revived.status_code == 200
    assert parse_datetime(revived.json()["expires_at"]) > timezone.now()

    # ...but not once another annotator took the slot (overlap 1). (Aged here by hand, so the
    # comparison's lease counters are recounted as every service that changes a lease does.)
    Assignment.objects.filter(pk=task["assignment"]).update(
        expires_at=timezone.now() - timedelta(minutes=5)
    )
    settle_comparison(Assignment.objects.get(pk=task["assignment"]).comparison_id)
    assert next_task(logged_in(make_user(Role.ANNOTATOR))).status_code == 200
    lost = annotator_api.post(f"/api/v1/assignments/{task['assignment']}/heartbeat/")
    assert lost.status_code == 409


def test_progress_numbers_for_a_hand_made_case(admin_api, make_user, ml_staff):
    """Two comparisons, overlap 3. On the first, three annotators prefer slots 1, 1, 2 (one
    agreeing pair of three); on the second two prefer slots 2 and 1 (no agreeing pair of one).
    Agreement is 1/4; five of six wanted annotations are done."""
    annotators = [make_user(Role.ANNOTATOR, username=f"rater{i}") for i in (1, 2, 3)]
    batch_id = set_up_batch(admin_api, annotators=annotators, count=2, overlap=3)
    first, second = Comparison.objects.filter(batch_id=batch_id).order_by("pk")
    preferences = {
        "rater1": {first.pk: 1, second.pk: 2},
        "rater2": {first.pk: 1, second.pk: 1},
        "rater3": {first.pk: 2},
    }
    clients = {user.username: logged_in(user) for user in annotators}
    for username, wanted in preferences.items():
        client = clients[username]
        for _ in wanted:
            assignment_id = next_task(client).json()["assignment"]
            comparison_id = Assignment.objects.get(pk=assignment_id).comparison_id
            side = side_of_slot(assignment_id, wanted[comparison_id])
            response = submit(client, assignment_id, preferred=side, time_spent_ms=2000)
            assert response.status_code == 201
    # rater3 holds a live lease on the second comparison.
    leased = next_task(clients["rater3"]).json()
    assert Assignment.objects.get(pk=leased["assignment"]).comparison_id == second.pk
    assert set(
        Annotation.objects.filter(comparison=first).values_list("preferred_slot", flat=True)
    ) == {1, 2}

    response = admin_api.get(f"/api/v1/batches/{batch_id}/progress/")
    assert response.status_code == 200
    progress = response.json()
    assert progress["comparisons"] == 2
    by_status = progress["comparisons_by_status"]
    assert (by_status["ready"], by_status["complete"], sum(by_status.values())) == (1, 1, 2)
    assert progress["annotations"] == 5
    assert progress["annotations_wanted"] == 6
    assert progress["percent_complete"] == 83.3
    assert progress["inter_annotator_agreement"] == pytest.approx(0.25)
    assert progress["agreement_with_reference"] is None
    assert progress["live_leases"] == 1
    assert progress["flagged_comparisons"] == 0
    assert [(row["annotator"], row["annotations"]) for row in progress["annotators"]] == [
        ("rater1", 2),
        ("rater2", 2),
        ("rater3", 1),
    ]
    assert all(row["median_seconds"] == 2.0 for row in progress["annotators"])
    # ML staff read the same numbers.
    assert logged_in(ml_staff).get(f"/api/v1/batches/{batch_id}/progress/").json() == progress


def test_close_stops_submits_and_hands_out_nothing(admin_api, annotator_api, annotator):
    batch_id = set_up_batch(admin_api, annotators=[annotator], count=3)
    task = next_task(annotator_api).json()

    closed = admin_api.post(f"/api/v1/batches/{batch_id}/close/")
    assert closed.status_code == 200
    assert closed.json()["status"] == "closed"
    assert closed.json()["closed_at"] is not None
    assert admin_api.post(f"/api/v1/batches/{batch_id}/close/").status_code == 409

    refused = submit(annotator_api, task["assignment"])
    assert refused.status_code == 409
    assert "closed" in refused.json()["detail"]
    assert not Annotation.objects.exists()
    assert next_task(annotator_api).status_code == 204
    # Asked for by id, the closed batch hands out nothing either.
    assert next_task(annotator_api, batch=batch_id).status_code in (204, 400)
    assert Assignment.objects.count() == 1
    more = admin_api.post(
        f"/api/v1/batches/{batch_id}/import/", {"file": upload(1, prefix="Late")}, "multipart"
    )
    assert more.status_code == 409

    # Reopening shows the refusals came from the closed state, not from the lease.
    assert admin_api.post(f"/api/v1/batches/{batch_id}/activate/").status_code == 200
    assert submit(annotator_api, task["assignment"]).status_code == 201


def test_delete_only_batches_without_annotations(admin_api, annotator_api, annotator):
    batch_id = set_up_batch(admin_api, annotators=[annotator], count=1)
    assert submit(annotator_api, next_task(annotator_api).json()["assignment"]).status_code == 201
    refused = admin_api.delete(f"/api/v1/batches/{batch_id}/")
    assert refused.status_code == 409
    assert Batch.objects.filter(pk=batch_id).exists()

    draft = admin_api.post("/api/v1/batches/", {"name": "Empty", "kind": "safety"}, "json")
    assert admin_api.delete(f"/api/v1/batches/{draft.json()['id']}/").status_code == 204
    assert not Batch.objects.filter(pk=draft.json()["id"]).exists()


@pytest.mark.parametrize("suffix", ["", "skip/", "heartbeat/"])
def test_a_non_numeric_assignment_id_is_not_found(annotator, suffix):
    client = APIClient(raise_request_exception=False)
    client.force_login(annotator)
    method = client.get if not suffix else client.post
    assert method(f"/api/v1/assignments/abc/{suffix}").status_code == 404


# --- OpenAPI schema and docs --------------------------------------------------------------------

MAIN_PATHS = {
    "/api/v1/batches/",
    "/api/v1/batches/{id}/",
    "/api/v1/batches/{id}/import/",
    "/api/v1/batches/{id}/activate/",
    "/api/v1/batches/{id}/close/",
    "/api/v1/batches/{id}/progress/",
    "/api/v1/tasks/next/",
    "/api/v1/assignments/{id}/",
    "/api/v1/assignments/{id}/skip/",
    "/api/v1/assignments/{id}/flag/",
    "/api/v1/assignments/{id}/heartbeat/",
    "/api/v1/annotations/",
    "/api/v1/annotations/{id}/",
    "/api/v1/export/",
    "/api/v1/auth/token/",
}


def test_the_served_schema_is_valid_and_lists_the_main_paths(api_client):
    response = api_client.get("/api/v1/schema/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    schema = yaml.safe_load(response.content)
    validate_schema(schema)
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) >= MAIN_PATHS

    next_responses = schema["paths"]["/api/v1/tasks/next/"]["post"]["responses"]
    assert {"200", "204"} <= set(next_responses)
    assert {"200", "201"} <= set(schema["paths"]["/api/v1/annotations/"]["post"]["responses"])
    import_body = schema["paths"]["/api/v1/batches/{id}/import/"]["post"]["requestBody"]
    assert "multipart/form-data" in import_body["content"]
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "id":
                    assert parameter["schema"]["type"] == "integer", path
    security = schema["components"]["securitySchemes"]
    assert security["tokenAuth"]["type"] == "apiKey"

    as_json = api_client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert as_json.status_code == 200
    assert json.loads(as_json.content)["paths"].keys() == schema["paths"].keys()


def test_schema_generation_has_no_warnings_or_errors(tmp_path, capsys):
    GENERATOR_STATS.reset()
    target = tmp_path / "schema.yml"
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(target))
    assert not GENERATOR_STATS, dict(GENERATOR_STATS._warn_cache) | dict(
        GENERATOR_STATS._error_cache
    )
    stderr = capsys.readouterr().err
    assert "Warning" not in stderr and "Error" not in stderr, stderr
    assert set(yaml.safe_load(target.read_text())["paths"]) >= MAIN_PATHS


def test_the_docs_page_serves_swagger_ui_from_this_server(api_client):
    response = api_client.get("/api/v1/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    for cdn in ("cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com", "//cdn."):
        assert cdn not in html
    assets = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets), assets
    assert any(asset.endswith("swagger-ui.css") for asset in assets), assets
    for asset in assets:
        # Static files, and the page's own start-up script (a script, not inline: the CSP
        # allows no inline script).
        assert asset.startswith(("/static/", "/api/v1/docs/?script")), asset
        served = api_client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.getvalue()) > 100, asset
    start_up = api_client.get("/api/v1/docs/?script=").content.decode()
    assert '"/api/v1/schema/"' in start_up
