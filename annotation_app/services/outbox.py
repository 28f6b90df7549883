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
nothing. A message is answered (``done_at``) once its generated responses are stored, or once its
training run's job reported (its first events, or its end; a training worker lost after that is
left to the broker's redelivery and the stall takeover, see ``services/training/``).

Generation has its own bound, independent of the broker's visibility timeout (on Redis one value
for every queue, kept above the longest training): generation tasks carry a Celery ``expires``
equal to their timeout, so that a copy the broker brings back an hour later is discarded (a
retry gets a fresh one), and about ``PAIRWISE_GENERATION_MAX_IN_FLIGHT`` of them wait on the
broker at once, so that none expires merely by waiting behind a large batch (the others wait
here, in the database). "About": each relay counts the room before it sends, so relays running
at the same time may together go over by a few; none sends the same message twice.

A message is not sent for ever: sent ``PAIRWISE_OUTBOX_MAX_ATTEMPTS`` times without an answer,
it is given up, and what it asked for is marked failed with the reason (its comparisons, which
an admin may retry, or its queued training run). A generation message whose comparisons were
all deleted is closed without being sent. :func:`prune` deletes answered messages once they are
older than ``PAIRWISE_OUTBOX_RETENTION_DAYS``.

Without a broker (the embedded demo) a message is sent by running its task in a background
thread of this process, or inline when ``PAIRWISE_EAGER_IN_THREAD`` is off; the demo relays what
an earlier process left unanswered when it starts.
"""

from __future__ import annotations

import enum
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

from annotation_app.models import OutboxMessage, TrainingRun
from annotation_app.services.generation_errors import mark_failed
from model_worker import GENERATE_RESPONSES

logger = logging.getLogger(__name__)

Kind = OutboxMessage.Kind
MAX_ERROR_CHARS = 2000
# Answered messages deleted per statement by prune(): short transactions, bounded memory.
PRUNE_CHUNK = 1000
# One try to reach the broker, then the error: a send runs inside a request, and the outbox is
# the retry. Not ``retry=False``: kombu (5.7) then falls back to its own connection retries,
# for up to broker_connection_timeout with pauses of 2 s (6 s for a refused connection, where
# one try takes milliseconds); this policy is passed on to the connection as well.
# The platform's tasks this module sends (annotation_app/tasks.py names its tasks with these).
STORE_GENERATED_RESPONSES = "annotation_app.tasks.store_generated_responses"
START_TRAINING_RUN = "annotation_app.tasks.start_training_run"
NO_PUBLISH_RETRY = {"retry": True, "retry_policy": {"max_retries": 0}}


class Outcome(enum.Enum):
    """What became of one message in a relay pass."""

    SENT = "sent"
    SKIPPED = "skipped"  # another relay claimed it meanwhile, or it was answered
    FAILED = "failed"  # an error of its own: recorded, counted as a send, the pass goes on
    BROKER_DOWN = "broker down"  # not counted; the pass stops, the rest waits for the next


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
    """Messages of ``kind`` sent and still within their timeout: on the broker, or being done
    (not those whose send failed with an error of their own: they wait for their timeout here)."""
    cutoff = (now or timezone.now()) - answer_timeout(kind)
    return OutboxMessage.objects.filter(
        kind=kind, done_at__isnull=True, sent_at__gte=cutoff, last_error=""
    )


def relay(
    *,
    ids: Iterable[int] | None = None,
    kind: str | None = None,
    now: datetime | None = None,
    include_in_flight: bool = False,
) -> int:
    """Send the due messages (among ``ids``, of ``kind``, or all); returns how many were sent.

    ``include_in_flight`` also sends unanswered messages still within their timeout: for a
    process whose earlier in-process tasks died with it (the demo's start). Due messages sent
    ``PAIRWISE_OUTBOX_MAX_ATTEMPTS`` times already are given up instead (:func:`give_up`), and
    generation messages whose comparisons are all gone are closed unsent.

    Errors are logged and recorded on their message, never raised, as the work is committed
    already. The broker unreachable: the message stays due, uncounted, and the pass stops
    there. Any other error (one message that cannot be sent): it counts as a send, is tried
    again after its timeout, and the pass goes on. Two relays at once never send a message
    twice: each claims it first (compare-and-set on ``sent_at``).
    """
    now = now or timezone.now()
    sent = 0
    for each_kind in [kind] if kind else Kind.values:
        messages = due(each_kind, now, include_in_flight=include_in_flight)
        if ids is not None:
            messages = messages.filter(pk__in=list(ids))
        for message in messages.filter(
            sent_at__isnull=False, attempts__gte=settings.PAIRWISE_OUTBOX_MAX_ATTEMPTS
        ):
            give_up(message, now)
        if each_kind == Kind.GENERATION:
            # The comparisons were deleted (with their batch): nothing to generate for.
            messages.filter(comparisons__isnull=True).update(
                done_at=now, last_error="not sent: its comparisons were deleted"
            )
        # Evaluated from here on: without what was given up or closed just now.
        if each_kind == Kind.GENERATION and uses_broker():
            room = settings.PAIRWISE_GENERATION_MAX_IN_FLIGHT - in_flight(each_kind, now).count()
            messages = messages[: max(room, 0)]
        for message in messages:
            outcome = _relay_one(message, now)
            if outcome is Outcome.BROKER_DOWN:
                return sent  # what is left waits for the next relay
            sent += outcome is Outcome.SENT
    return sent


def give_up(message: OutboxMessage, now: datetime | None = None) -> bool:
    """Stop sending ``message``, unanswered after its sends, and fail what it asked for.

    In one transaction: the message is done, with the reason as its error; its comparisons
    that are not ready are failed with that reason (an admin may retry them), or its training
    run, if still queued, is failed. Returns False if another relay sent or gave it up first.
    """
    now = now or timezone.now()
    reason = (
        f"no answer after {message.attempts} sends; "
        f"last error: {message.last_error or 'none recorded (the task was lost or discarded)'}"
    )[:MAX_ERROR_CHARS]
    with transaction.atomic():
        claimed = OutboxMessage.objects.filter(
            pk=message.pk, done_at__isnull=True, sent_at=message.sent_at
        ).update(done_at=now, last_error=reason)
        if not claimed:
            return False
        if message.kind == Kind.GENERATION:
            mark_failed(list(message.comparisons.values_list("pk", flat=True)), reason)
        else:
            TrainingRun.objects.filter(
                pk=message.payload.get("run_id"), status=TrainingRun.Status.QUEUED
            ).update(
                status=TrainingRun.Status.FAILED,
                error=f"not started: the training task got {reason}",
                finished_at=now,
            )
    logger.error("gave up %s: %s", message, reason)
    return True


def prune(now: datetime | None = None) -> int:
    """Delete answered messages older than ``PAIRWISE_OUTBOX_RETENTION_DAYS``; returns how many.

    Messages are numbered in the order they are written, so the old ones are a range of
    primary keys: read and deleted through the primary key's index, a chunk at a time.
    """
    cutoff = (now or timezone.now()) - timedelta(days=settings.PAIRWISE_OUTBOX_RETENTION_DAYS)
    # The newest message written before the cutoff bounds the range (a backward index scan
    # that stops at the first one old enough).
    last_old = (
        OutboxMessage.objects.filter(created_at__lt=cutoff)
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    if last_old is None:
        return 0
    answered = OutboxMessage.objects.filter(pk__lte=last_old, done_at__lt=cutoff)
    deleted = 0
    while chunk := list(answered.order_by("pk").values_list("pk", flat=True)[:PRUNE_CHUNK]):
        OutboxMessage.objects.filter(pk__in=chunk).delete()  # with their comparison links
        deleted += len(chunk)
    return deleted


def backlog(now: datetime | None = None) -> dict[str, dict[str, int]]:
    """Unanswered messages per kind: ``due`` (to send) and ``in_flight`` (sent, in time)."""
    return {
        kind: {"due": due(kind, now).count(), "in_flight": in_flight(kind, now).count()}
        for kind in Kind.values
    }


def _relay_one(message: OutboxMessage, now: datetime) -> Outcome:
    """Send one message (see :class:`Outcome`)."""
    # Claimed by compare-and-set on sent_at, so that no lock is held while the broker answers.
    claimed = OutboxMessage.objects.filter(
        pk=message.pk, done_at__isnull=True, sent_at=message.sent_at
    ).update(sent_at=now, attempts=F("attempts") + 1, last_error="")
    if not claimed:
        return Outcome.SKIPPED
    try:
        _send(message)
    except Exception as error:
        recorded = f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
        mine = OutboxMessage.objects.filter(pk=message.pk, sent_at=now)
        # What kombu raises for a broker it cannot reach (connection refused or timed out, the
        # connection lost), or one that refuses every command (out of memory, say).
        if isinstance(error, OperationalError):
            logger.warning("could not send %s (it stays pending): %s", message, error)
            # Not a send: due again at once, its count as it was.
            mine.update(sent_at=message.sent_at, attempts=F("attempts") - 1, last_error=recorded)
            return Outcome.BROKER_DOWN
        logger.exception("could not send %s (tried again after its timeout)", message)
        mine.update(last_error=recorded)
        return Outcome.FAILED
    return Outcome.SENT


def _send(message: OutboxMessage) -> None:
    # By name: the tasks import the services, and the model workers' code stays theirs.
    signature = current_app.signature
    if message.kind == Kind.GENERATION:
        lifetime = settings.PAIRWISE_GENERATION_TIMEOUT_SECONDS
        work = signature(
            GENERATE_RESPONSES,
            args=(message.payload["requests"],),
            kwargs={"expires_after": lifetime},
        ) | signature(STORE_GENERATED_RESPONSES, kwargs={"outbox_id": message.pk})
        # On the first task only: the store callback, sent by the worker, never expires.
        options = {"expires": lifetime}
    else:
        work = signature(
            START_TRAINING_RUN, args=(message.payload["run_id"],), kwargs={"outbox_id": message.pk}
        )
        options = {}
    if uses_broker() or not settings.PAIRWISE_EAGER_IN_THREAD:
        # Results travel along the chain; nothing reads them from a result backend.
        work.apply_async(ignore_result=True, **NO_PUBLISH_RETRY, **options)
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
