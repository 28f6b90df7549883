"""The platform's command line: what a batch admin or ML staff member types, and what it says.

Each refusal names the problem and leaves the database as it was.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import threading
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation_app.models import (
    Annotation,
    Assignment,
    Batch,
    Comparison,
    ModelVersion,
    Response,
)
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.assignment import next_assignment
from annotation_app.services.registry import register_model
from tests.conftest import FAST_PLAN, ROOT, comparison_lines, prompt_lines
from tests.workers import _database_url

pytestmark = pytest.mark.django_db


def trl_lines(count: int, prefix: str = "Question") -> bytes:
    """TRL pairs, as an imported dataset: each comparison gets a reference preference."""
    return "".join(
        json.dumps(
            {"prompt": f"{prefix} {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad {i}."}
        )
        + "\n"
        for i in range(count)
    ).encode()


def row_counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (Batch, Comparison, Response, Annotation, ModelVersion)
    }


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --- import_comparisons, activate_batch, close_batch --------------------------------------------


def test_create_says_the_batch_is_a_draft_with_its_overlap_and_how_to_activate_it(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(comparison_lines(3))
    out, _ = run("import_comparisons", str(path), "--batch", "Week 1", "--create", "helpfulness")
    assert "Created the batch 'Week 1': helpfulness, a draft, overlap 1" in out
    assert "python manage.py activate_batch 'Week 1'" in out
    batch = Batch.objects.get(name="Week 1")
    assert (batch.status, batch.overlap, batch.comparisons.count()) == ("draft", 1, 3)

    out, _ = run(
        "import_comparisons", str(path), "--batch", "Week 2", "--create", "safety", "--overlap", "3"
    )
    assert "safety, a draft, overlap 3" in out
    assert Batch.objects.get(name="Week 2").overlap == 3


def test_overlap_is_refused_for_an_existing_batch_and_nothing_is_imported(make_batch, tmp_path):
    batch = make_batch(comparisons=1, active=False, name="Existing")
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(comparison_lines(2))
    before = row_counts()
    with pytest.raises(CommandError, match=r"--overlap applies to a batch that --create creates"):
        run("import_comparisons", str(path), "--batch", batch.name, "--overlap", "2")
    with pytest.raises(CommandError, match="--overlap must be at least 1, not 0"):
        run(
            "import_comparisons",
            str(path),
            "--batch",
            "New",
            "--create",
            "safety",
            "--overlap",
            "0",
        )
    assert row_counts() == before


def test_importing_the_same_file_again_is_refused_unless_asked(make_batch, tmp_path):
    batch = make_batch(comparisons=0, active=False, name="Week 4")
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(comparison_lines(3))
    run("import_comparisons", str(path), "--batch", "Week 4")
    again = tmp_path / "renamed.jsonl.gz"  # another name, compressed: the same content
    again.write_bytes(gzip.compress(path.read_bytes()))
    before = row_counts()
    with pytest.raises(CommandError) as refused:
        run("import_comparisons", str(again), "--batch", "Week 4")
    assert "this file was already imported into batch 'Week 4'" in str(refused.value)
    assert "--allow-duplicate" in str(refused.value)
    assert row_counts() == before

    out, _ = run("import_comparisons", str(again), "--batch", "Week 4", "--allow-duplicate")
    assert "Imported 3 comparisons" in out
    assert batch.comparisons.count() == 6


def test_activate_and_close_a_batch_from_the_command_line(make_batch):
    batch = make_batch(comparisons=3, active=False, name="Week 3", overlap=2)
    out, _ = run("activate_batch", "Week 3")
    assert "Activated 'Week 3' (helpfulness, overlap 2): 3 comparisons: 3 ready." in out
    batch.refresh_from_db()
    assert batch.status == Batch.Status.ACTIVE

    with pytest.raises(CommandError, match="batch 'Week 3' is already active"):
        run("activate_batch", "Week 3")
    out, _ = run("close_batch", "Week 3")
    assert "Closed 'Week 3': 3 comparisons" in out
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CLOSED
    with pytest.raises(CommandError, match="batch 'Week 3' is already closed"):
        run("close_batch", "Week 3")
    with pytest.raises(CommandError, match="no batch named 'Week 9'"):
        run("activate_batch", "Week 9")


@pytest.mark.django_db(transaction=True)  # commits, as a real command's: work is sent then
def test_activating_a_prompt_batch_generates_its_responses_before_the_command_ends(
    make_batch, tiny_policy, tmp_path, settings, eager_tasks
):
    """Without a broker, tasks run in the command's own process: inline, even where the
    settings say a background thread (the demo's), which would die with the command."""
    settings.PAIRWISE_EAGER_IN_THREAD = True
    batch = make_batch(comparisons=0, active=False, name="Prompts", sampling_plan=FAST_PLAN)
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(prompt_lines(2))
    run("import_comparisons", str(path), "--batch", "Prompts")
    out, _ = run("activate_batch", "Prompts")
    assert "Activated 'Prompts' (helpfulness, overlap 1): 2 comparisons: 2 ready." in out
    assert Response.objects.filter(comparison__batch=batch).count() == 4
    assert set(batch.comparisons.values_list("status", flat=True)) == {"ready"}


@pytest.mark.django_db(transaction=True)
def test_prompts_imported_into_an_active_batch_are_generated_before_the_command_ends(
    tiny_policy, tmp_path, settings, eager_tasks
):
    """The same for an import: its transaction commits (and relays) while the command still
    says inline, not after it has stopped saying so."""
    settings.PAIRWISE_EAGER_IN_THREAD = True
    batch = Batch.objects.create(
        name="Live", kind="helpfulness", status=Batch.Status.ACTIVE, sampling_plan=FAST_PLAN
    )
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(prompt_lines(2))
    run("import_comparisons", str(path), "--batch", "Live")
    assert not [t for t in threading.enumerate() if t.name.startswith("pairwise-outbox-")]
    assert Response.objects.filter(comparison__batch=batch).count() == 4
    assert set(batch.comparisons.values_list("status", flat=True)) == {"ready"}


def test_an_empty_batch_cannot_be_activated(make_batch):
    make_batch(comparisons=0, active=False, name="Empty")
    with pytest.raises(CommandError, match="has no comparisons yet; import some first"):
        run("activate_batch", "Empty")
    assert Batch.objects.get(name="Empty").status == Batch.Status.DRAFT


# --- register_model -----------------------------------------------------------------------------


def test_a_registered_path_is_not_registered_twice(tiny_policy_dir, api_client, ml_staff):
    first = register_model(str(tiny_policy_dir), "policy", name="first")
    before = row_counts()
    with pytest.raises(CommandError) as refused:
        run("register_model", str(tiny_policy_dir), "--role", "policy", "--name", "again")
    message = str(refused.value)
    assert f"is already registered as 'first' (id {first.pk}" in message
    assert "not current: promote it to use it" in message
    assert "(to promote it, add --current)" in message
    assert row_counts() == before

    # The API uses the same service: a conflict, naming the version.
    api_client.force_authenticate(ml_staff)
    response = api_client.post(
        "/api/v1/models/", {"path": str(tiny_policy_dir), "role": "policy"}, format="json"
    )
    assert response.status_code == 409
    assert "already registered as 'first'" in response.json()["detail"]
    assert row_counts() == before

    # --current promotes the registered version instead of adding one.
    out, _ = run("register_model", str(tiny_policy_dir), "--role", "policy", "--current")
    assert "was already registered as first; it is now the current policy" in out
    assert row_counts() == before
    first.refresh_from_db()
    assert first.is_current
    # Another role is another version: the same backbone may be a reward model's base.
    run("register_model", str(tiny_policy_dir), "--role", "reward_safety")
    assert ModelVersion.objects.filter(path=first.path).count() == 2


# --- export_preferences -------------------------------------------------------------------------


def annotate_one(batch: Batch, user) -> None:
    lease = next_assignment(user, batch=batch)
    Assignment.objects.filter(pk=lease.pk).update(left_slot=1)
    submit_annotation(user, lease.pk, Judgement("A", "better"), uuid.uuid4())


def test_an_empty_export_says_why_and_offers_the_reference_preferences(make_batch, tmp_path):
    batch = make_batch(comparisons=0, active=False, name="HH import")
    path = tmp_path / "hh.jsonl"
    path.write_bytes(trl_lines(3))
    run("import_comparisons", str(path), "--batch", batch.name)
    out_file = tmp_path / "train.jsonl"

    _, err = run("export_preferences", "--format", "trl", "--out", str(out_file))
    assert "exported 0 records (trl)" in err
    assert "there are no annotations in any batch yet" in err
    assert "3 imported comparisons hold reference preferences: add --include-reference " in err
    assert out_file.read_text() == ""
    _, err = run("export_preferences", "--out", str(out_file))  # canonical: trl is needed
    assert "add --format trl --include-reference to export them as unrated pairs" in err

    _, err = run(
        "export_preferences", "--format", "trl", "--include-reference", "--out", str(out_file)
    )
    assert "exported 3 records (trl)" in err
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert {record["chosen"][0]["content"] for record in records} == {
        "Good answer 0.",
        "Good answer 1.",
        "Good answer 2.",
    }
    assert {record["margin"] for record in records} == {0.0}
    assert {record["strength"] for record in records} == {None}


def test_an_empty_export_of_named_batches_names_them(make_batch, tmp_path):
    make_batch(comparisons=2, name="Fresh")
    _, err = run("export_preferences", "--batch", "Fresh", "--out", str(tmp_path / "x.jsonl"))
    assert "there are no annotations in the batch 'Fresh' yet" in err
    assert "nor imported comparisons with a reference preference" in err


def test_reference_preferences_are_a_trl_export_only(tmp_path):
    out_file = tmp_path / "x.jsonl"
    with pytest.raises(CommandError, match="--include-reference needs --format trl"):
        run("export_preferences", "--include-reference", "--out", str(out_file))
    assert not out_file.exists()


def test_the_export_counter_stays_off_stderr_when_it_is_not_a_terminal(
    make_batch, annotator, tmp_path
):
    batch = make_batch(comparisons=2)
    annotate_one(batch, annotator)
    _, err = run("export_preferences", "--out", str(tmp_path / "x.jsonl"))
    assert "\r" not in err and "[#" not in err
    assert err.strip().endswith("exported 1 records (canonical) to " + str(tmp_path / "x.jsonl"))


@pytest.mark.django_db(transaction=True)
def test_export_into_a_pipe_closed_early_ends_quietly(make_batch, annotator, tmp_path):
    """``manage.py export_preferences --out - | head -n 1``: no BrokenPipe traceback.

    The export (about 1 MB) is far larger than a pipe's buffer, so the command is still writing
    when ``head`` exits."""
    batch = make_batch(comparisons=0, active=False)
    long_text = "word " * 4000
    records = [
        {
            "conversation": [{"role": "user", "content": f"Question {i}?"}],
            "responses": [{"text": f"A {i}. {long_text}"}, {"text": f"B {i}. {long_text}"}],
        }
        for i in range(25)
    ]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    run("import_comparisons", str(path), "--batch", batch.name)
    run("activate_batch", batch.name)
    for _ in records:
        annotate_one(batch, annotator)
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": _database_url(),
        "PYTHONPATH": str(ROOT),
    }
    command = f"{sys.executable} manage.py export_preferences --out - | head -n 1"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert json.loads(done.stdout)["batch"]["name"] == batch.name  # head got its one line
    # The export ended as Unix tools do when their reader goes: 128 + SIGPIPE, and nothing said.
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""
