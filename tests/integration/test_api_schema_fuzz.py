"""Schemathesis over the OpenAPI schema, for every role: no server error, answers as documented.

The schema is loaded from the app itself (WSGI, no server). For each role (anonymous, a user
with no role, annotator, batch admin, ML staff) every operation gets a bounded number of
generated requests (schemathesis' fuzzing phase), valid and invalid, half of them aimed at
objects that exist (a batch with comparisons, a draft batch, a lease, an annotation, a model, a
training run), so that the endpoints do real work. The role an operation is for also gets its
coverage phase: deterministic edge cases of every parameter (boundaries, wrong types, missing
fields, odd characters), capped per operation. Tasks go to a Redis broker that no worker reads:
the web side's job ends at dispatch.

Every problem found is collected and reported together (operation, request, what was wrong,
and the exception behind a 500), rather than stopping at the first one.
"""

from __future__ import annotations

import io
import json
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import got_request_exception
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup

from annotation_app.models import Batch, TrainingRun
from annotation_app.roles import Role
from annotation_app.services import assignment as assignment_service
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.imports import import_comparisons
from tests.workers import SCRATCH_REDIS_URL, _flushed, app_using

SCHEMA_URL = "/api/v1/schema/"
# Generated requests per operation, generation mode and role: few, the suite must stay fast.
MAX_EXAMPLES = 5
# Coverage-phase cases per operation for the role it is for, spread over all of them.
MAX_COVERAGE_CASES = 40
# A bound on each role's run whatever the machine's speed (about 15 s is usual); operations
# not reached in time are reported.
TIME_LIMIT_SECONDS = 90

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]

ROLES = ["anonymous", "no role", Role.ANNOTATOR, Role.BATCH_ADMIN, Role.ML_STAFF]
# The role each route is for, by its first path segment: it gets the coverage phase there.
ROUTE_ROLES = {
    "auth": "anonymous",
    "batches": Role.BATCH_ADMIN,
    "export": Role.BATCH_ADMIN,
    "tasks": Role.ANNOTATOR,
    "annotations": Role.ANNOTATOR,
    "assignments": Role.ANNOTATOR,
    "models": Role.ML_STAFF,
    "training-runs": Role.ML_STAFF,
}


def role_for(operation) -> str:
    if operation.path.endswith("/prompts/"):  # an annotator writes a prompt into a batch
        return Role.ANNOTATOR
    return ROUTE_ROLES[operation.path.removeprefix("/api/v1/").split("/")[0]]


@pytest.fixture
def broker():
    """A broker of this test's own, that no worker reads; empty before and after."""
    url = _flushed(SCRATCH_REDIS_URL)
    with app_using(url):
        yield url
    _flushed(url)


@pytest.fixture
def world(broker, make_user, make_batch, tiny_policy):
    """Users of every role and data for every endpoint to work on; real ids by route."""
    annotator = make_user(Role.ANNOTATOR)
    users = {
        "no role": make_user(None),
        Role.ANNOTATOR: annotator,
        Role.BATCH_ADMIN: make_user(Role.BATCH_ADMIN, is_staff=True),
        Role.ML_STAFF: make_user(Role.ML_STAFF, is_staff=True),
    }
    active = make_batch(comparisons=4, overlap=2, allow_annotator_prompts=True, max_turns=3)
    draft = make_batch(Batch.Kind.SAFETY, comparisons=0, active=False)
    prompts = [{"prompt": f"Unsafe question {n}?", "risk_category": "crime"} for n in (1, 2)]
    lines = "".join(json.dumps(record) + "\n" for record in prompts).encode()
    import_comparisons(draft, io.BytesIO(lines), "prompts.jsonl")
    submitted = assignment_service.next_assignment(annotator, batch=active)
    annotation, _ = submit_annotation(
        annotator, submitted.pk, Judgement("A", "better"), uuid.uuid4()
    )
    leased = assignment_service.next_assignment(annotator, batch=active)
    run = TrainingRun.objects.create(
        kind=TrainingRun.Kind.REWARD_HELPFULNESS,
        status=TrainingRun.Status.FAILED,
        config={"max_steps": 1},
        base_model=tiny_policy,
        error="the fixture's run",
        logs="line one\nline two\n",
    )
    run.batches.add(active)
    ids = {
        "batches": [active.pk, draft.pk],
        "assignments": [submitted.pk, leased.pk],
        "annotations": [annotation.pk],
        "models": [tiny_policy.pk],
        "training-runs": [run.pk],
    }
    return users, ids


def auth_headers(role, users) -> dict[str, str]:
    if role == "anonymous":
        return {}
    token, _ = Token.objects.get_or_create(user=users[role])
    return {"Authorization": f"Token {token.key}"}


def strategy_for(operation, mode: GenerationMode, ids: dict[str, list[int]], headers):
    """Generated requests, half of them (for routes with an id) on objects that exist."""
    generated = operation.as_strategy(generation_mode=mode, headers=headers)
    resource = operation.path.removeprefix("/api/v1/").split("/")[0]
    if "{id}" not in operation.path or resource not in ids:
        return generated
    existing = st.sampled_from(ids[resource]).flatmap(
        lambda pk: operation.as_strategy(
            generation_mode=mode, headers=headers, path_parameters={"id": pk}
        )
    )
    return st.one_of(generated, existing)


@pytest.fixture
def live_errors():
    """Exceptions raised inside the app while a request was served (the cause of a 500)."""
    caught: list[str] = []

    def record(sender, request=None, **kwargs):
        caught.append(traceback.format_exc(limit=-3))

    got_request_exception.connect(record)
    yield caught
    got_request_exception.disconnect(record)


@dataclass
class Findings:
    """What one role's run saw: requests made, answers by operation, and every problem."""

    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    not_reached: list[str] = field(default_factory=list)

    def summary(self, role) -> str:
        lines = [f"{role}: {self.requests} requests, {len(self.problems)} problems"]
        lines += [f"  {label}: {code} x{n}" for (label, code), n in sorted(self.statuses.items())]
        return "\n".join(lines)


def describe(case, phase: str, failures: FailureGroup, live_errors: list[str]) -> str:
    body = case.body if not isinstance(case.body, bytes | bytearray) else case.body[:200]
    return "\n".join(
        [
            f"{case.method} {case.formatted_path} ({phase}) query={case.query} "
            f"body={json.dumps(body, default=repr)[:300]}",
            *(f"  - {failure.title}: {str(failure.message)[:400]}" for failure in failures),
            *(f"  cause: {error.strip()[-600:]}" for error in live_errors),
        ]
    )


def send(case, phase: str, findings: Findings, live_errors, headers=None) -> None:
    """One request, checked; a problem is recorded, not raised."""
    live_errors.clear()
    findings.requests += 1
    try:
        response = case.call_and_validate(checks=CHECKS, headers=headers)
    except FailureGroup as failures:
        findings.problems.append(describe(case, phase, failures.exceptions, live_errors))
    else:
        findings.statuses[(case.operation.label, response.status_code)] += 1


def coverage_cases(schema, operation, ids: dict[str, list[int]]) -> list:
    """The coverage phase's cases for ``operation``, at most ``MAX_COVERAGE_CASES`` spread over
    them all; every other one with an id aims at an object that exists."""
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    config = schema.config.generation_for(operation=operation, phase="coverage")
    cases = list(
        schema.iter_coverage_cases(operation, generation_modes=modes, generation_config=config)
    )
    cases = cases[:: max(1, len(cases) // MAX_COVERAGE_CASES)][:MAX_COVERAGE_CASES]
    existing = ids.get(operation.path.removeprefix("/api/v1/").split("/")[0], [])
    for index, case in enumerate(cases):
        if existing and index % 2 and "id" in (case.path_parameters or {}):
            case.path_parameters["id"] = existing[index // 2 % len(existing)]
    return cases


def fuzz(operation, mode, strategy, findings: Findings, live_errors, deadline: float) -> None:
    """Send ``strategy``'s requests to ``operation`` and record how each was answered."""

    @seed(0)  # the same requests on every run: a failure can be reproduced
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def call(case):
        if time.monotonic() <= deadline:
            send(case, mode.value, findings, live_errors)

    if time.monotonic() > deadline:
        findings.not_reached.append(f"{operation.label} ({mode.value})")
        return
    call()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # every request commits, as in production
@pytest.mark.parametrize("role", ROLES, ids=str)
def test_every_operation_answers_as_documented_for_every_role(role, world, live_errors, fake_hub):
    # Registering a hub id asks the hub: a local stand-in, which knows no model.
    users, ids = world
    headers = auth_headers(role, users)
    schema = schemathesis.openapi.from_wsgi(SCHEMA_URL, WSGIHandler())
    findings = Findings()
    deadline = time.monotonic() + TIME_LIMIT_SECONDS
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = strategy_for(operation, mode, ids, headers)
            fuzz(operation, mode, strategy, findings, live_errors, deadline)
    for operation in operations:
        if role_for(operation) != role:
            continue
        for case in coverage_cases(schema, operation, ids):
            if time.monotonic() > deadline:
                findings.not_reached.append(f"{operation.label} (coverage)")
                break
            send(case, "coverage", findings, live_errors, headers)
    print(findings.summary(role))
    assert not findings.problems, f"{len(findings.problems)} problems for {role}:\n\n" + (
        "\n\n".join(findings.problems)
    )
    assert not findings.not_reached, f"not reached in {TIME_LIMIT_SECONDS} s: " + ", ".join(
        findings.not_reached
    )


# --- the schema documents what the fuzzing holds it to ------------------------------------


@pytest.fixture
def openapi(client) -> dict:
    return client.get(SCHEMA_URL, HTTP_ACCEPT="application/json").json()


# The token endpoint names no object and changes no state that could conflict.
TOKEN_PATH, TOKEN_UNANSWERED = "/api/v1/auth/token/", {"404", "409"}


@pytest.mark.django_db
def test_every_operation_documents_401_403_and_404_in_the_one_error_shape(openapi):
    error = {"$ref": "#/components/schemas/Error"}
    for path, operations in openapi["paths"].items():
        unanswered = TOKEN_UNANSWERED if path == TOKEN_PATH else set()
        for method, operation in operations.items():
            responses = operation["responses"]
            for code in {"401", "403", "404"} - unanswered:
                assert code in responses, f"{method.upper()} {path} does not document {code}"
                schema = responses[code]["content"]["application/json"]["schema"]
                assert schema == error, f"{method.upper()} {path} {code}"
            if method in ("post", "put", "patch"):
                assert "400" in responses, f"{method.upper()} {path}"
                assert "409" in responses or "409" in unanswered, f"{method.upper()} {path}"
    shape = openapi["components"]["schemas"]["Error"]
    assert shape["required"] == ["detail", "errors"]


@pytest.mark.django_db
def test_the_schema_documents_no_answer_an_operation_cannot_give(openapi):
    token = openapi["paths"][TOKEN_PATH]["post"]["responses"]
    assert not TOKEN_UNANSWERED & set(token)
    assert {"400", "401", "403", "429"} <= set(token)  # locked out: 429, not 403
    for operations in openapi["paths"].values():
        for operation in operations.values():
            if "403" in operation["responses"]:
                assert "locked out" not in operation["responses"]["403"]["description"]
    retry = openapi["paths"]["/api/v1/batches/{id}/retry-generation/"]["post"]["responses"]["200"]
    schema = retry["content"]["application/json"]["schema"]
    component = openapi["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert component["properties"]["requests"]["type"] == "integer"
    assert component["required"] == ["requests"]


@pytest.mark.django_db
def test_the_submit_schema_says_idempotency_key_is_required(openapi):
    submit = openapi["components"]["schemas"]["Submit"]
    assert "idempotency_key" in submit["required"]
    assert submit["properties"]["idempotency_key"]["format"] == "uuid"
    assert submit["properties"]["time_spent_ms"]["maximum"] == 2**31 - 1
