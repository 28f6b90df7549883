"""Celery tasks of the platform itself: storing what model workers produce (``default`` queue)
and reward-model training runs (``training`` queue, by the ``train_*`` route in settings)."""

from celery import shared_task

from annotation_app.services.generation import store_results
from annotation_app.services.training import run_reward_training


@shared_task(name="annotation_app.tasks.store_generated_responses", acks_late=True)
def store_generated_responses(results: list[dict]) -> dict[str, int]:
    """Store generated responses (idempotent) and mark comparisons ready or failed."""
    return store_results(results)


@shared_task(name="annotation_app.tasks.train_reward_model", acks_late=True)
def train_reward_model(run_id: int) -> str:
    """Do a queued reward-model run; a run that is no longer queued is left alone.

    Acknowledged late, so that a message whose worker died is delivered again; the run's own
    status (only a queued run starts) keeps that from training twice.
    """
    return run_reward_training(run_id)
