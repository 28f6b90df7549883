"""Celery tasks of the platform itself: storing what model workers produce (``default`` queue)
and reward-model training runs (``training`` queue, by the ``train_*`` route in settings)."""

from celery import shared_task

from annotation_app.services.generation import store_results
from annotation_app.services.training import run_reward_training


@shared_task(name="annotation_app.tasks.store_generated_responses", acks_late=True)
def store_generated_responses(results: list[dict]) -> dict[str, int]:
    """Store generated responses (idempotent) and mark comparisons ready or failed."""
    return store_results(results)


@shared_task(
    name="annotation_app.tasks.train_reward_model", acks_late=True, reject_on_worker_lost=True
)
def train_reward_model(run_id: int) -> str:
    """Do a queued reward-model run, or take over one whose worker was lost.

    Acknowledged late, and requeued when its worker process dies, so that such a run is
    delivered again; the run's own state (a queued run, or a running one whose heartbeat
    stopped) keeps a healthy run from being trained twice.
    """
    return run_reward_training(run_id)
