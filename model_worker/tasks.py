"""Celery tasks of the model workers. They never touch the database: requests carry all they
need (model path, messages, sampling parameters, seed) and results go back as plain data, which
the platform's own callback stores. Generation tasks run on the ``generation`` queue.
"""

from __future__ import annotations

import os
import socket
from collections import defaultdict

from celery import shared_task

from model_worker.hub import HubUnavailable

MAX_RETRIES = 3


@shared_task(name="model_worker.tasks.ping")
def ping() -> dict:
    """Health check: proves a worker consumes the ``default`` queue, and which process it is."""
    return {"ok": True, "host": socket.gethostname(), "pid": os.getpid()}


def run_generation(requests: list[dict]) -> list[dict]:
    """Generate one response per request, batching the requests that share a model."""
    # Imported here so that web processes and non-generation workers never load torch.
    from model_worker.generation import GenerationRequest, load_backend
    from rlhf.nn.sampling import SamplingParams

    by_model: dict[str, list[dict]] = defaultdict(list)
    for request in requests:
        by_model[request["model_path"]].append(request)
    results = []
    for model_path, group in by_model.items():
        backend = load_backend(model_path)
        outputs = backend.generate(
            [
                GenerationRequest(messages=r["messages"], params=SamplingParams(**r["params"]))
                for r in group
            ]
        )
        for request, output in zip(group, outputs, strict=True):
            results.append(
                {
                    "comparison": request["comparison"],
                    "slot": request["slot"],
                    "model_version": request["model_version"],
                    "params": request["params"],
                    "text": output.text,
                    "seed": output.seed,
                    "prompt_tokens": output.prompt_tokens,
                    "completion_tokens": output.completion_tokens,
                    "latency_ms": output.latency_ms,
                    "finish_reason": output.finish_reason,
                    "prompt_tokens_dropped": output.prompt_tokens_dropped,
                }
            )
    return results


@shared_task(
    bind=True,
    name="model_worker.tasks.generate_responses",
    acks_late=True,  # a worker that dies mid-task leaves the message to be delivered again
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
)
def generate_responses(
    self, requests: list[dict], expires_after: float | None = None
) -> list[dict]:
    """Generate responses; after the last retry, report the error per request instead.

    Retries (with exponential backoff) need a broker; run in-process (the embedded demo), a
    failure is reported at once, and an admin can retry it. ``expires_after``: the seconds a
    copy of this task stays valid once sent (the sender's Celery ``expires``); each retry gets
    as long from its own send.
    """
    try:
        return run_generation(requests)
    except Exception as error:
        # A hub that cannot be reached now will not be in a few seconds either: report it.
        retry = not isinstance(error, HubUnavailable)
        if retry and self.request.retries < MAX_RETRIES and not self.request.is_eager:
            countdown = 2 ** (self.request.retries + 1)
            # A retry inherits the first send's expiry unless given one: a first attempt that
            # ran long would have its retry discarded on arrival, and nobody would answer.
            expires = None if expires_after is None else countdown + expires_after
            raise self.retry(exc=error, countdown=countdown, expires=expires) from error
        message = f"{type(error).__name__}: {error}"
        return [
            {"comparison": r["comparison"], "slot": r["slot"], "error": message} for r in requests
        ]
