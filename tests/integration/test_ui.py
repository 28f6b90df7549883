"""The server-rendered pages without a browser: forms, redirects, escaping."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta

import pytest

from annotation_app.models import Annotation, Assignment, Batch, Comparison
from annotation_app.services.assignment import next_assignment
from annotation_app.services.batches import activate_batch
from annotation_app.services.imports import import_comparisons

pytestmark = pytest.mark.django_db


def lease_page(client):
    response = client.get("/annotate/")
    assert response.status_code == 302
    return response["Location"], client.get(response["Location"])


def form_key(html: str) -> str:
    return re.search(r'name="idempotency_key" value="([0-9a-f-]+)"', html).group(1)


def test_model_text_is_rendered_as_markdown_with_html_escaped(client, annotator):
    batch = Batch.objects.create(name="escaping", kind="helpfulness")
    record = {
        "conversation": [{"role": "user", "content": "Say <b>hi</b>"}],
        "responses": [
            {"text": "**Bold** <script>alert('x')</script> [link](javascript:alert(1))"},
            {"text": "Plain"},
        ],
    }
    import_comparisons(batch, io.BytesIO(json.dumps(record).encode()), "x.jsonl")
    activate_batch(batch)
    client.force_login(annotator)
    _, page = lease_page(client)
    html = page.content.decode()
    assert "<strong>Bold</strong>" in html
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert 'href="javascript:' not in html
    assert "<b>hi</b>" not in html


def test_a_double_posted_form_creates_one_annotation(client, annotator, make_batch):
    make_batch(comparisons=2)
    client.force_login(annotator)
    url, page = lease_page(client)
    form = {
        "rating": "A:better",
        "idempotency_key": form_key(page.content.decode()),
        "time_spent_ms": "1234",
    }
    first = client.post(url + "submit/", form)
    second = client.post(url + "submit/", form)
    assert first.status_code == second.status_code == 302
    assert Annotation.objects.count() == 1
    assert Annotation.objects.get().time_spent_ms == 1234


def test_an_incomplete_form_is_shown_again_with_the_problem(client, annotator, make_batch):
    make_batch("safety", comparisons=1)
    client.force_login(annotator)
    url, page = lease_page(client)
    key = form_key(page.content.decode())
    response = client.post(
        url + "submit/",
        {
            "rating": "B:slightly_better",
            "a_safety": "safe",
            "idempotency_key": key,
            "rationale": "kept",
        },
    )
    # Back to the task's own URL (a reload shows the same), every problem beside its control.
    assert response.status_code == 302 and response["Location"] == url
    for _ in range(2):
        html = client.get(url).content.decode()
        assert 'id="b_safety-error" >label response B safe or unsafe</p>' in html
        assert 'value="B:slightly_better" data-key="6" checked' in html
        assert 'name="a_safety" value="safe" checked' in html
        assert "kept</textarea>" in html
        assert form_key(html) == key  # the retry reuses the key
    assert Annotation.objects.count() == 0


def test_flag_and_skip_from_the_page(client, annotator, make_batch):
    make_batch(comparisons=2)
    client.force_login(annotator)
    url, _ = lease_page(client)
    client.post(url + "release/", {"action": "flag", "reason": "response is cut off"})
    url_two, _ = lease_page(client)
    assert url_two != url
    client.post(url_two + "release/", {"action": "skip"})
    statuses = sorted(Assignment.objects.values_list("status", "flag_reason"))
    assert statuses == [("flagged", "response is cut off"), ("skipped", "")]
    assert Comparison.objects.filter(flag_count=1).count() == 1
    response = client.get("/annotate/", follow=True)
    assert "Nothing left to annotate" in response.content.decode()


def test_a_finished_task_page_moves_on_to_the_next(client, annotator, make_batch):
    make_batch(comparisons=2)
    client.force_login(annotator)
    url, page = lease_page(client)
    client.post(
        url + "submit/", {"rating": "A:better", "idempotency_key": form_key(page.content.decode())}
    )
    response = client.get(url)
    assert response.status_code == 302 and "/annotate/" in response["Location"]


def test_a_task_page_whose_slot_went_to_another_annotator_says_so(
    client, annotator, make_batch, make_user
):
    make_batch(comparisons=1, overlap=1)
    client.force_login(annotator)
    url, _ = lease_page(client)
    lease = Assignment.objects.get(annotator=annotator)
    later = lease.expires_at + timedelta(minutes=1)
    assert next_assignment(make_user(), now=later).comparison_id == lease.comparison_id
    response = client.get(url, follow=True)
    assert "went to another annotator" in response.content.decode()
    assert "already done" not in response.content.decode()


def test_progress_page_shows_live_figures(client, batch_admin, annotator, make_batch):
    batch = make_batch(comparisons=2, overlap=2)
    client.force_login(annotator)
    url, page = lease_page(client)
    client.post(
        url + "submit/", {"rating": "A:better", "idempotency_key": form_key(page.content.decode())}
    )
    client.force_login(batch_admin)
    html = client.get(f"/batches/{batch.pk}/progress/").content.decode()
    assert (
        '<span data-field="annotations">1</span> of <span data-field="annotations_wanted">4' in html
    )
    assert annotator.username in html
