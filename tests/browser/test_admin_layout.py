"""Every admin list fits a 1366 px screen: no column is cut off or pushed out of sight."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from django.contrib.auth import get_user_model

from annotation_app.models import Batch, ModelVersion, TrainingRun
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.assignment import next_assignment
from annotation_app.services.batches import activate_batch
from annotation_app.services.imports import import_comparisons
from tests.browser.test_annotate_with_keyboard import sign_in
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHANGELISTS = [
    "batch",
    "comparison",
    "conversation",
    "assignment",
    "annotation",
    "modelversion",
    "trainingrun",
]


def busy_platform(make_user) -> Batch:
    """A few rows of everything, with long prompts, names and reasons."""
    batch = Batch.objects.create(
        name="Week 12: helpfulness of long multi-part questions", kind="helpfulness", overlap=2
    )
    records = [
        {
            "conversation": [
                {
                    "role": "user",
                    "content": f"Question {i}: please explain, step by step and with examples, "
                    "how a transformer language model decides which token comes next " * 3,
                }
            ],
            "responses": [
                {"text": f"A long first answer {i}. " * 20, "model_version": "policy-7b-chat-v3"},
                {"text": f"A long second answer {i}. " * 20, "model_version": "policy-7b-chat-v4"},
            ],
        }
        for i in range(6)
    ]
    lines = "\n".join(json.dumps(record) for record in records)
    import_comparisons(batch, io.BytesIO(lines.encode()), "week-12-long-questions.jsonl")
    activate_batch(batch)
    for name in ("annotator-with-a-long-name", "second-annotator"):
        user = make_user(username=name)
        for strength in ("significantly_better", "slightly_better", "better"):
            lease = next_assignment(user, batch=batch)
            judgement = Judgement("B", strength, rationale="B answers the question. " * 5)
            submit_annotation(user, lease.pk, judgement, uuid.uuid4())
    next_assignment(make_user(username="third"), batch=batch)  # a live lease
    policy = ModelVersion.objects.create(
        name="policy-7b-chat-v4-rejection-sampled",
        role="policy",
        path="/models/policy-7b-chat-v4-rejection-sampled",
        is_current=True,
    )
    ModelVersion.objects.create(
        name="reward-helpfulness-run-12", role="reward_helpfulness", path="/models/rm-12"
    )
    for status in ("running", "succeeded"):
        TrainingRun.objects.create(
            kind="reward_helpfulness",
            status=status,
            base_model=policy,
            metrics={"train_pairs": 1881, "eval_pairs": 470},
        )
    return batch


def test_every_admin_list_fits_a_laptop_screen(live_server, page, artifacts, make_user):
    batch = busy_platform(make_user)
    get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    page.set_viewport_size({"width": 1366, "height": 768})
    sign_in(page, live_server.url, "root")
    clipped = {}
    for model in CHANGELISTS:
        page.goto(f"{live_server.url}/admin/annotation_app/{model}/")
        page.locator("#result_list").wait_for()
        page.screenshot(path=artifacts / f"admin-{model}-list-1366.png")
        overflow = page.locator("#changelist .results").evaluate(
            "el => el.scrollWidth - el.clientWidth"
        )
        if overflow > 0:
            clipped[model] = overflow
    assert clipped == {}, f"lists wider than their box at 1366 px (px hidden): {clipped}"

    comparison = batch.comparisons.filter(annotation_count=2).first()
    for path, name in (
        (f"batch/{batch.pk}/change/", "admin-batch-form-1366.png"),
        (f"comparison/{comparison.pk}/change/", "admin-comparison-form-1366.png"),
    ):
        page.goto(f"{live_server.url}/admin/annotation_app/{path}")
        page.screenshot(path=artifacts / name, full_page=True)
        width = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert width <= 0, f"{path} scrolls sideways by {width} px"
