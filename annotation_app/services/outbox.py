"""Reliable dispatch to the workers: a transactional outbox.

Work for the workers (generation requests, a training run) is written as an
:class:`OutboxMessage` in the same transaction as the comparisons or the run it is about, so
that both commit, or roll back, together. Once the transaction commits, the message is relayed
to the broker. A broker that is down only leaves the message pending, with the error: the
request that recorded the work still succeeds, and a later relay sends it.

:func:`relay` sends every message that is *due*: never sent, or its send failed, or sent but
unanswered past its kind's timeout (:func:`answer_timeout`), because the broker lost it in a
restart or the worker that took it died. It runs after each commit (for that transaction's
messages), after each store of generated responses, and every ``PAIRWISE_RELAY_INTERVAL_SECONDS``
in ``manage.py relay_outbox --loop``. Tasks are idempotent, so a message answered twice changes
nothing. A message is answered (``done_at``) once its generated responses are stored, or once a
worker picked up its training run (a training worker lost after that is left to the broker's
redelivery and the stall takeover, see ``services/training.py``).

Generation has its own bound, independent of the broker's visibility timeout (on Redis one value
for every queue, kept above the longest training): generation tasks carry a Celery ``expires``
equal to their timeout, so that a copy the broker brings back an hour later is discarded, and
at most ``PAIRWISE_GENERATION_MAX_IN_FLIGHT`` of them wait on the broker at once, so that none
expires merely by waiting behind a large batch (the others wait here, in the database).

Without a broker (the embedded demo) a message is sent by running its task in a background
thread of this process, or inline when ``PAIRWISE_EAGER_IN_THREAD`` is off; the demo relays what
an earlier process left unanswered when it starts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from celery import current_app
from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone
from kombu.exceptions import OperationalError

from annotation_app.models import OutboxMessage

logger = logging.getLogger(__name__)

Kind = OutboxMessage.Kind
MAX_ERROR_CHARS = 2000


def answer_timeout(kind: str) -> timedelta:
    """How long a sent message may stay unanswered before it is sent again.

    Generation: ``PAIRWISE_GENERATION_TIMEOUT_SECONDS``, above one task's duration. Training: a
    queued run no worker picked up within ``PAIRWISE_TRAINING_STALL_SECONDS`` (a long run ahead
    of it may hold the only training worker; an extra copy is skipped when it arrives).
    """
    if kind == Kind.GENERATION:
        return timedelta(seconds=settings.PAIRWISE_GENERATION_TIMEOUT_SECONDS)
    return timedelta(seconds=settings.PAIRWISE_TRAINING_STALL_SECONDS)


def uses_broker() -> bool:
    """Whether tasks go to a broker (not run in this process, as in the embedded demo)."""
    return not current_app.conf.task_always_eager


def enqueue(
    kind: str, payloads: Sequence[dict], comparison_ids: Sequence[Iterable[int]] = ()
) -> list[OutboxMessage]:
    """Record one message per payload in the caller's transaction; relayed once it commits.

    ``comparison_ids[i]`` lists the comparisons whose responses the i-th (generation) message
    asks for. Rolled back with the caller's transaction, the messages never existed.
    """
    messages = OutboxMessage.objects.bulk_create(
        OutboxMessage(kind=kind, payload=payload) for payload in payloads
    )
    links = OutboxMessage.comparisons.through
    links.objects.bulk_create(
        links(outboxmessage_id=message.pk, comparison_id=comparison_id)
        for message, ids in zip(messages, comparison_ids or [()] * len(messages), strict=True)
        for comparison_id in ids
    )
    ids = [message.pk for message in messages]
    # robust: the work is committed whatever happens here; the relay will retry.
    transaction.on_commit(lambda: relay(ids=ids, kind=kind), robust=True)
    return messages


def send_again(messages: QuerySet[OutboxMessage]) -> int:
    """Make the unanswered ``messages`` due now, whatever their timeout, and relay them once the
    transaction commits (an admin's retry). Returns how many."""
    ids = list(messages.filter(done_at__isnull=True).values_list("pk", flat=True))
    if ids:
        OutboxMessage.objects.filter(pk__in=ids).update(sent_at=None)
        transaction.on_commit(lambda: relay(ids=ids), robust=True)
    return len(ids)


def mark_done(message_id: int | None) -> None:
    """Record that a message's work was answered (None: a task sent before the outbox existed)."""
    if message_id is not None:
        OutboxMessage.objects.filter(pk=message_id, done_at__isnull=True).update(
            done_at=timezone.now()
        )


def due(kind: str, now: datetime | None = None, *, include_in_flight: bool = False) -> QuerySet:
    """Unanswered messages of ``kind`` to send now, oldest first (see the module docstring)."""
    pending = OutboxMessage.objects.filter(kind=kind, done_at__isnull=True)
    if not include_in_flight:
        cutoff = (now or timezone.now()) - answer_timeout(kind)
        pending = pending.filter(Q(sent_at__isnull=True) | Q(sent_at__lt=cutoff))
    return pending.order_by("created_at", "pk")


def in_flight(kind: str, now: datetime | None = None) -> QuerySet:
    """Messages of ``kind`` sent and still within their timeout: on the broker, or being done."""
    cutoff = (now or timezone.now()) - answer_timeout(kind)
    return OutboxMessage.objects.filter(kind=kind, done_at__isnull=True, sent_at__gte=cutoff)


def relay(
    *,
    ids: Iterable[int] | None = None,
    kind: str | None = None,
    now: datetime | None = None,
    include_in_flight: bool = False,
) -> int:
    """Send the due messages (among ``ids``, of ``kind``, or all); returns how many were sent.

    ``include_in_flight`` also sends unanswered messages still within their timeout: for a
    process whose earlier in-process tasks died with it (the demo's start). A broker error is
    logged and recorded on the message, which stays due, and the pass stops there; it is never
    raised, as the work is committed already. Two relays at once never send a message twice.
    """
    now = now or timezone.now()
    sent = 0
    for each_kind in [kind] if kind else Kind.values:
        messages = due(each_kind, now, include_in_flight=include_in_flight)
        if ids is not None:
            messages = messages.filter(pk__in=list(ids))
        if each_kind == Kind.GENERATION and uses_broker():
            room = settings.PAIRWISE_GENERATION_MAX_IN_FLIGHT - in_flight(each_kind, now).count()
            messages = messages[: max(room, 0)]
        for message in messages:
            outcome = _relay_one(message, now)
            if outcome is False:
                return sent  # the broker is down: what is left waits for the next relay
            sent += bool(outcome)
    return sent


def backlog(now: datetime | None = None) -> dict[str, dict[str, int]]:
    """Unanswered messages per kind: ``due`` (to send) and ``in_flight`` (sent, in time)."""
    return {
        kind: {"due": due(kind, now).count(), "in_flight": in_flight(kind, now).count()}
        for kind in Kind.values
    }


def _relay_one(message: OutboxMessage, now: datetime) -> bool | None:
    """Send one message: True once sent, False on a broker error, None if another relay has
    claimed it meanwhile (or it was answered)."""
    # Claimed by compare-and-set on sent_at, so that no lock is held while the broker answers.
    claimed = OutboxMessage.objects.filter(
        pk=message.pk, done_at__isnull=True, sent_at=message.sent_at
    ).update(sent_at=now, attempts=F("attempts") + 1, last_error="")
    if not claimed:
        return None
    try:
        _send(message)
    except Exception as error:
        if isinstance(error, OperationalError):  # the broker is unreachable: expected, no trace
            logger.warning("could not send %s (it stays pending): %s", message, error)
        else:
            logger.exception("could not send %s (it stays pending)", message)
        OutboxMessage.objects.filter(pk=message.pk, sent_at=now).update(
            sent_at=message.sent_at, last_error=f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
        )
        return False
    return True


def _send(message: OutboxMessage) -> None:
    # Imported here: the tasks' modules import the services that import this one.
    from annotation_app.tasks import store_generated_responses, train_reward_model
    from model_worker.tasks import generate_responses

    if message.kind == Kind.GENERATION:
        work = generate_responses.s(message.payload["requests"]) | store_generated_responses.s(
            outbox_id=message.pk
        )
        # On the first task only: the store callback, sent by the worker, never expires.
        options = {"expires": settings.PAIRWISE_GENERATION_TIMEOUT_SECONDS}
    else:
        work = train_reward_model.s(message.payload["run_id"], outbox_id=message.pk)
        options = {}
    if uses_broker() or not settings.PAIRWISE_EAGER_IN_THREAD:
        # Results travel along the chain; nothing reads them from a result backend.
        work.apply_async(ignore_result=True, **options)
        return

    def run() -> None:
        close_old_connections()
        try:
            work.apply()
        except Exception:  # the tasks record their own failures; log anything else
            logger.exception("in-process %s failed", message)
        finally:
            connections.close_all()  # this thread's own connections

    threading.Thread(target=run, name=f"pairwise-outbox-{message.pk}", daemon=True).start()
