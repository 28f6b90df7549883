"""Celery tasks of the platform itself: storing what model workers produce (``default`` queue)
and reward-model training runs (``training`` queue, by the ``train_*`` route in settings).

Both are sent through the outbox (``services/outbox.py``) and carry the id of their message,
which they mark answered; tasks sent before the outbox existed carry none.
"""

from celery import shared_task

from annotation_app.models import OutboxMessage
from annotation_app.services.generation import store_results
from annotation_app.services.outbox import relay
from annotation_app.services.training import run_reward_training


@shared_task(bind=True, name="annotation_app.tasks.store_generated_responses", acks_late=True)
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


@shared_task(
    name="annotation_app.tasks.train_reward_model", acks_late=True, reject_on_worker_lost=True
)
def train_reward_model(run_id: int, outbox_id: int | None = None) -> str:
    """Do a queued reward-model run, or take over one whose worker was lost.

    Acknowledged late, and requeued when its worker process dies, so that such a run is
    delivered again; the run's own state (a queued run, or a running one whose heartbeat
    stopped) keeps a healthy run from being trained twice.
    """
    return run_reward_training(run_id, outbox_id=outbox_id)
