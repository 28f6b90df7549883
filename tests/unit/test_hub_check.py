"""Checking a hub id with one short request (model_worker.hub), against a local stand-in hub."""

from __future__ import annotations

import time

import pytest

from model_worker.hub import HubUnavailable, check_hub_model, ensure_available


def test_a_model_the_hub_has_passes(fake_hub):
    fake_hub.models.add("org/tiny")
    check_hub_model("org/tiny")
    assert any(path.startswith("/api/models/org/tiny") for path in fake_hub.requests)


def test_a_model_the_hub_does_not_have_is_named(fake_hub):
    with pytest.raises(HubUnavailable, match="the Hugging Face hub has no model org/missing"):
        check_hub_model("org/missing")


def test_a_hub_that_never_answers_fails_within_the_timeout(fake_hub, monkeypatch):
    fake_hub.hang = True
    monkeypatch.setenv("PAIRWISE_HUB_TIMEOUT_SECONDS", "1")
    began = time.monotonic()
    with pytest.raises(HubUnavailable, match="cannot reach the Hugging Face hub to check org/x"):
        ensure_available("org/x")
    assert time.monotonic() - began < 5


def test_a_refused_connection_fails_at_once(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    began = time.monotonic()
    with pytest.raises(HubUnavailable, match="download it where there is a network"):
        check_hub_model("org/x", timeout=2)
    assert time.monotonic() - began < 3


def test_a_local_directory_needs_no_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    ensure_available(str(tmp_path))  # no request, no error
