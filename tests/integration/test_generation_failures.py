"""Generation that cannot succeed: visible to admins with its error, and retried from the admin."""

from __future__ import annotations

import io

import pytest
from django.utils.html import escape

from annotation_app.models import Batch, Comparison, ModelVersion
from annotation_app.services.batches import activate_batch
from annotation_app.services.imports import import_comparisons
from annotation_app.services.registry import register_model
from tests.api_errors import error_fields, error_messages
from tests.conftest import FAST_PLAN, prompt_lines

pytestmark = pytest.mark.django_db


def prompts_batch(plan=FAST_PLAN) -> Batch:
    batch = Batch.objects.create(name="gen", kind="helpfulness", sampling_plan=plan)
    import_comparisons(batch, io.BytesIO(prompt_lines(2)), "prompts.jsonl")
    return batch


def test_without_a_policy_comparisons_fail_with_the_reason(django_capture_on_commit_callbacks):
    batch = prompts_batch()
    with django_capture_on_commit_callbacks(execute=True):
        activate_batch(batch)
    errors = set(batch.comparisons.values_list("status", "generation_error"))
    assert len(errors) == 1
    status, error = errors.pop()
    assert status == Comparison.Status.FAILED
    assert "no current policy model" in error and "register_model" in error


def test_a_broken_model_fails_after_retries_and_an_admin_retries_it(
    tmp_path, tiny_policy_dir, batch_admin, client, django_capture_on_commit_callbacks
):
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    (broken_dir / "config.json").write_text("{}")  # no model_type: cannot load
    broken = register_model(str(broken_dir), "policy", name="broken", make_current=True)
    batch = prompts_batch()
    with django_capture_on_commit_callbacks(execute=True):
        activate_batch(batch)
    failed = list(batch.comparisons.all())
    assert {c.status for c in failed} == {Comparison.Status.FAILED}
    assert all(c.generation_error for c in failed)

    client.force_login(batch_admin)
    listing = client.get("/admin/annotation_app/comparison/", {"status__exact": "failed"})
    assert listing.status_code == 200 and "Generation failed" in listing.content.decode()
    page = client.get(f"/admin/annotation_app/comparison/{failed[0].pk}/change/")
    assert escape(failed[0].generation_error.splitlines()[0][:40]) in page.content.decode()

    ModelVersion.objects.filter(pk=broken.pk).update(path=str(tiny_policy_dir))  # fixed
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/admin/annotation_app/comparison/",
            {"action": "retry_generation", "_selected_action": [c.pk for c in failed]},
        )
    assert response.status_code == 302
    assert set(batch.comparisons.values_list("status", flat=True)) == {"ready"}
    assert set(batch.comparisons.values_list("generation_error", flat=True)) == {""}


def test_bad_sampling_plans_are_refused_with_the_field(batch_admin, api_client):
    api_client.force_authenticate(batch_admin)
    response = api_client.post(
        "/api/v1/batches/",
        {
            "name": "bad plan",
            "kind": "helpfulness",
            "sampling_plan": {"sides": [{"temperature": 0.7}, {"top_p": 1.5}]},
        },
        format="json",
    )
    assert response.status_code == 400
    assert error_fields(response) == {"sampling_plan"}
    assert "sampling_plan.sides[1].top_p" in error_messages(response)
    assert not Batch.objects.exists()
