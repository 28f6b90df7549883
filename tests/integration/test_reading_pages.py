"""What annotators are told on the pages: cut responses, a context the model saw only part of,
comparisons still being generated, and batches that take no written prompts."""

from __future__ import annotations

import io

import pytest

from annotation_app.models import Comparison, Conversation, ModelVersion, Response
from annotation_app.selectors import annotator_queue
from annotation_app.services.generation import store_results
from annotation_app.services.imports import import_comparisons

pytestmark = pytest.mark.django_db


def leased_task(client) -> str:
    response = client.get("/annotate/")
    assert response.status_code == 302 and "/tasks/" in response["Location"]
    return response["Location"]


def test_a_response_cut_at_the_token_limit_ends_with_a_marker(client, annotator, make_batch):
    batch = make_batch(comparisons=1)
    responses = Response.objects.filter(comparison__batch=batch)
    responses.filter(slot=1).update(finish_reason="length", sampling_params={"max_new_tokens": 64})
    responses.filter(slot=2).update(finish_reason="stop")
    client.force_login(annotator)
    html = client.get(leased_task(client)).content.decode()
    assert html.count('class="cut-marker"') == 1
    assert "cut at the 64-token limit</p>" in html
    assert 'id="context-cut"' not in html  # the model saw the whole context


def test_each_show_whole_text_button_says_its_key_shows_every_text(client, annotator, make_batch):
    make_batch(comparisons=1)
    client.force_login(annotator)
    html = client.get(leased_task(client)).content.decode()
    # The dialogue's box and both responses': "e" toggles all three at once.
    assert html.count('class="more-cue"') == 3
    assert html.count('<span class="hint">(<kbd>e</kbd> all texts)</span></button>') == 3


@pytest.mark.parametrize(
    ("dropped", "notice"),
    [
        (
            (120, 120),
            "The model saw only the last part of this conversation: 120 tokens were cut from "
            "its beginning.",
        ),
        (
            (1, 1),
            "The model saw only the last part of this conversation: 1 token was cut from its "
            "beginning.",
        ),
    ],
)
def test_a_context_cut_for_the_model_is_announced(client, annotator, make_batch, dropped, notice):
    batch = make_batch(comparisons=1)
    for slot, count in zip((1, 2), dropped, strict=True):
        Response.objects.filter(comparison__batch=batch, slot=slot).update(
            prompt_tokens_dropped=count
        )
    client.force_login(annotator)
    html = client.get(leased_task(client)).content.decode()
    assert notice in html


@pytest.mark.parametrize(("slot_1", "slot_2"), [(300, 0), (0, 300), (300, 120)])
def test_different_cuts_are_one_notice_that_names_no_response(
    client, annotator, make_batch, slot_1, slot_2
):
    """Per-response counts would hint that the two sides come from different models."""
    batch = make_batch(comparisons=1)
    for slot, count in ((1, slot_1), (2, slot_2)):
        Response.objects.filter(comparison__batch=batch, slot=slot).update(
            prompt_tokens_dropped=count
        )
    client.force_login(annotator)
    task_html = client.get(leased_task(client)).content.decode()
    assert (
        '<p class="notice" id="context-cut" role="note">The model saw only the last part of this '
        "conversation: up to 300 tokens were cut from its beginning. <span" in task_html
    )
    assert "for response" not in task_html


def test_the_home_page_says_how_many_comparisons_are_being_generated(
    client, annotator, make_batch, django_assert_max_num_queries
):
    batch = make_batch(comparisons=3, name="Week 1")
    other = make_batch(comparisons=2, name="Week 2")
    waiting = Comparison.objects.filter(batch=batch).order_by("pk")[:2]
    Comparison.objects.filter(pk__in=[c.pk for c in waiting]).update(status="waiting")

    queue = {item["batch"].name: item for item in annotator_queue(annotator)}
    assert (queue["Week 1"]["available"], queue["Week 1"]["generating"]) == (1, 2)
    assert (queue["Week 2"]["available"], queue["Week 2"]["generating"]) == (2, 0)

    client.force_login(annotator)
    html = client.get("/").content.decode()
    assert f'id="generating-{batch.pk}"' in html
    assert "2 comparisons are being generated" in html
    assert f'id="generating-{other.pk}"' not in html

    # One grouped query for all batches: a third batch adds only its own "available" count.
    with django_assert_max_num_queries(4) as counted:
        annotator_queue(annotator)
    before = len(counted.captured_queries)
    make_batch(comparisons=1, name="Week 3")
    with django_assert_max_num_queries(before + 1):
        annotator_queue(annotator)


def test_a_batch_without_written_prompts_says_so_up_front(client, annotator, make_batch):
    closed_to_prompts = make_batch(comparisons=1, name="Imported only")
    open_to_prompts = make_batch(comparisons=1, name="Dialogues", allow_annotator_prompts=True)
    client.force_login(annotator)

    home = client.get("/").content.decode()
    assert f'href="/batches/{open_to_prompts.pk}/write/"' in home
    assert f'href="/batches/{closed_to_prompts.pk}/write/"' not in home

    for method in (client.get, client.post):
        response = method(f"/batches/{closed_to_prompts.pk}/write/", {"prompt": "Hello"})
        html = response.content.decode()
        assert response.status_code == 409
        assert "This batch does not take written prompts" in html
        assert 'id="write-form"' not in html
        assert f'href="/annotate/?batch={closed_to_prompts.pk}"' in html
    assert not Conversation.objects.filter(created_by=annotator).exists()

    form = client.get(f"/batches/{open_to_prompts.pk}/write/")
    assert form.status_code == 200 and 'id="write-form"' in form.content.decode()


def test_what_a_worker_reports_about_cuts_is_stored_with_the_response(make_batch):
    batch = make_batch(comparisons=0, active=False)
    import_comparisons(batch, io.BytesIO(b'"Tell me a story."\n'), "prompts.jsonl")
    comparison = Comparison.objects.get(batch=batch)
    policy = ModelVersion.objects.create(name="tiny", role="policy", path="/models/tiny")
    result = {
        "comparison": comparison.pk,
        "model_version": policy.pk,
        "params": {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 8, "seed": 3},
        "seed": 3,
        "prompt_tokens": 40,
        "completion_tokens": 8,
        "latency_ms": 12,
    }
    store_results(
        [
            {
                **result,
                "slot": 1,
                "text": "Once upon a ti",
                "finish_reason": "length",
                "prompt_tokens_dropped": 17,
            },
            {
                **result,
                "slot": 2,
                "text": "The end.",
                "finish_reason": "stop",
                "prompt_tokens_dropped": 0,
            },
        ]
    )
    stored = {
        r.slot: (r.finish_reason, r.prompt_tokens_dropped) for r in comparison.responses.all()
    }
    assert stored == {1: ("length", 17), 2: ("stop", 0)}
