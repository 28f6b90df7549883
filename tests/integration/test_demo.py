"""The demo command sets up users in every role and annotatable batches, generation included."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotation_app.models import Batch, Comparison, ModelVersion, Response
from annotation_app.services.assignment import next_assignment
from annotation_app.services.demo import DEMO_PASSWORD

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
    assert f"Policy: policy (PAIRWISE_POLICY) ({tiny_policy_dir})" in printed

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


def test_demo_builds_a_tiny_policy_when_none_is_configured(settings, tmp_path):
    settings.PAIRWISE_POLICY = ""
    settings.VAR_DIR = tmp_path
    out = io.StringIO()
    call_command("demo", "--no-serve", stdout=out)
    assert "tiny, untrained Llama" in out.getvalue()
    assert "PAIRWISE_POLICY=../shared/models/stories260K-hf" in out.getvalue()
    policy = ModelVersion.objects.get(is_current=True, role="policy")
    assert (tmp_path / "models" / "tiny-demo-policy" / "config.json").exists()
    assert policy.path == str(tmp_path / "models" / "tiny-demo-policy")
