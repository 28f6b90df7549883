"""Demo users and batches, so that a fresh checkout shows the whole loop at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from annotation_app.models import Batch
from annotation_app.roles import Role
from annotation_app.services.batches import activate_batch
from annotation_app.services.imports import import_comparisons

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
            name=spec["name"], kind=spec["kind"], guidelines=spec["guidelines"], overlap=overlap
        )
        with (DEMO_DIR / spec["file"]).open("rb") as stream:
            import_comparisons(batch, stream, spec["file"], "canonical")
        activate_batch(batch)
    return accounts
