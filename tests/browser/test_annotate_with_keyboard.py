"""An annotator signs in and annotates three comparisons with the keyboard alone."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotation_app.models import Annotation, Response
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.locator("input[name=username]").focus()
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base_url}/")


def wait_for_task(page, timeout: float = 15_000) -> None:
    """Wait until a comparison page is shown and its keyboard shortcuts are live."""
    page.locator("#task[data-ready='true']").wait_for(timeout=timeout)


def press_rating(page, key: str) -> None:
    """Press a rating key and wait until the page shows the choice."""
    page.keyboard.press(key)
    expect(page.locator(f'input[name="rating"][data-key="{key}"]')).to_be_checked()


def slot_shown_as(page, side: str) -> int:
    """Which stored response the page shows as A or B, found by its text."""
    text = page.locator(f"#response-{side} .text.raw").text_content()
    return Response.objects.get(text=text).slot


def test_annotator_completes_three_comparisons_by_keyboard(
    live_server, page, artifacts, make_batch, make_user
):
    batch = make_batch("safety", comparisons=3, overlap=1, name="Keyboard safety batch")
    annotator = make_user(username="kate")
    sign_in(page, live_server.url, "kate")

    page.keyboard.press("Enter")  # "Start annotating" from the home page
    page.wait_for_url("**/tasks/*/")
    wait_for_task(page)
    page.screenshot(path=artifacts / "comparison-page-laptop.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=artifacts / "comparison-page-phone.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    # What we press on each page: rating key, safety keys, rationale, and what it must store.
    plan = [
        {
            "keys": ["3", "q", "o"],
            "rationale": None,
            "side": "A",
            "strength": "slightly_better",
            "safe": {"A": True, "B": True},
        },
        {
            "keys": ["8", "q", "p"],
            "rationale": "B explains the risk and still helps.",
            "side": "B",
            "strength": "significantly_better",
            "safe": {"A": True, "B": False},
        },
        {
            "keys": ["w", "o", "5"],
            "rationale": None,
            "side": "B",
            "strength": "negligibly_better",
            "safe": {"A": False, "B": True},
        },
    ]
    expected = []
    for step in plan:
        wait_for_task(page)
        url = page.url
        shown = {"A": slot_shown_as(page, "A"), "B": slot_shown_as(page, "B")}
        comparison_id = Response.objects.get(
            text=page.locator("#response-A .text.raw").text_content()
        ).comparison_id
        for key in step["keys"]:
            if key.isdigit():
                press_rating(page, key)
            else:
                page.keyboard.press(key)
        if step["rationale"]:
            page.keyboard.press("r")
            page.keyboard.type(step["rationale"])
            page.keyboard.press("Escape")
        page.keyboard.press("Enter")
        page.wait_for_url(lambda new_url, old=url: new_url != old)
        expected.append((comparison_id, shown, step))

    assert page.url.rstrip("/") == live_server.url  # no work left: back home
    assert "Nothing left to annotate" in page.content()

    annotations = {a.comparison_id: a for a in Annotation.objects.filter(annotator=annotator)}
    assert len(annotations) == 3
    for comparison_id, shown, step in expected:
        annotation = annotations[comparison_id]
        assert annotation.comparison.batch_id == batch.pk
        assert annotation.preferred_slot == shown[step["side"]]
        assert annotation.strength == step["strength"]
        assert annotation.is_safe(shown["A"]) is step["safe"]["A"]
        assert annotation.is_safe(shown["B"]) is step["safe"]["B"]
        assert annotation.left_slot == shown["A"]
        assert annotation.rationale == (step["rationale"] or "")
        assert annotation.time_spent_ms is not None and annotation.time_spent_ms > 0


def test_missing_safety_label_is_refused_and_keeps_the_choice(
    live_server, page, make_batch, make_user
):
    make_batch("safety", comparisons=1, overlap=1)
    make_user(username="sam")
    sign_in(page, live_server.url, "sam")
    page.keyboard.press("Enter")
    wait_for_task(page)
    press_rating(page, "2")
    page.keyboard.press("q")  # B left unlabelled
    page.keyboard.press("Enter")
    page.locator("#form-error").wait_for()
    assert "label response B safe or unsafe" in page.locator("#form-error").inner_text()
    assert page.locator('input[name="rating"][data-key="2"]').is_checked()
    assert Annotation.objects.count() == 0
    page.keyboard.press("p")
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: "/tasks/" not in url)
    assert Annotation.objects.get().strength == "better"
