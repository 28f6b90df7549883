"""Long texts are readable to the end with the keyboard alone, and what was cut is said.

A response taller than its box scrolls inside it (Tab or "a"/"b" focus it, then End, Page Down,
the arrow keys) and shows a cue while there is more below; "e" shows every text whole. A
response stopped at the token limit ends with a marker, and a context the model saw only the
end of is announced above the responses.
"""

from __future__ import annotations

import io
import json
import re
import uuid

import pytest
from playwright.sync_api import expect

from annotation_app.models import Batch, Comparison, Response
from annotation_app.services import assignment as assignment_service
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.batches import activate_batch
from annotation_app.services.imports import import_comparisons
from tests.browser.test_annotate_with_keyboard import sign_in, wait_for_task

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}


def long_text(name: str, paragraphs: int = 40) -> str:
    body = [
        f"Paragraph {i} of the {name}: " + "several plain words " * 12 for i in range(paragraphs)
    ]
    return "\n\n".join([*body, f"The last sentence of the {name}."])


def long_comparison_batch(**fields) -> Batch:
    """One comparison whose prompt and both responses are far longer than their boxes."""
    batch = Batch.objects.create(
        name=fields.pop("name", "Long texts"), kind="helpfulness", **fields
    )
    record = {
        "conversation": [{"role": "user", "content": long_text("prompt", paragraphs=30)}],
        "responses": [{"text": long_text("first answer")}, {"text": long_text("second answer")}],
    }
    import_comparisons(batch, io.BytesIO(json.dumps(record).encode()), "long.jsonl")
    activate_batch(batch)
    return batch


def side_showing(page, name: str) -> str:
    """ "A" or "B": where the page shows the response whose text starts with ``name``'s."""
    text = page.locator("#response-A .text.raw").text_content()
    return "A" if f"of the {name}:" in text else "B"


def page_down_until_visible(page, locator, presses: int = 40) -> None:
    """Press Page Down (keyboard only) until ``locator`` is wholly on the screen."""
    for _ in range(presses):
        if locator.evaluate(
            "el => { const r = el.getBoundingClientRect();"
            " return r.top >= 0 && r.bottom <= window.innerHeight; }"
        ):
            return
        page.keyboard.press("PageDown")


def test_a_long_response_is_read_to_its_end_with_the_keyboard(
    live_server, browser, artifacts, make_user
):
    batch = long_comparison_batch()
    comparison = Comparison.objects.get(batch=batch)
    # The second answer was stopped by the token limit; both models lost the prompt's start.
    responses = Response.objects.filter(comparison=comparison)
    responses.update(prompt_tokens_dropped=120, finish_reason="stop")
    responses.filter(text__contains="of the second answer:").update(
        finish_reason="length", sampling_params={"max_new_tokens": 256}
    )
    make_user(username="rita")
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.set_default_timeout(15_000)
    sign_in(page, live_server.url, "rita")
    page.keyboard.press("Enter")
    wait_for_task(page)
    page.screenshot(path=artifacts / "reading-task-1366.png")

    first, second = side_showing(page, "first answer"), side_showing(page, "second answer")
    assert {first, second} == {"A", "B"}
    body = page.locator(f"#response-{first}-body")
    last = body.locator(".text.rendered > p:last-child")
    expect(last).to_have_text("The last sentence of the first answer.")

    # Clipped, and the page says so: a shadow at the box's bottom and a "show" button.
    expect(last).not_to_be_in_viewport()
    expect(body).to_have_class(re.compile(r"\bmore-below\b"))
    cue = page.locator(f"#response-{first} .more-cue")
    expect(cue).to_be_visible()
    expect(cue).to_contain_text("Show the whole response")
    expect(page.locator(".context-reader .more-cue")).to_be_visible()

    # Scrolling path: "a"/"b" focuses the box, End scrolls it to its last sentence.
    page.keyboard.press(first.lower())
    expect(body).to_be_focused()
    page.keyboard.press("End")
    expect(last).to_be_in_viewport()
    expect(body).not_to_have_class(re.compile(r"\bmore-below\b"))

    # The cut response ends with its marker; the lost context is announced.
    marker = page.locator(f"#response-{second}-cut")
    expect(marker).to_have_text("…cut at the 256-token limit")
    expect(page.locator(f"#response-{first}-cut")).to_have_count(0)
    expect(page.locator("#context-cut")).to_contain_text(
        "The model saw only the last part of this conversation: "
        "120 tokens were cut from its beginning."
    )

    # Expanding path: "e" shows every text whole; the page then scrolls to the marker.
    page.keyboard.press("e")
    second_body = page.locator(f"#response-{second}-body")
    expect(second_body).to_have_class(re.compile(r"\bexpanded\b"))
    assert second_body.evaluate("el => el.scrollHeight <= el.clientHeight + 1")
    expect(page.locator(f"#response-{second} .more-cue")).to_have_attribute("aria-expanded", "true")
    expect(page.locator(f"#response-{second} .more-cue")).to_contain_text("Show less")
    page.keyboard.press(second.lower())
    page_down_until_visible(page, marker)
    expect(marker).to_be_in_viewport()
    expect(second_body.locator(".text.rendered > p:last-child")).to_be_in_viewport()
    page.screenshot(path=artifacts / "reading-task-expanded-1366.png")
    page.set_viewport_size(PHONE)
    page.screenshot(path=artifacts / "reading-task-phone.png", full_page=True)
    page.set_viewport_size(LAPTOP)

    page.keyboard.press("e")  # and boxed again
    expect(second_body).not_to_have_class(re.compile(r"\bexpanded\b"))
    expect(marker).not_to_be_in_viewport()
    context.close()


def test_the_chosen_reply_on_the_continue_page_is_readable_with_the_keyboard(
    live_server, browser, artifacts, make_user
):
    annotator = make_user(username="carl")
    batch = long_comparison_batch(name="Long dialogue", allow_annotator_prompts=True, max_turns=2)
    comparison = Comparison.objects.get(batch=batch)
    comparison.conversation.created_by = annotator  # their own dialogue: they may continue it
    comparison.conversation.save(update_fields=["created_by"])
    assignment = assignment_service.next_assignment(annotator, batch=batch)
    annotation, _ = submit_annotation(
        annotator, assignment.pk, Judgement("A", "better"), uuid.uuid4()
    )
    chosen = Response.objects.get(comparison=comparison, slot=annotation.preferred_slot)
    chosen_name = "first answer" if "of the first answer:" in chosen.text else "second answer"

    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.set_default_timeout(15_000)
    sign_in(page, live_server.url, "carl")
    page.goto(f"{live_server.url}/tasks/{assignment.pk}/continue/")
    expect(page.locator("#next-turn")).to_be_focused()
    body = page.locator("#response-chosen-body")
    last = body.locator(".text.rendered > p:last-child")
    expect(last).to_have_text(f"The last sentence of the {chosen_name}.")
    expect(last).not_to_be_in_viewport()
    page.screenshot(path=artifacts / "reading-continue-1366.png")

    # From the reply box, Shift+Tab reaches "Show the whole response"; Enter shows it whole.
    page.keyboard.press("Shift+Tab")
    cue = page.locator("#response-chosen .more-cue")
    expect(cue).to_be_focused()
    page.keyboard.press("Enter")
    expect(cue).to_have_attribute("aria-expanded", "true")
    assert body.evaluate("el => el.scrollHeight <= el.clientHeight + 1")
    page_down_until_visible(page, last)
    expect(last).to_be_in_viewport()
    context.close()
