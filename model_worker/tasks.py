"""Celery tasks of the model workers. They never touch the database: requests carry all they
need (model path, messages, sampling parameters, seed) and results go back as plain data, which
the platform's own callback stores. Generation tasks run on the ``generation`` queue, training
tasks on the ``training`` queue (the ``generate_*`` and ``train_*`` routes in settings).
"""

from __future__ import annotations

import os
import socket
from collections import defaultdict
from pathlib import Path

from celery import shared_task, signature

from model_worker import GENERATE_RESPONSES, TRAIN_MODEL
from model_worker.hub import HubUnavailable

MAX_RETRIES = 3
# A training job killed by a signal (a SIGKILL, the OOM killer) is launched again this many times,
# each resuming from its last checkpoint, before the run is reported failed.
TRAINING_RELAUNCHES = 2
RELAUNCH_COUNTDOWN_SECONDS = 2


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
    name=GENERATE_RESPONSES,
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


@shared_task(
    bind=True,
    name=TRAIN_MODEL,
    acks_late=True,  # a worker that dies mid-job leaves the message to be delivered again
    reject_on_worker_lost=True,
    max_retries=TRAINING_RELAUNCHES,
)
def train_model(self, spec_path: str, on_events: dict | None = None, events_from: int = 0) -> dict:
    """Run a training job (``model_worker/training.py``) and report how it ended.

    ``on_events``: a Celery signature (the platform's) sent with ``(index, events)`` for each new
    batch of the job's events, and with an empty batch now and then while the job is quiet;
    ``events_from``: the first event the platform has not seen. A job killed by a signal is
    launched again, resuming from its checkpoint (a retry of this task: it needs a broker).
    """
    from model_worker.training import train
    from rlhf.jobs import EVENTS_FILE, EventLog, RunSpec

    def send(index: int, events: list[dict]) -> None:
        if on_events is not None:
            signature(on_events).clone(args=(index, events)).apply_async()

    spec_path = Path(spec_path)
    report, outcome = train(spec_path, send, events_from=events_from)
    killed = outcome is not None and outcome.killed_by is not None
    if killed and self.request.retries < TRAINING_RELAUNCHES and not self.request.is_eager:
        log = EventLog(RunSpec.load(spec_path).output_dir / EVENTS_FILE)
        log.write(
            "log",
            message=f"{report['error']}: launched again, resuming from its last checkpoint",
        )
        raise self.retry(
            countdown=RELAUNCH_COUNTDOWN_SECONDS,
            kwargs={
                "spec_path": str(spec_path),
                "on_events": on_events,
                "events_from": len(outcome.events),
            },
        )
    return report
