"""In Chromium: a Markdown image pointing at another host is never fetched, every page works
under the Content Security Policy (no violation reported, nothing blocked), and a failed
generation reaches an annotator as a neutral message."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from annotation_app.models import Batch, Comparison, TrainingRun
from annotation_app.roles import Role
from annotation_app.services.assignment import next_assignment
from annotation_app.services.batches import activate_batch
from annotation_app.services.generation_errors import NEUTRAL_GENERATION_ERROR
from annotation_app.services.imports import import_comparisons
from tests.browser.test_annotate_with_keyboard import sign_in, wait_for_task

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Runs in every page before its own scripts (Playwright injects it, the policy does not apply):
# keeps each violation the browser reports.
RECORD_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(event.violatedDirective + " " + (event.blockedURI || "inline"));
});
"""


@pytest.fixture
def remote_host():
    """An HTTP server on another origin that records every request it gets."""
    requests: list[str] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/gif")
            self.end_headers()
            self.wfile.write(b"GIF89a")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_a_remote_markdown_image_in_a_response_is_never_fetched(
    live_server, page, make_user, remote_host
):
    origin, requests = remote_host
    batch = Batch.objects.create(name="Images", kind="helpfulness")
    record = {
        "conversation": [{"role": "user", "content": "Show me a picture."}],
        "responses": [
            {"text": f"Here it is: ![tracking pixel]({origin}/pixel.png)"},
            {"text": "I cannot show pictures."},
        ],
    }
    import_comparisons(batch, io.BytesIO(json.dumps(record).encode()), "images.jsonl")
    activate_batch(batch)
    make_user(username="iris")
    page.add_init_script(RECORD_VIOLATIONS)
    sign_in(page, live_server.url, "iris")
    page.goto(f"{live_server.url}/annotate/")
    wait_for_task(page)

    image = page.locator("a.md-image")
    expect(image).to_have_text("[image: tracking pixel]")
    expect(image).to_have_attribute("href", f"{origin}/pixel.png")
    assert page.locator("img").count() == 0
    page.wait_for_load_state("networkidle")
    assert requests == []

    # The policy is the second guard: an image from another host is refused, not fetched.
    page.evaluate(f"() => {{ const i = new Image(); i.src = '{origin}/by-script.png'; }}")
    page.wait_for_function("window.cspViolations.length > 0")
    assert page.evaluate("window.cspViolations") == [f"img-src {origin}/by-script.png"]
    assert requests == []


def test_the_generating_page_says_neutrally_that_generation_failed(
    live_server, page, make_user, make_batch
):
    """The page polls while the responses are generated; a worker's error (which may name the
    model) reaches the annotator as a neutral message."""
    annotator = make_user(username="gina")
    assignment = next_assignment(annotator, make_batch(comparisons=1))
    waiting = Comparison.objects.filter(pk=assignment.comparison_id)
    waiting.update(status=Comparison.Status.WAITING)
    sign_in(page, live_server.url, "gina")
    page.goto(f"{live_server.url}/tasks/{assignment.pk}/")
    expect(page.locator("#generation-status")).to_contain_text("being written")
    expect(page.locator("#generation-next")).to_be_hidden()

    waiting.update(
        status=Comparison.Status.FAILED,
        generation_error="OSError: cannot load /models/acme-secret-policy-v9",
    )
    expect(page.locator("#generation-status")).to_have_text(NEUTRAL_GENERATION_ERROR)
    expect(page.locator("#generation-next")).to_be_visible()
    assert "acme" not in page.content()


def failed_generation_page(annotator, make_batch) -> str:
    """The page an annotator sees when generating their comparison's responses failed."""
    batch = make_batch(comparisons=1, name="Generating")
    assignment = next_assignment(annotator, batch)
    Comparison.objects.filter(pk=assignment.comparison_id).update(
        status=Comparison.Status.FAILED, generation_error="OSError: no model"
    )
    return f"/tasks/{assignment.pk}/"


@pytest.mark.slow
def test_the_pages_work_under_the_content_security_policy(
    live_server, browser, make_user, make_batch
):
    batch = make_batch(comparisons=2)
    annotator = make_user(username="ann")
    generating = failed_generation_page(annotator, make_batch)
    make_user(Role.BATCH_ADMIN, username="bea", is_staff=True)
    make_user(Role.ML_STAFF, username="mel", is_staff=True)
    running = TrainingRun.objects.create(kind="reward_helpfulness", status="running", progress=0.4)
    comparison = batch.comparisons.first()
    writable = Batch.objects.create(
        name="Write", kind="helpfulness", status=Batch.Status.ACTIVE, allow_annotator_prompts=True
    )

    pages = {
        "ann": ["/", "/annotate/", generating, f"/batches/{writable.pk}/write/", "/api/v1/docs/"],
        "bea": [
            "/",
            f"/batches/{batch.pk}/progress/",
            "/admin/",
            "/admin/annotation_app/batch/",
            f"/admin/annotation_app/batch/{batch.pk}/change/",
            f"/admin/annotation_app/batch/{batch.pk}/import/",
            "/admin/annotation_app/comparison/",
            f"/admin/annotation_app/comparison/{comparison.pk}/change/",
        ],
        "mel": ["/training/", f"/training/runs/{running.pk}/"],
    }
    seen = ["/login/"]
    console_errors: list[tuple[str, str]] = []

    def record_error(message, username: str) -> None:
        # The admin's pages name no icon, so the browser asks for /favicon.ico: not our concern.
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            console_errors.append((username, message.text))

    for username, paths in pages.items():
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.add_init_script(RECORD_VIOLATIONS)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("console", lambda message, who=username: record_error(message, who))
        page.goto(f"{live_server.url}/login/")
        assert page.evaluate("window.cspViolations") == [], "the sign-in page"
        sign_in(page, live_server.url, username)
        for path in paths:
            page.goto(f"{live_server.url}{path}")
            page.wait_for_load_state("networkidle")
            if path == "/api/v1/docs/":  # Swagger UI drew the operations from the schema
                page.locator(".opblock").first.wait_for()
            if "/progress/" in path or "/training/runs/" in path:  # bars.js filled the bar
                assert page.locator(".bar .fill").evaluate("e => e.style.width") != ""
            violations = page.evaluate("window.cspViolations")
            assert violations == [], (username, path, violations)
            seen.append(path)
        context.close()
    assert console_errors == []
    assert len(seen) == 1 + sum(len(paths) for paths in pages.values())
