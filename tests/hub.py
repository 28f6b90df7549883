"""A stand-in for the Hugging Face hub on localhost, for tests that must not use the network.

The real ``huggingface_hub`` client talks to it (its endpoint is pointed here): the hub knows
the models in ``models`` (200 with their info), answers 404 ``RepoNotFound`` for any other, or,
with ``hang`` set, accepts the connection and never answers (a network that drops packets).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

MODEL_INFO_PREFIX = "/api/models/"


@dataclass
class FakeHub:
    url: str
    models: set[str] = field(default_factory=set)
    hang: bool = False
    requests: list[str] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hub.requests.append(self.path)
            if hub.hang:
                hub.released.wait(60)
                return
            repo_id = self.path.split("?")[0].removeprefix(MODEL_INFO_PREFIX).split("/revision")[0]
            if self.path.startswith(MODEL_INFO_PREFIX) and repo_id in hub.models:
                self._answer(200, {"id": repo_id, "modelId": repo_id, "sha": "0" * 40})
            else:
                self._answer(
                    404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                )

        def _answer(self, status: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture(scope="session")
def _hub_server():
    """One local hub for the session; ``fake_hub`` resets what it knows for each test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), None)
    hub = FakeHub(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(hub)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield hub
    hub.released.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_hub(_hub_server, monkeypatch):
    """A local hub that ``huggingface_hub`` (in this process) talks to instead of the real one."""
    from huggingface_hub import constants

    hub = _hub_server
    hub.models.clear()
    hub.requests.clear()
    hub.hang = False
    hub.released.clear()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    yield hub
    hub.released.set()  # let a hanging answer go
