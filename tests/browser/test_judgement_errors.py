"""A judgement with missing choices: every problem at once, beside its control, at the same URL.

The page checks before sending (no round trip); without JavaScript the server refuses the same
way and sends the annotator back to the task's own URL, where a reload keeps what was chosen.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from annotation_app.models import Annotation
from tests.browser.test_annotate_with_keyboard import press_rating, sign_in, wait_for_task

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MISSING_A = "label response A safe or unsafe"
MISSING_B = "label response B safe or unsafe"
TASK_URL = re.compile(r"/tasks/\d+/$")


def test_every_missing_label_is_shown_beside_its_control(
    live_server, page, artifacts, make_batch, make_user
):
    make_batch("safety", comparisons=1, overlap=1)
    make_user(username="lena")
    sign_in(page, live_server.url, "lena")
    page.keyboard.press("Enter")
    wait_for_task(page)
    url = page.url

    press_rating(page, "2")
    page.keyboard.press("Enter")  # no safety label at all
    expect(page.locator("#a_safety-error")).to_have_text(MISSING_A)
    expect(page.locator("#b_safety-error")).to_have_text(MISSING_B)
    expect(page.locator("#form-error li")).to_have_text([MISSING_A, MISSING_B])
    # Beside the controls, below the responses; not a new page.
    assert page.locator("#a_safety-error").evaluate("el => !!el.closest('#response-A')")
    error_top = page.locator("#form-error").bounding_box()["y"]
    assert error_top > page.locator("#response-A").bounding_box()["y"]
    assert page.url == url
    page.screenshot(path=artifacts / "judgement-errors-1366.png")

    page.keyboard.press("q")  # fixing one clears its message at once
    expect(page.locator("#a_safety-error")).to_be_hidden()
    expect(page.locator("#form-error li")).to_have_text([MISSING_B])

    page.reload()  # what was chosen survives a reload
    wait_for_task(page)
    expect(page.locator('input[name="rating"][data-key="2"]')).to_be_checked()
    expect(page.locator('input[name="a_safety"][value="safe"]')).to_be_checked()
    assert Annotation.objects.count() == 0

    page.keyboard.press("p")
    page.keyboard.press("Enter")
    page.wait_for_url(lambda current: "/tasks/" not in current)
    annotation = Annotation.objects.get()
    assert annotation.strength == "better" and annotation.safety_bin


def test_without_javascript_the_server_refuses_the_same_way_at_the_same_url(
    live_server, browser, make_batch, make_user
):
    make_batch("safety", comparisons=1, overlap=1)
    make_user(username="nojs")
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": 1366, "height": 768}
    )
    page = context.new_page()
    page.set_default_timeout(15_000)
    sign_in(page, live_server.url, "nojs")
    page.goto(f"{live_server.url}/annotate/")
    expect(page).to_have_url(TASK_URL)
    url = page.url

    page.locator("label.scale-option", has_text="Slightly better").first.click()  # A: rating 3
    page.locator("#submit").click()
    page.wait_for_load_state()
    assert page.url == url  # back at the task's own URL, not /submit/
    expect(page.locator("#a_safety-error")).to_have_text(MISSING_A)
    expect(page.locator("#b_safety-error")).to_have_text(MISSING_B)
    expect(page.locator("#a_safety-error")).to_be_visible()

    page.reload()  # the problems and the choice are still there
    expect(page.locator("#b_safety-error")).to_have_text(MISSING_B)
    expect(page.locator('input[name="rating"][data-key="3"]')).to_be_checked()
    assert Annotation.objects.count() == 0
    context.close()
