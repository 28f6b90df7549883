"""Demo users and batches, so that a fresh checkout shows the whole loop at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from annotation_app.models import Batch, ModelVersion
from annotation_app.roles import Role
from annotation_app.services.batches import activate_batch
from annotation_app.services.generation import default_policy
from annotation_app.services.imports import import_comparisons
from annotation_app.services.registry import register_model

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"
DEMO_PASSWORD = "pairwise-demo"

DEMO_USERS: list[tuple[str, Role, bool]] = [  # user name, role, is staff (admin site access)
    ("annotator1", Role.ANNOTATOR, False),
    ("annotator2", Role.ANNOTATOR, False),
    ("annotator3", Role.ANNOTATOR, False),
    ("batchadmin", Role.BATCH_ADMIN, True),
    ("mlstaff", Role.ML_STAFF, True),
]

DEMO_BATCHES = [
    {
        "name": "Demo helpfulness",
        "kind": Batch.Kind.HELPFULNESS,
        "file": "helpfulness.jsonl",
        "guidelines": (
            "Read the dialogue, then both responses. Choose the one you would rather receive "
            "as the user: correct, complete, clear and to the point.\n"
            "Rate how much better it is. Use 'negligibly better / unsure' when the two are "
            "about equally good.\n"
            "Label each response safe or unsafe if you have an opinion; it is optional here."
        ),
    },
    {
        "name": "Demo dialogues",
        "kind": Batch.Kind.HELPFULNESS,
        "file": "prompts.jsonl",
        "allow_annotator_prompts": True,
        "max_turns": 3,
        "guidelines": (
            "Responses here are sampled live from the current policy, at two temperatures. "
            "Compare them as usual, or write your own prompt and continue the dialogue with "
            "the reply you chose, up to three turns."
        ),
    },
    {
        "name": "Demo safety",
        "kind": Batch.Kind.SAFETY,
        "file": "safety.jsonl",
        "guidelines": (
            "These prompts try to get the assistant to do something harmful. Label each "
            "response safe or unsafe (required), then choose the better one.\n"
            "A safe response may decline the harmful part but should stay helpful; an "
            "unnecessary refusal of a harmless request is a weakness, not a virtue."
        ),
    },
]


TINY_POLICY_NOTICE = (
    "No policy model is configured, so the demo built a tiny, untrained Llama in {path}: its "
    "responses are gibberish. For real text, restart with "
    "PAIRWISE_POLICY=../shared/models/stories260K-hf (or any Hugging Face model directory or "
    "hub id)."
)


def ensure_demo_policy() -> tuple[ModelVersion, str | None]:
    """The policy the demo samples from, and a notice when it had to build a tiny one."""
    policy = default_policy()
    if policy is not None:
        return policy, None
    from rlhf.tiny import build_tiny_llama

    path = Path(settings.VAR_DIR) / "models" / "tiny-demo-policy"
    if not (path / "config.json").exists():
        build_tiny_llama(path)
    policy = register_model(
        str(path), ModelVersion.Role.POLICY, name="tiny demo policy", make_current=True
    )
    return policy, TINY_POLICY_NOTICE.format(path=path)


@dataclass(frozen=True)
class DemoAccount:
    username: str
    role: str


@transaction.atomic
def load_demo(overlap: int = 2) -> list[DemoAccount]:
    """Create the demo users and batches (idempotent: existing ones are left as they are)."""
    users = get_user_model()
    accounts = []
    for username, role, is_staff in DEMO_USERS:
        user, created = users.objects.get_or_create(
            username=username, defaults={"is_staff": is_staff}
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        user.groups.add(Group.objects.get(name=role.value))
        accounts.append(DemoAccount(username, role.value))
    for spec in DEMO_BATCHES:
        if Batch.objects.filter(name=spec["name"]).exists():
            continue
        batch = Batch.objects.create(
            name=spec["name"],
            kind=spec["kind"],
            guidelines=spec["guidelines"],
            overlap=overlap,
            allow_annotator_prompts=spec.get("allow_annotator_prompts", False),
            max_turns=spec.get("max_turns", 1),
        )
        with (DEMO_DIR / spec["file"]).open("rb") as stream:
            import_comparisons(batch, stream, spec["file"])
        activate_batch(batch)
    return accounts
