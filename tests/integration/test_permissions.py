"""Who may do what: every page and API endpoint, for every role (DESIGN.md, "Its users").

The matrix asks each endpoint as an anonymous visitor, a signed-in user with no role, an
annotator, a batch admin and an ML staff member, and checks the status code. A refused request
must also leave the database exactly as it was.

Decisions, from the design:
- annotators reach only the annotation pages and endpoints, and only their own assignments and
  annotations; someone else's id answers 404 like a missing one, so existence does not leak;
- batch admins manage batches (CRUD, import, activate, close), watch progress and export, but do
  not annotate; in the admin they do not create model versions or training runs;
- ML staff read batches and progress, export, and create and change model versions and training
  runs; they change no batch;
- anonymous visitors are sent to the login page (pages) or refused with 401/403 (API); the API
  schema, its docs page and the token endpoint are public.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation_app.models import (
    Annotation,
    Assignment,
    Batch,
    Comparison,
    ModelVersion,
    Response,
    TrainingRun,
)
from annotation_app.roles import Role
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.assignment import next_assignment
from annotation_app.services.imports import import_comparisons
from tests.conftest import PASSWORD, comparison_lines

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "nobody", "annotator", "batch_admin", "ml_staff")
MISSING_ID = 987_654_321

# Expected outcomes besides a plain status code.
LOGIN = "redirect to /login/"
ADMIN_LOGIN = "redirect to /admin/login/"
UNAUTHENTICATED = "401 or 403"


@dataclass
class World:
    users: dict[str, object]
    ids: dict[str, int]


@pytest.fixture
def world(make_user, make_batch, annotator, batch_admin, ml_staff) -> World:
    """An active batch where the annotator and another annotator each submitted one annotation
    and hold one live lease, plus a draft batch with comparisons."""
    batch = make_batch(comparisons=4, overlap=2)
    draft = make_batch(comparisons=2, active=False)
    other = make_user(Role.ANNOTATOR)
    ids = {"batch": batch.pk, "draft": draft.pk, "missing": MISSING_ID}
    for name, user in (("own", annotator), ("other", other)):
        done = next_assignment(user)
        annotation, _ = submit_annotation(user, done.pk, Judgement("A", "better"), uuid.uuid4())
        ids[f"{name}_annotation"] = annotation.pk
        ids[name] = next_assignment(user).pk
    assert ids["own"] != ids["other"]
    ids["prompt_batch"] = make_batch(comparisons=1, allow_annotator_prompts=True).pk
    ids["model"] = ModelVersion.objects.create(
        name="policy-v1", role=ModelVersion.Role.POLICY, path="org/policy-v1"
    ).pk
    run = TrainingRun.objects.create(
        kind=TrainingRun.Kind.REWARD_HELPFULNESS,
        status=TrainingRun.Status.SUCCEEDED,
        progress=1.0,
        base_model_id=ids["model"],
    )
    run.batches.set([batch])
    ModelVersion.objects.create(
        name="reward-v1",
        role=ModelVersion.Role.REWARD_HELPFULNESS,
        path="org/reward-v1",
        training_run=run,
    )
    ids["run"] = run.pk
    users = {
        "anonymous": None,
        "nobody": make_user(None),
        "annotator": annotator,
        "batch_admin": batch_admin,
        "ml_staff": ml_staff,
    }
    return World(users=users, ids=ids)


def client_for(user) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


def snapshot() -> dict:
    """Everything a refused request could have changed."""
    return {
        "batches": list(
            Batch.objects.order_by("pk").values_list(
                "pk", "name", "status", "guidelines", "overlap", "lease_minutes"
            )
        ),
        "comparisons": list(
            Comparison.objects.order_by("pk").values_list(
                "pk", "status", "annotation_count", "flag_count"
            )
        ),
        "responses": Response.objects.count(),
        "assignments": list(
            Assignment.objects.order_by("pk").values_list("pk", "status", "expires_at")
        ),
        "annotations": list(Annotation.objects.order_by("pk").values_list("pk", flat=True)),
        "model_versions": ModelVersion.objects.count(),
        "training_runs": TrainingRun.objects.count(),
        "tokens": Token.objects.count(),
    }


# --- request bodies -------------------------------------------------------------------------


def jsonl_upload(name: str = "more.jsonl") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, comparison_lines(2, prefix="Extra"), "application/jsonl")


def submit_form(world: World) -> dict:
    return {"rating": "A:better", "idempotency_key": str(uuid.uuid4())}


def submit_json(key: str) -> Callable[[World], dict]:
    def body(world: World) -> dict:
        return {
            "assignment": world.ids[key],
            "preferred": "B",
            "strength": "slightly_better",
            "idempotency_key": str(uuid.uuid4()),
        }

    return body


def token_request(world: World, role: str) -> dict:
    user = world.users[role]
    return {} if user is None else {"username": user.username, "password": PASSWORD}


def admin_batch_form(world: World) -> dict:
    """The admin change form of the draft batch as the browser would post it, renamed."""
    from django.contrib import admin as django_admin
    from django.test import RequestFactory

    batch = Batch.objects.get(pk=world.ids["draft"])
    request = RequestFactory().get("/")
    request.user = world.users["batch_admin"]
    form = django_admin.site._registry[Batch].get_form(request, batch)(instance=batch)
    data = {}
    for name in form.fields:
        value = form[name].value()
        widget = form.fields[name].widget
        if getattr(widget, "widgets", None):  # several inputs (the sampling plan): name_0, …
            for index, part in enumerate(widget.decompress(value)):
                if part is not None:
                    data[f"{name}_{index}"] = part
            continue
        if value is None or value == [] or value is False:
            continue
        data[name] = "on" if value is True else value
    data["name"] = "Renamed in the admin"
    return data


# --- the matrix -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    expect: dict[str, object]
    body: Callable[..., dict] | None = None
    format: str | None = None
    body_takes_role: bool = False
    # Role -> why the code answers otherwise today: those cells are strict xfails.
    bugs: dict[str, str] = field(default_factory=dict)


def page(*, nobody=403, annotator=403, batch_admin=403, ml_staff=403) -> dict:
    return {
        "anonymous": LOGIN,
        "nobody": nobody,
        "annotator": annotator,
        "batch_admin": batch_admin,
        "ml_staff": ml_staff,
    }


def admin(*, batch_admin=200, ml_staff=200) -> dict:
    return {
        "anonymous": ADMIN_LOGIN,
        "nobody": ADMIN_LOGIN,
        "annotator": ADMIN_LOGIN,
        "batch_admin": batch_admin,
        "ml_staff": ml_staff,
    }


def api(*, nobody=403, annotator=403, batch_admin=403, ml_staff=403) -> dict:
    return {
        "anonymous": UNAUTHENTICATED,
        "nobody": nobody,
        "annotator": annotator,
        "batch_admin": batch_admin,
        "ml_staff": ml_staff,
    }


def everyone(status) -> dict:
    return dict.fromkeys(ROLES, status)


ADMIN_MODELS = (
    "batch",
    "comparison",
    "conversation",
    "assignment",
    "annotation",
    "modelversion",
    "trainingrun",
)


CASES = [
    # Pages.
    Case("home", "get", "/", page(nobody=200, annotator=200, batch_admin=200, ml_staff=200)),
    Case("login page", "get", "/login/", everyone(200)),
    Case("annotate", "get", "/annotate/", page(annotator=(302, "/tasks/{own}/"))),
    Case("task page, own", "get", "/tasks/{own}/", page(annotator=200)),
    Case("task page, someone else's", "get", "/tasks/{other}/", page(annotator=404)),
    Case("task page, missing", "get", "/tasks/{missing}/", page(annotator=404)),
    Case(
        "submit page, own",
        "post",
        "/tasks/{own}/submit/",
        page(annotator=(302, "/annotate/?batch={batch}")),
        body=submit_form,
    ),
    Case("submit page, GET", "get", "/tasks/{own}/submit/", page(annotator=405)),
    Case(
        "submit page, someone else's",
        "post",
        "/tasks/{other}/submit/",
        page(annotator=404),
        body=submit_form,
    ),
    Case(
        "release page, own",
        "post",
        "/tasks/{own}/release/",
        page(annotator=(302, "/annotate/?batch={batch}")),
        body=lambda world: {"action": "skip"},
    ),
    Case(
        "release page, someone else's",
        "post",
        "/tasks/{other}/release/",
        page(annotator=404),
        body=lambda world: {"action": "flag", "reason": "spam"},
    ),
    Case(
        "continue dialogue page, own",
        "get",
        "/tasks/{own}/continue/",
        # An imported comparison is not the annotator's own dialogue: back to the queue.
        page(annotator=(302, "/annotate/?batch={batch}")),
    ),
    Case(
        "continue dialogue page, someone else's",
        "get",
        "/tasks/{other}/continue/",
        page(annotator=404),
    ),
    Case("write prompt page", "get", "/batches/{prompt_batch}/write/", page(annotator=200)),
    Case(
        "write prompt page, missing batch", "get", "/batches/{missing}/write/", page(annotator=404)
    ),
    Case(
        "logout",
        "post",
        "/logout/",
        everyone((302, "/login/")),
    ),
    Case(
        "progress page",
        "get",
        "/batches/{batch}/progress/",
        page(batch_admin=200, ml_staff=200),
    ),
    Case(
        "progress page, missing batch",
        "get",
        "/batches/{missing}/progress/",
        page(batch_admin=404, ml_staff=404),
    ),
    Case("training page", "get", "/training/", page(ml_staff=200)),
    Case(
        "training page, start a run",
        "post",
        "/training/",
        page(ml_staff=302),
        body=lambda world: {
            "kind": "helpfulness",
            "batches": [world.ids["batch"]],
            "base_model": world.ids["model"],
        },
    ),
    Case("training run page", "get", "/training/runs/{run}/", page(ml_staff=200)),
    Case("training run page, missing", "get", "/training/runs/{missing}/", page(ml_staff=404)),
    Case(
        "training run promote",
        "post",
        "/training/runs/{run}/promote/",
        page(ml_staff=(302, "/training/runs/{run}/")),
    ),
    Case("training run promote, GET", "get", "/training/runs/{run}/promote/", page(ml_staff=405)),
    # Admin.
    Case("admin index", "get", "/admin/", admin()),
    *[
        Case(f"admin {model} changelist", "get", f"/admin/annotation_app/{model}/", admin())
        for model in ADMIN_MODELS
    ],
    Case("admin batch add", "get", "/admin/annotation_app/batch/add/", admin(ml_staff=403)),
    Case("admin batch change form", "get", "/admin/annotation_app/batch/{draft}/change/", admin()),
    Case(
        "admin batch change, POST",
        "post",
        "/admin/annotation_app/batch/{draft}/change/",
        admin(batch_admin=302, ml_staff=403),
        body=admin_batch_form,
    ),
    Case(
        "admin batch delete",
        "get",
        "/admin/annotation_app/batch/{draft}/delete/",
        admin(ml_staff=403),
    ),
    Case(
        "admin modelversion add",
        "get",
        "/admin/annotation_app/modelversion/add/",
        admin(batch_admin=403),
    ),
    Case(
        "admin trainingrun add",  # runs are started on the training page
        "get",
        "/admin/annotation_app/trainingrun/add/",
        admin(batch_admin=403, ml_staff=(302, "/training/")),
    ),
    Case(
        "admin annotation change is read-only",
        "post",
        "/admin/annotation_app/annotation/{own_annotation}/change/",
        admin(batch_admin=403, ml_staff=403),
        body=lambda world: {"strength": "significantly_better"},
    ),
    Case(
        "admin batch import page",
        "get",
        "/admin/annotation_app/batch/{draft}/import/",
        admin(ml_staff=403),
    ),
    Case(
        "admin batch import, POST",
        "post",
        "/admin/annotation_app/batch/{draft}/import/",
        admin(batch_admin=(302, "/admin/annotation_app/batch/{draft}/change/"), ml_staff=403),
        body=lambda world: {"file": jsonl_upload()},
    ),
    # API: batches.
    Case(
        "API root", "get", "/api/v1/", api(nobody=200, annotator=200, batch_admin=200, ml_staff=200)
    ),
    Case("batches list", "get", "/api/v1/batches/", api(batch_admin=200, ml_staff=200)),
    Case(
        "batches create",
        "post",
        "/api/v1/batches/",
        api(batch_admin=201),
        body=lambda world: {"name": "New batch", "kind": "safety"},
        format="json",
    ),
    Case("batch retrieve", "get", "/api/v1/batches/{batch}/", api(batch_admin=200, ml_staff=200)),
    Case(
        "batch retrieve, missing",
        "get",
        "/api/v1/batches/{missing}/",
        api(batch_admin=404, ml_staff=404),
    ),
    Case(
        "batch partial update",
        "patch",
        "/api/v1/batches/{batch}/",
        api(batch_admin=200),
        body=lambda world: {"guidelines": "Prefer the shorter answer."},
        format="json",
    ),
    Case(
        "batch update",
        "put",
        "/api/v1/batches/{draft}/",
        api(batch_admin=200),
        body=lambda world: {"name": "Replaced", "kind": "helpfulness", "overlap": 3},
        format="json",
    ),
    Case("batch delete", "delete", "/api/v1/batches/{draft}/", api(batch_admin=204)),
    Case(
        "batch import",
        "post",
        "/api/v1/batches/{draft}/import/",
        api(batch_admin=201),
        body=lambda world: {"file": jsonl_upload()},
        format="multipart",
    ),
    Case("batch activate", "post", "/api/v1/batches/{draft}/activate/", api(batch_admin=200)),
    Case("batch close", "post", "/api/v1/batches/{batch}/close/", api(batch_admin=200)),
    Case(
        "batch retry generation",
        "post",
        "/api/v1/batches/{batch}/retry-generation/",
        api(batch_admin=200),
    ),
    Case(
        "batch write prompt",
        "post",
        "/api/v1/batches/{prompt_batch}/prompts/",
        api(annotator=201),
        body=lambda world: {"prompt": "Write a haiku about tea."},
        format="json",
    ),
    Case(
        "batch write prompt, batch not open to you",
        "post",
        "/api/v1/batches/{draft}/prompts/",
        api(annotator=404),
        body=lambda world: {"prompt": "Write a haiku about tea."},
        format="json",
    ),
    Case(
        "batch write prompt, batch takes no prompts",
        "post",
        "/api/v1/batches/{batch}/prompts/",
        api(annotator=409),
        body=lambda world: {"prompt": "Write a haiku about tea."},
        format="json",
    ),
    Case(
        "batch progress",
        "get",
        "/api/v1/batches/{batch}/progress/",
        api(batch_admin=200, ml_staff=200),
    ),
    # API: annotating.
    Case(
        "next task",
        "post",
        "/api/v1/tasks/next/",
        api(annotator=200),
        body=lambda world: {},
        format="json",
    ),
    Case("next task, GET", "get", "/api/v1/tasks/next/", api(annotator=405)),
    Case(
        "assignments list does not exist",
        "get",
        "/api/v1/assignments/",
        api(nobody=404, annotator=404, batch_admin=404, ml_staff=404) | {"anonymous": 404},
    ),
    Case("assignment retrieve, own", "get", "/api/v1/assignments/{own}/", api(annotator=200)),
    Case(
        "assignment retrieve, someone else's",
        "get",
        "/api/v1/assignments/{other}/",
        api(annotator=404),
    ),
    Case(
        "assignment retrieve, missing",
        "get",
        "/api/v1/assignments/{missing}/",
        api(annotator=404),
    ),
    *[
        Case(
            f"assignment {verb}, {whose}",
            "post",
            f"/api/v1/assignments/{{{key}}}/{verb}/",
            api(annotator=status),
            body=(lambda world: {"reason": "the prompt is garbled"}) if verb == "flag" else None,
            format="json",
        )
        for verb in ("skip", "flag", "heartbeat")
        for whose, key, status in (("own", "own", 200), ("someone else's", "other", 404))
    ],
    Case(
        "assignment continue, own imported comparison",
        "post",
        "/api/v1/assignments/{own}/continue/",
        api(annotator=409),
        body=lambda world: {"text": "And then?"},
        format="json",
    ),
    Case(
        "assignment continue, someone else's",
        "post",
        "/api/v1/assignments/{other}/continue/",
        api(annotator=404),
        body=lambda world: {"text": "And then?"},
        format="json",
    ),
    Case("annotations list", "get", "/api/v1/annotations/", api(annotator=200)),
    Case(
        "annotation retrieve, own",
        "get",
        "/api/v1/annotations/{own_annotation}/",
        api(annotator=200),
    ),
    Case(
        "annotation retrieve, someone else's",
        "get",
        "/api/v1/annotations/{other_annotation}/",
        api(annotator=404),
    ),
    Case(
        "annotation create, own",
        "post",
        "/api/v1/annotations/",
        api(annotator=201),
        body=submit_json("own"),
        format="json",
    ),
    Case(
        "annotation create, someone else's assignment",
        "post",
        "/api/v1/annotations/",
        api(annotator=404),
        body=submit_json("other"),
        format="json",
    ),
    # API: the model registry.
    Case("models list", "get", "/api/v1/models/", api(batch_admin=200, ml_staff=200)),
    Case(
        "models create",
        "post",
        "/api/v1/models/",
        api(ml_staff=201),
        body=lambda world: {"path": "org/policy-v2", "role": "policy"},
        format="json",
    ),
    Case("model retrieve", "get", "/api/v1/models/{model}/", api(batch_admin=200, ml_staff=200)),
    Case("model promote", "post", "/api/v1/models/{model}/promote/", api(ml_staff=200)),
    # API: training runs (ML staff only; batch admins read runs in the admin).
    Case("training runs list", "get", "/api/v1/training-runs/", api(ml_staff=200)),
    Case(
        "training runs create",
        "post",
        "/api/v1/training-runs/",
        api(ml_staff=201),
        body=lambda world: {
            "kind": "helpfulness",
            "batches": [world.ids["batch"]],
            "base_model": world.ids["model"],
            "config": {"max_steps": 1},
        },
        format="json",
    ),
    Case(
        "training runs create, bad config",
        "post",
        "/api/v1/training-runs/",
        api(ml_staff=400),
        body=lambda world: {
            "kind": "helpfulness",
            "batches": [world.ids["batch"]],
            "base_model": world.ids["model"],
            "config": {"learning_rate": 0},
        },
        format="json",
    ),
    Case("training run retrieve", "get", "/api/v1/training-runs/{run}/", api(ml_staff=200)),
    Case(
        "training run retrieve, missing",
        "get",
        "/api/v1/training-runs/{missing}/",
        api(ml_staff=404),
    ),
    Case("training run status", "get", "/api/v1/training-runs/{run}/status/", api(ml_staff=200)),
    # API: data and documentation.
    Case("export", "get", "/api/v1/export/", api(batch_admin=200, ml_staff=200)),
    Case("schema", "get", "/api/v1/schema/", everyone(200)),
    Case("docs", "get", "/api/v1/docs/", everyone(200)),
    Case(
        "auth token",
        "post",
        "/api/v1/auth/token/",
        everyone(200) | {"anonymous": 400},
        body=token_request,
        format="json",
        body_takes_role=True,
    ),
]


def _send(client: APIClient, case: Case, world: World, role: str):
    path = case.path.format(**world.ids)
    kwargs = {}
    if case.body is not None:
        kwargs["data"] = case.body(world, role) if case.body_takes_role else case.body(world)
    if case.format is not None:
        kwargs["format"] = case.format
    return getattr(client, case.method)(path, **kwargs)


def _check(response, expected, world: World) -> None:
    status = response.status_code
    if expected == LOGIN:
        assert status == 302, status
        assert response["Location"].startswith("/login/?next="), response["Location"]
    elif expected == ADMIN_LOGIN:
        assert status == 302, status
        assert response["Location"].startswith("/admin/login/?next="), response["Location"]
    elif expected == UNAUTHENTICATED:
        assert status in (401, 403), status
    elif isinstance(expected, tuple):
        code, location = expected
        assert status == code, status
        assert response["Location"] == location.format(**world.ids)
    else:
        assert status == expected, (status, getattr(response, "content", b"")[:300])


MATRIX = [
    pytest.param(
        case,
        role,
        id=f"{case.id}-{role}",
        marks=[pytest.mark.xfail(strict=True, reason=case.bugs[role])] if role in case.bugs else [],
    )
    for case in CASES
    for role in ROLES
]


@pytest.mark.parametrize(("case", "role"), MATRIX)
def test_access_matrix(case: Case, role: str, world: World, fake_hub):
    fake_hub.models.add("org/policy-v2")  # registering a hub id asks the hub (a local one)
    expected = case.expect[role]
    before = snapshot()
    response = _send(client_for(world.users[role]), case, world, role)
    _check(response, expected, world)
    refused = expected in (LOGIN, ADMIN_LOGIN, UNAUTHENTICATED) or (
        isinstance(expected, int) and expected >= 400
    )
    if refused:
        assert snapshot() == before, "a refused request changed the database"


def test_every_case_names_every_role():
    for case in CASES:
        assert set(case.expect) == set(ROLES), case.id
    assert len({case.id for case in CASES}) == len(CASES)


# Every route outside the admin, and the row of the matrix that asks it.
ROUTES = {
    "": "/",
    "login/": "/login/",
    "logout/": "/logout/",
    "annotate/": "/annotate/",
    "tasks/<int:assignment_id>/": "/tasks/{own}/",
    "tasks/<int:assignment_id>/submit/": "/tasks/{own}/submit/",
    "tasks/<int:assignment_id>/release/": "/tasks/{own}/release/",
    "tasks/<int:assignment_id>/continue/": "/tasks/{own}/continue/",
    "batches/<int:batch_id>/write/": "/batches/{prompt_batch}/write/",
    "batches/<int:batch_id>/progress/": "/batches/{batch}/progress/",
    "api/v1/": "/api/v1/",
    "api/v1/tasks/next/": "/api/v1/tasks/next/",
    "api/v1/export/": "/api/v1/export/",
    "api/v1/auth/token/": "/api/v1/auth/token/",
    "api/v1/schema/": "/api/v1/schema/",
    "api/v1/docs/": "/api/v1/docs/",
    "api/v1/^batches/$": "/api/v1/batches/",
    "api/v1/^batches/<pk>/$": "/api/v1/batches/{batch}/",
    "api/v1/^batches/<pk>/activate/$": "/api/v1/batches/{draft}/activate/",
    "api/v1/^batches/<pk>/close/$": "/api/v1/batches/{batch}/close/",
    "api/v1/^batches/<pk>/import/$": "/api/v1/batches/{draft}/import/",
    "api/v1/^batches/<pk>/progress/$": "/api/v1/batches/{batch}/progress/",
    "api/v1/^batches/<pk>/prompts/$": "/api/v1/batches/{prompt_batch}/prompts/",
    "api/v1/^batches/<pk>/retry-generation/$": ("/api/v1/batches/{batch}/retry-generation/"),
    "api/v1/^assignments/<pk>/$": "/api/v1/assignments/{own}/",
    "api/v1/^assignments/<pk>/continue/$": "/api/v1/assignments/{own}/continue/",
    "api/v1/^assignments/<pk>/flag/$": "/api/v1/assignments/{own}/flag/",
    "api/v1/^assignments/<pk>/heartbeat/$": "/api/v1/assignments/{own}/heartbeat/",
    "api/v1/^assignments/<pk>/skip/$": "/api/v1/assignments/{own}/skip/",
    "api/v1/^annotations/$": "/api/v1/annotations/",
    "api/v1/^annotations/<pk>/$": "/api/v1/annotations/{own_annotation}/",
    "api/v1/^models/$": "/api/v1/models/",
    "api/v1/^models/<pk>/$": "/api/v1/models/{model}/",
    "api/v1/^models/<pk>/promote/$": "/api/v1/models/{model}/promote/",
    "training/": "/training/",
    "training/runs/<int:run_id>/": "/training/runs/{run}/",
    "training/runs/<int:run_id>/promote/": "/training/runs/{run}/promote/",
    "api/v1/^training-runs/$": "/api/v1/training-runs/",
    "api/v1/^training-runs/<pk>/$": "/api/v1/training-runs/{run}/",
    "api/v1/^training-runs/<pk>/status/$": "/api/v1/training-runs/{run}/status/",
}


def test_the_matrix_covers_every_route():
    """A new page or API route must get a row in the matrix (the admin is listed by hand)."""
    from django.urls import URLPattern, URLResolver, get_resolver

    def walk(patterns, prefix=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                yield prefix + str(pattern.pattern)

    routes = {
        re.sub(r"\(\?P<pk>[^)]*\)", "<pk>", route)
        for route in walk(get_resolver().url_patterns)
        if not route.startswith("admin/") and "format>" not in route
    }
    assert routes == set(ROUTES), routes ^ set(ROUTES)
    asked = {case.path for case in CASES}
    assert set(ROUTES.values()) <= asked, set(ROUTES.values()) - asked


# --- side effects of the allowed requests --------------------------------------------------


def test_admin_bulk_actions_need_the_manage_permission(world):
    """ML staff see the batch changelist but cannot activate or close through its actions."""
    draft = Batch.objects.get(pk=world.ids["draft"])
    form = {"action": "activate_selected", "_selected_action": [str(draft.pk)]}
    url = "/admin/annotation_app/batch/"

    ml_page = client_for(world.users["ml_staff"]).get(url)
    assert "activate_selected" not in ml_page.content.decode()
    client_for(world.users["ml_staff"]).post(url, form)
    draft.refresh_from_db()
    assert draft.status == Batch.Status.DRAFT

    admin_page = client_for(world.users["batch_admin"]).get(url)
    assert "activate_selected" in admin_page.content.decode()
    client_for(world.users["batch_admin"]).post(url, form)
    draft.refresh_from_db()
    assert draft.status == Batch.Status.ACTIVE


def test_annotators_see_only_their_own_annotations(world):
    listing = client_for(world.users["annotator"]).get("/api/v1/annotations/").json()
    assert [row["id"] for row in listing["results"]] == [world.ids["own_annotation"]]


def test_the_home_page_lists_batches_only_to_those_who_may_view_them(world, make_batch):
    hidden = make_batch(comparisons=1, active=False, name="Internal red-team draft")
    assert hidden.name not in client_for(world.users["annotator"]).get("/").content.decode()
    assert hidden.name not in client_for(world.users["nobody"]).get("/").content.decode()
    assert hidden.name in client_for(world.users["batch_admin"]).get("/").content.decode()
    assert hidden.name in client_for(world.users["ml_staff"]).get("/").content.decode()


@pytest.fixture
def restricted_batches(make_batch, make_user):
    """Batches that exist but are not open to the ``annotator`` fixture."""
    draft = make_batch(comparisons=1, active=False, name="Restricted draft: bioweapons probe")
    elsewhere = make_batch(comparisons=1, name="Restricted: assigned to the vendor team")
    elsewhere.assigned_annotators.add(make_user(Role.ANNOTATOR))
    return {"draft": draft, "assigned elsewhere": elsewhere}


@pytest.mark.parametrize("which", ["draft", "assigned elsewhere"])
def test_annotate_page_treats_a_batch_not_open_to_you_like_a_missing_one(
    which, annotator, restricted_batches
):
    batch = restricted_batches[which]
    client = client_for(annotator)
    assert client.get(f"/annotate/?batch={MISSING_ID}").status_code == 404
    response = client.get(f"/annotate/?batch={batch.pk}", follow=True)
    assert batch.name not in response.content.decode()
    assert response.status_code == 404


@pytest.mark.parametrize("which", ["draft", "assigned elsewhere"])
def test_next_task_treats_a_batch_not_open_to_you_like_a_missing_one(
    which, annotator, restricted_batches
):
    client = client_for(annotator)
    missing = client.post("/api/v1/tasks/next/", {"batch": MISSING_ID}, format="json")
    hidden = client.post(
        "/api/v1/tasks/next/", {"batch": restricted_batches[which].pk}, format="json"
    )
    assert (hidden.status_code, hidden.content) == (missing.status_code, missing.content)


@pytest.mark.parametrize("which", ["draft", "assigned elsewhere"])
def test_write_prompt_page_treats_a_batch_not_open_to_you_like_a_missing_one(
    which, annotator, restricted_batches
):
    batch = restricted_batches[which]
    client = client_for(annotator)
    assert client.get(f"/batches/{MISSING_ID}/write/").status_code == 404
    response = client.get(f"/batches/{batch.pk}/write/", follow=True)
    assert batch.name not in response.content.decode()
    assert response.status_code == 404


def test_an_open_batch_filter_still_works(annotator, make_batch):
    batch = make_batch(comparisons=1)
    response = client_for(annotator).post("/api/v1/tasks/next/", {"batch": batch.pk}, format="json")
    assert response.status_code == 200
    assert response.json()["batch"]["id"] == batch.pk


# --- annotators never learn which model wrote a response -----------------------------------

SECRET_MODELS = ("secret-model-x", "secret-model-y")
SECRET_SAMPLER = "secret-sampler-config"


@pytest.fixture
def secret_batch():
    batch = Batch.objects.create(name="Blind batch", kind=Batch.Kind.SAFETY)
    lines = [
        json.dumps(
            {
                "conversation": [{"role": "user", "content": f"Blind question {index}?"}],
                "responses": [
                    {
                        "text": f"Left-or-right answer one, {index}.",
                        "model_version": SECRET_MODELS[0],
                        "sampling": {"temperature": 0.7, "engine": SECRET_SAMPLER},
                        "seed": 424242,
                    },
                    {
                        "text": f"Left-or-right answer two, {index}.",
                        "model_version": SECRET_MODELS[1],
                        "sampling": {"temperature": 1.0, "engine": SECRET_SAMPLER},
                    },
                ],
            }
        )
        for index in range(3)
    ]
    import_comparisons(batch, io.BytesIO("\n".join(lines).encode()), "blind.jsonl")
    batch.status = Batch.Status.ACTIVE
    batch.save()
    return batch


def _assert_blind(text: str, where: str) -> None:
    for secret in (*SECRET_MODELS, SECRET_SAMPLER, "424242"):
        assert secret not in text, f"{secret!r} leaked into {where}"


def test_annotators_never_see_which_model_wrote_a_response(secret_batch, annotator, batch_admin):
    # The names are stored, and shown to batch admins: the check below is not vacuous.
    assert set(Response.objects.values_list("model_name", flat=True)) == set(SECRET_MODELS)
    comparison = secret_batch.comparisons.first()
    admin_page = client_for(batch_admin).get(
        f"/admin/annotation_app/comparison/{comparison.pk}/change/"
    )
    assert SECRET_MODELS[0] in admin_page.content.decode()

    client = client_for(annotator)
    task = client.get("/annotate/", follow=True)
    assert task.status_code == 200
    html = task.content.decode()
    assert "Blind question" in html and "Left-or-right answer one" in html
    _assert_blind(html, "the task page")

    payload = client.post("/api/v1/tasks/next/", {}, format="json")
    assert payload.status_code == 200
    assert "Left-or-right answer" in payload.content.decode()
    _assert_blind(payload.content.decode(), "the next-task payload")
    assignment = payload.json()["assignment"]
    for response in (
        client.get(f"/api/v1/assignments/{assignment}/"),
        client.post(f"/api/v1/assignments/{assignment}/heartbeat/"),
    ):
        assert response.status_code == 200
        _assert_blind(response.content.decode(), response.request["PATH_INFO"])

    # The form page re-rendered after an invalid submit is blind too.
    invalid = client.post(f"/tasks/{assignment}/submit/", {"rating": "A:better"}, follow=True)
    assert invalid.redirect_chain == [(f"/tasks/{assignment}/", 302)]
    assert "label response A safe or unsafe" in invalid.content.decode()
    _assert_blind(invalid.content.decode(), "the re-rendered task page")

    created = client.post(
        "/api/v1/annotations/",
        {
            "assignment": assignment,
            "preferred": "A",
            "strength": "better",
            "a_safe": True,
            "b_safe": False,
            "idempotency_key": str(uuid.uuid4()),
        },
        format="json",
    )
    assert created.status_code == 201
    _assert_blind(created.content.decode(), "the annotation just created")
    _assert_blind(client.get("/api/v1/annotations/").content.decode(), "the annotation list")

    second = client.post("/api/v1/tasks/next/", {}, format="json").json()["assignment"]
    skipped = client.post(f"/api/v1/assignments/{second}/skip/")
    assert skipped.status_code == 200
    _assert_blind(skipped.content.decode(), "the skip answer")
    _assert_blind(client.get("/").content.decode(), "the home page")


# --- token authentication -------------------------------------------------------------------


def test_token_authentication(annotator, batch_admin, make_batch):
    make_batch(comparisons=1)
    anonymous = APIClient(enforce_csrf_checks=True)

    answer = anonymous.post(
        "/api/v1/auth/token/",
        {"username": annotator.username, "password": PASSWORD},
        format="json",
    )
    assert answer.status_code == 200
    token = answer.json()["token"]
    assert Token.objects.get(user=annotator).key == token
    again = anonymous.post(
        "/api/v1/auth/token/",
        {"username": annotator.username, "password": PASSWORD},
        format="json",
    )
    assert again.json()["token"] == token

    wrong = anonymous.post(
        "/api/v1/auth/token/",
        {"username": annotator.username, "password": "not-the-password"},
        format="json",
    )
    assert wrong.status_code == 400
    assert "token" not in wrong.json()

    # A token-authenticated POST needs no CSRF token, and carries the user's role, no more.
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    task = client.post("/api/v1/tasks/next/", {}, format="json")
    assert task.status_code == 200
    assert task.json()["responses"].keys() == {"A", "B"}
    assert client.get("/api/v1/batches/").status_code == 403
    # The token opens the API, not a browser session.
    page = client.get("/")
    assert page.status_code == 302 and page["Location"].startswith("/login/")

    admin_token = Token.objects.create(user=batch_admin)
    admin_client = APIClient()
    admin_client.credentials(HTTP_AUTHORIZATION=f"Token {admin_token.key}")
    assert admin_client.get("/api/v1/batches/").status_code == 200

    forged = APIClient()
    forged.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    refused = forged.post("/api/v1/tasks/next/", {}, format="json")
    assert refused.status_code in (401, 403)
    assert "invalid token" in refused.json()["detail"].lower()


def test_session_authenticated_api_writes_need_a_csrf_token(annotator, make_batch):
    make_batch(comparisons=1)
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(annotator)
    refused = client.post("/api/v1/tasks/next/", {}, format="json")
    assert refused.status_code == 403
    assert "csrf" in refused.json()["detail"].lower()
    assert not Assignment.objects.exists()
