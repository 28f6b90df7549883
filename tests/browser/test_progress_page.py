"""In Chromium: the progress page follows a batch live, and its poll stays cheap.

The page's clock is Playwright's, paused (timers run when the test says), the requests real: the
figures follow a new annotation at the next poll, no request goes out while the tab is hidden,
one goes out as soon as it is shown again, and none once the batch is closed.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from playwright.sync_api import expect

from annotation_app.roles import Role
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.assignment import next_assignment
from annotation_app.services.batches import close_batch
from tests.browser.test_annotate_with_keyboard import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SET_HIDDEN = """hidden => {
  Object.defineProperty(document, "hidden", { value: hidden, configurable: true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def polls_reach(page, polls: list[str], count: int) -> int:
    """Let the page's network events arrive (up to 3 s) until ``count`` polls are seen."""
    for _ in range(60):
        if len(polls) >= count:
            break
        page.wait_for_timeout(50)
    page.wait_for_timeout(200)  # and one more would have arrived by now
    return len(polls)


def test_the_progress_page_polls_while_shown_and_until_the_batch_closes(
    live_server, page, make_user, make_batch, annotator
):
    batch = make_batch(comparisons=2)
    make_user(Role.BATCH_ADMIN, username="bea", is_staff=True)
    api = f"/api/v1/batches/{batch.pk}/progress/"
    polls: list[str] = []
    page.on("requestfinished", lambda request: api in request.url and polls.append(request.url))
    page.clock.install()
    sign_in(page, live_server.url, "bea")
    page.goto(f"{live_server.url}/batches/{batch.pk}/progress/")
    page.clock.pause_at(datetime.now() + timedelta(seconds=1))  # from now on, the test's time
    annotations = page.locator('[data-field="annotations"]')
    expect(annotations).to_have_text("0")

    lease = next_assignment(annotator, batch=batch)
    submit_annotation(annotator, lease.pk, Judgement("A", "better"), uuid.uuid4())
    page.clock.run_for(5_000)
    expect(annotations).to_have_text("1")
    assert polls_reach(page, polls, 1) == 1

    page.evaluate(SET_HIDDEN, True)
    page.clock.run_for(60_000)
    assert polls_reach(page, polls, 2) == 1  # nothing while hidden

    page.evaluate(SET_HIDDEN, False)
    page.clock.run_for(1)
    assert polls_reach(page, polls, 2) == 2  # at once when shown again

    close_batch(batch)
    page.clock.run_for(5_000)
    assert polls_reach(page, polls, 3) == 3  # it answers that the batch is closed...
    page.clock.run_for(120_000)
    assert polls_reach(page, polls, 4) == 3  # ...so that was the last poll
