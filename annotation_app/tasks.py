"""Celery tasks of the platform itself (default queue): storing what model workers produce."""

from celery import shared_task

from annotation_app.services.generation import store_results


@shared_task(name="annotation_app.tasks.store_generated_responses", acks_late=True)
def store_generated_responses(results: list[dict]) -> dict[str, int]:
    """Store generated responses (idempotent) and mark comparisons ready or failed."""
    return store_results(results)
