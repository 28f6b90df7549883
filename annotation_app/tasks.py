"""Celery tasks of the platform itself (``default`` queue): storing what model workers produce,
and the platform's side of a training run.

Generation: ``model_worker.tasks.generate_responses | store_generated_responses``. Training:
the outbox sends :func:`start_training_run`, which claims the run, writes its job and sends
``model_worker.tasks.train_model`` (``training`` queue) with :func:`record_training_events` as
its events callback and :func:`finish_training_run` after it. All are sent with the id of their
outbox message, which they mark answered; all are idempotent.
"""

from celery import shared_task

from annotation_app.models import OutboxMessage
from annotation_app.services.generation import store_results
from annotation_app.services.outbox import (
    START_TRAINING_RUN,
    STORE_GENERATED_RESPONSES,
    mark_done,
    relay,
)
from annotation_app.services.training import lifecycle
from model_worker import TRAIN_MODEL

# An event batch that arrives before an earlier one waits this long, this many times, for it.
EARLY_EVENTS_RETRIES, EARLY_EVENTS_COUNTDOWN = 10, 1


@shared_task(bind=True, name=STORE_GENERATED_RESPONSES, acks_late=True)
def store_generated_responses(
    self, results: list[dict], outbox_id: int | None = None
) -> dict[str, int]:
    """Store generated responses (idempotent) and mark comparisons ready or failed.

    Then relay due generation messages: this answer made room for one more on the broker.
    """
    counts = store_results(results, outbox_id=outbox_id)
    if not self.request.is_eager:
        relay(kind=OutboxMessage.Kind.GENERATION)
    return counts


@shared_task(name=START_TRAINING_RUN, acks_late=True)
def start_training_run(run_id: int, outbox_id: int | None = None) -> str:
    """Claim a queued run (or a stalled one), write its job, and send it to a model worker.

    The outbox message is answered once the job reports; unanswered, the relay sends this task
    again, and a run whose job went silent is taken over (``lifecycle.prepare``).
    """
    job = lifecycle.prepare(run_id)
    if job is None:
        mark_done(outbox_id)
        return "skipped"
    # By name: the platform does not import the model workers' code.
    train = start_training_run.app.signature(
        TRAIN_MODEL,
        kwargs={
            "spec_path": job["spec_path"],
            "events_from": job["events_from"],
            "on_events": record_training_events.s(run_id=run_id, outbox_id=outbox_id),
        },
    )
    (train | finish_training_run.s(run_id=run_id, outbox_id=outbox_id)).apply_async(
        ignore_result=True
    )
    return "sent"


@shared_task(bind=True, name="annotation_app.tasks.record_training_events", acks_late=True)
def record_training_events(
    self, index: int, events: list[dict], run_id: int, outbox_id: int | None = None
) -> str:
    """Mirror a batch of a job's events into its run (``lifecycle.record_events``)."""
    mark_done(outbox_id)
    waited = self.request.retries >= EARLY_EVENTS_RETRIES or self.request.is_eager
    outcome = lifecycle.record_events(run_id, index, events, allow_gap=waited)
    if outcome == "early":  # an earlier batch is still on its way: wait for it, a while
        raise self.retry(countdown=EARLY_EVENTS_COUNTDOWN, max_retries=EARLY_EVENTS_RETRIES)
    return outcome


@shared_task(name="annotation_app.tasks.finish_training_run", acks_late=True)
def finish_training_run(report: dict, run_id: int, outbox_id: int | None = None) -> str:
    """Register the run's model, or record its failure (``lifecycle.finish``)."""
    mark_done(outbox_id)
    return lifecycle.finish(run_id, report)
