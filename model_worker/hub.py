"""A Hugging Face hub id, checked with one short request before anything waits on the hub.

Registering a hub id, and loading one in a worker, first ask the hub about the model with a
timeout of ``PAIRWISE_HUB_TIMEOUT_SECONDS`` (default 5): an unreachable hub, or a model it does
not have, is then one clear error at once, instead of every file download timing out in turn,
task retry after task retry. A model already in the local Hugging Face cache needs no check:
transformers loads it from there. Plain huggingface_hub, no torch, so that the web processes
can use it too.
"""

from __future__ import annotations

import os
from pathlib import Path


class HubUnavailable(Exception):
    """The model cannot be had from the hub now (unreachable, unknown, or gated): retrying at
    once would not help."""


def timeout_seconds() -> float:
    return float(os.environ.get("PAIRWISE_HUB_TIMEOUT_SECONDS", "5"))


def is_cached(repo_id: str) -> bool:
    """Whether the model's ``config.json`` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def check_hub_model(repo_id: str, *, timeout: float | None = None) -> None:
    """Ask the hub whether it has ``repo_id``; raise :class:`HubUnavailable` saying why not."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    download_hint = "or download it where there is a network and register the directory"
    try:
        HfApi().model_info(repo_id, timeout=timeout or timeout_seconds())
    except GatedRepoError:
        raise HubUnavailable(
            f"{repo_id} is gated on the Hugging Face hub: accept its terms and set HF_TOKEN, "
            f"{download_hint}"
        ) from None
    except HFValidationError as error:
        raise HubUnavailable(f"{repo_id} is not a valid hub id: {error}") from None
    except RepositoryNotFoundError:
        raise HubUnavailable(
            f"the Hugging Face hub has no model {repo_id} (if it is private, set HF_TOKEN)"
        ) from None
    except Exception as error:  # no network, a timeout, offline mode, a hub error: all the same
        reason = str(error) or type(error).__name__
        raise HubUnavailable(
            f"cannot reach the Hugging Face hub to check {repo_id}: {reason}; {download_hint}"
        ) from None


def ensure_available(model_path: str) -> None:
    """Before loading ``model_path``: a directory, a cached hub model, or one the hub has."""
    if Path(model_path).exists() or is_cached(model_path):
        return
    check_hub_model(model_path)
