"""Shared fixtures: users in each role, batches filled through the real import service."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Group

from annotation_app.models import Batch
from annotation_app.roles import Role
from annotation_app.services.batches import activate_batch
from annotation_app.services.imports import import_comparisons
from tests.hub import _hub_server, fake_hub  # noqa: F401 (fixtures: a local HF hub)
from tests.workers import (  # noqa: F401 (fixtures)
    celery_worker_process,
    eager_tasks,
    redis_url,
)

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PAIRWISE_ASSETS", ROOT.parent / "shared"))
ARTIFACTS = Path(os.environ.get("PAIRWISE_TEST_ARTIFACTS", ROOT / "test-artifacts"))
PASSWORD = "test-password-123"

# ../shared/README.md: stories260K, greedy, prompt "Once upon a time", llama2.c's `-n 64`.
# llama2.c counts the prompt's 4 tokens in its 64 steps (BOS excluded): 60 new tokens.
GOLDEN_STORY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high."
    "\nLily"
)


def shared_path(relative: str) -> Path:
    """A file under ../shared, or a skip naming what is missing."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent: set PAIRWISE_ASSETS to the shared/ folder to run this")
    return path


@pytest.fixture(autouse=True)
def _no_cached_permissions_or_tokens():
    """Cached permissions and token users (annotation_app/auth_cache.py) outlive a test's
    rolled-back database, whose primary keys a later test may use again: each test starts
    with none."""
    from annotation_app.auth_cache import invalidate_all

    invalidate_all()


@pytest.fixture
def make_user(django_user_model):
    counter = {"n": 0}

    def make(role: Role | None = Role.ANNOTATOR, username: str | None = None, **fields):
        counter["n"] += 1
        name = username or f"{role.value if role else 'nobody'}{counter['n']}"
        user = django_user_model.objects.create_user(username=name, password=PASSWORD, **fields)
        if role is not None:
            user.groups.add(Group.objects.get(name=role.value))
        return user

    return make


@pytest.fixture
def annotator(make_user):
    return make_user(Role.ANNOTATOR)


@pytest.fixture
def batch_admin(make_user):
    return make_user(Role.BATCH_ADMIN, is_staff=True)


@pytest.fixture
def ml_staff(make_user):
    return make_user(Role.ML_STAFF, is_staff=True)


def comparison_lines(count: int, *, prefix: str = "Question") -> bytes:
    """Canonical comparison records with recognisable texts."""
    lines = []
    for index in range(count):
        lines.append(
            json.dumps(
                {
                    "conversation": [{"role": "user", "content": f"{prefix} {index}?"}],
                    "responses": [
                        {
                            "text": f"First answer to {prefix.lower()} {index}.",
                            "model_version": "m-a",
                        },
                        {
                            "text": f"Second answer to {prefix.lower()} {index}.",
                            "model_version": "m-b",
                        },
                    ],
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def make_batch():
    counter = {"n": 0}

    def make(
        kind: str = Batch.Kind.HELPFULNESS,
        *,
        comparisons: int = 3,
        overlap: int = 1,
        active: bool = True,
        **fields,
    ) -> Batch:
        counter["n"] += 1
        batch = Batch.objects.create(
            name=fields.pop("name", f"{kind} batch {counter['n']}"),
            kind=kind,
            overlap=overlap,
            **fields,
        )
        if comparisons:
            import_comparisons(batch, io.BytesIO(comparison_lines(comparisons)), "fixture.jsonl")
        if active:
            activate_batch(batch)
            batch.refresh_from_db()
        return batch

    return make


@pytest.fixture
def api_client():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    """A tiny random Llama (grouped-query attention, two layers) with its own tokenizer."""
    from rlhf.nn.tiny import build_tiny_llama

    return build_tiny_llama(
        tmp_path_factory.mktemp("tiny-policy"),
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        seed=0,
    )


@pytest.fixture
def tiny_policy(tiny_policy_dir, db):
    from annotation_app.services.registry import register_model

    return register_model(str(tiny_policy_dir), "policy", name="tiny-policy", make_current=True)


# Short responses keep generation tests fast; the two sides differ in temperature, as in Llama 2.
FAST_PLAN = {
    "sides": [
        {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 12},
        {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 12},
    ]
}


def prompt_lines(count: int) -> bytes:
    return "".join(
        json.dumps({"prompt": f"Tell me a story about the number {i}."}) + "\n"
        for i in range(count)
    ).encode()
