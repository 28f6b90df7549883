"""Refused and missing pages are styled pages of the site, with a way back."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.test_annotate_with_keyboard import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_styled_404_and_403_pages_lead_back_home(live_server, page, artifacts, make_user):
    make_user(username="ann")

    # Signed out: a 404 offers the home page and signing in.
    response = page.goto(f"{live_server.url}/no-such-page/")
    assert response.status == 404
    expect(page.locator("h1")).to_have_text("Page not found")
    expect(page.locator(".error-page")).to_contain_text("/no-such-page/")
    expect(page.locator(".error-page").get_by_role("link", name="Sign in")).to_be_visible()
    assert page.locator("link[rel=stylesheet]").count() == 1  # the site's own look
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=artifacts / "error-404-phone.png", full_page=True)
    page.set_viewport_size({"width": 1366, "height": 768})

    sign_in(page, live_server.url, "ann")
    response = page.goto(f"{live_server.url}/tasks/999999/")
    assert response.status == 404
    expect(page.locator(".topbar")).to_contain_text("Sign out ann")
    page.screenshot(path=artifacts / "error-404-1366.png")

    # An annotator on ML staff's page: a 403 that says who they are and where to go.
    response = page.goto(f"{live_server.url}/training/")
    assert response.status == 403
    expect(page.locator("h1")).to_have_text("You do not have access to this page")
    expect(page.locator(".error-page")).to_contain_text("signed in as ann")
    page.screenshot(path=artifacts / "error-403-1366.png")
    home = page.locator("#error-home")
    home.focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/")
    expect(page.locator("h1")).to_have_text("Your queue")
