"""The dispatch outbox: work for the workers is recorded with the data it is about, relayed after
the commit, kept when the broker is down, and sent again while unanswered.

The broker is a real Redis (no worker consumes it: what was sent stays in its queue, where the
tests read it) or, for an outage, a port where nothing listens.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from datetime import datetime, timedelta

import pytest
import redis
from celery.canvas import _chain
from celery.exceptions import Retry
from django.core.management import CommandError, call_command
from django.db import connections, transaction
from django.utils import timezone

from annotation_app.auth_cache import invalidate_all
from annotation_app.models import Batch, Comparison, OutboxMessage, TrainingRun
from annotation_app.services import generation, outbox
from annotation_app.services.batches import activate_batch
from annotation_app.services.generation import retry_unfinished_generation, store_results
from annotation_app.services.imports import import_comparisons
from model_worker import tasks
from tests.conftest import FAST_PLAN
from tests.workers import KEY_PREFIX, SCRATCH_REDIS_URL, _flushed, app_using

pytestmark = pytest.mark.django_db

GENERATION = OutboxMessage.Kind.GENERATION


def prompt_file(count: int, label: str) -> io.BytesIO:
    """Prompts with texts of their own (an import refuses a file it has seen before)."""
    lines = (json.dumps({"prompt": f"{label}: tell me about {i}."}) for i in range(count))
    return io.BytesIO(("\n".join(lines) + "\n").encode())


def draft(count: int, label: str = "outbox") -> Batch:
    batch = Batch.objects.create(name=label, kind="helpfulness", sampling_plan=FAST_PLAN)
    import_comparisons(batch, prompt_file(count, label), f"{label}.jsonl")
    return batch


def queued(url: str, queue: str = "generation") -> list[dict]:
    """The task messages waiting in a queue of the broker, in delivery order: task name, args,
    kwargs, expires, and the chained callbacks."""
    client = redis.Redis.from_url(url)
    messages = []
    # Kombu pushes on the left and workers pop on the right: the oldest is last.
    for raw in reversed(client.lrange(KEY_PREFIX["global_keyprefix"] + queue, 0, -1)):
        message = json.loads(raw)
        args, kwargs, embed = json.loads(base64.b64decode(message["body"]))
        messages.append(
            {
                "task": message["headers"]["task"],
                "expires": message["headers"]["expires"],
                "args": args,
                "kwargs": kwargs,
                "chain": [(s["task"], s["kwargs"]) for s in embed.get("chain") or []],
            }
        )
    return messages


@pytest.fixture
def broker():
    """A real Redis broker that nobody consumes; emptied before and after."""
    url = _flushed(SCRATCH_REDIS_URL)
    with app_using(url):
        yield url
    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def broker_down():
    """The broker's address answers nothing: every send is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with app_using(f"redis://127.0.0.1:{port}/0"):
        yield


def test_messages_commit_and_roll_back_with_their_work(
    tiny_policy, django_capture_on_commit_callbacks
):
    batch = draft(3)
    with (
        django_capture_on_commit_callbacks() as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        activate_batch(batch)
        assert OutboxMessage.objects.count() == 1
        raise RuntimeError("something later in the same request failed")
    assert not OutboxMessage.objects.exists()
    assert callbacks == []  # nothing is relayed for work that never was
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DRAFT


def test_relayed_once_committed_with_an_expiry_and_sent_again_only_when_unanswered(
    broker, tiny_policy, settings, django_capture_on_commit_callbacks
):
    settings.PAIRWISE_GENERATION_TIMEOUT_SECONDS = 120
    batch = draft(3)
    with django_capture_on_commit_callbacks() as callbacks:
        activate_batch(batch)
        assert queued(broker) == []  # nothing leaves before the commit
    # The relay's one (the other drops the cached batches open to annotators: auth_cache.py).
    [relay] = [callback for callback in callbacks if callback is not invalidate_all]
    relay()  # the commit
    message = OutboxMessage.objects.get()
    assert message.kind == GENERATION and message.attempts == 1 and message.sent_at is not None
    comparisons = set(batch.comparisons.values_list("pk", flat=True))
    assert set(message.comparisons.values_list("pk", flat=True)) == comparisons
    [task] = queued(broker)
    assert task["task"] == "model_worker.tasks.generate_responses"
    assert {r["comparison"] for r in task["args"][0]} == comparisons
    assert len(task["args"][0]) == 6  # two sides per comparison
    assert task["chain"] == [
        ("annotation_app.tasks.store_generated_responses", {"outbox_id": message.pk})
    ]
    # A copy older than the timeout is discarded by the worker that receives it.
    expires = message.sent_at + timedelta(seconds=120)
    assert abs((datetime.fromisoformat(task["expires"]) - expires).total_seconds()) < 5

    timeout = outbox.answer_timeout(GENERATION)
    assert outbox.relay() == 0  # in flight: not sent again before its timeout
    assert outbox.relay(now=message.sent_at + timeout - timedelta(seconds=1)) == 0
    assert outbox.relay(now=message.sent_at + timeout + timedelta(seconds=1)) == 1
    assert len(queued(broker)) == 2
    message.refresh_from_db()
    assert message.attempts == 2

    # The worker's answer is stored: the message is done and never sent again.
    store_results(answer(task["args"][0]), outbox_id=message.pk)
    message.refresh_from_db()
    assert message.done_at is not None
    assert outbox.relay(now=message.sent_at + 10 * timeout) == 0
    assert outbox.relay(include_in_flight=True) == 0
    assert set(batch.comparisons.values_list("status", flat=True)) == {"ready"}


def answer(requests: list[dict]) -> list[dict]:
    """What a worker sends back for ``requests``."""
    return [
        {
            "comparison": r["comparison"],
            "slot": r["slot"],
            "model_version": r["model_version"],
            "params": r["params"],
            "text": f"answer {r['slot']}",
            "seed": r["params"]["seed"],
            "prompt_tokens": 5,
            "completion_tokens": 3,
            "latency_ms": 10,
        }
        for r in requests
    ]


def test_with_the_broker_down_a_written_prompt_is_accepted_and_sent_later(
    broker_down, tiny_policy, annotator, api_client, django_capture_on_commit_callbacks
):
    batch = Batch.objects.create(
        name="prompts",
        kind="helpfulness",
        status=Batch.Status.ACTIVE,
        allow_annotator_prompts=True,
        sampling_plan=FAST_PLAN,
    )
    api_client.force_authenticate(annotator)
    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):
        written = api_client.post(
            f"/api/v1/batches/{batch.pk}/prompts/", {"prompt": "Hello?"}, format="json"
        )
    assert written.status_code == 201, written.content
    # A refused connection is not waited on: one try (kombu's own retries would take 6 s).
    assert time.monotonic() - started < 3
    comparison = Comparison.objects.get(batch=batch)
    assert comparison.status == Comparison.Status.WAITING
    assert comparison.assignments.get().annotator == annotator  # the author's lease
    message = OutboxMessage.objects.get()
    # Not counted as a send: a broker outage, however long, never makes a message give up.
    assert message.sent_at is None and message.done_at is None and message.attempts == 0
    assert "OperationalError" in message.last_error and "111" in message.last_error
    assert outbox.backlog()[GENERATION] == {"due": 1, "in_flight": 0}
    assert outbox.relay() == 0  # still down: kept, with the new error
    message.refresh_from_db()
    assert message.attempts == 0 and message.sent_at is None

    url = _flushed(SCRATCH_REDIS_URL)  # the broker is back
    try:
        with app_using(url):
            out = io.StringIO()
            call_command("relay_outbox", stdout=out)
            assert out.getvalue().startswith("relayed 1 message(s)")
            assert "generation: 0 due, 1 in flight" in out.getvalue()
            [task] = queued(url)
    finally:
        redis.Redis.from_url(url).flushdb()
    assert {r["comparison"] for r in task["args"][0]} == {comparison.pk}
    message.refresh_from_db()
    assert message.sent_at is not None and message.last_error == "" and message.attempts == 1


def test_the_relay_command_needs_a_broker():
    with pytest.raises(CommandError, match="no broker is configured"):
        call_command("relay_outbox")


def test_at_most_the_configured_number_of_generation_tasks_wait_on_the_broker(
    broker, tiny_policy, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.PAIRWISE_GENERATION_MAX_IN_FLIGHT = 2
    monkeypatch.setattr(generation, "REQUESTS_PER_TASK", 2)  # one comparison per task
    batch = draft(5)
    with django_capture_on_commit_callbacks(execute=True):
        activate_batch(batch)
    assert OutboxMessage.objects.count() == 5
    assert len(queued(broker)) == 2  # the other three wait in the outbox
    assert outbox.backlog()[GENERATION] == {"due": 3, "in_flight": 2}
    assert outbox.relay() == 0  # no room

    first = queued(broker)[0]
    store_results(answer(first["args"][0]), outbox_id=first["chain"][0][1]["outbox_id"])
    assert outbox.relay(kind=GENERATION) == 1  # what the store task does after storing
    assert len(queued(broker)) == 3
    assert outbox.backlog()[GENERATION] == {"due": 2, "in_flight": 2}
    # Oldest first: the messages were sent in the order they were written.
    sent = list(OutboxMessage.objects.filter(sent_at__isnull=False).values_list("pk", flat=True))
    assert sent == sorted(OutboxMessage.objects.values_list("pk", flat=True))[:3]


def test_retry_sends_waiting_comparisons_again_and_asks_anew_for_stranded_and_failed_ones(
    broker, tiny_policy, batch_admin, api_client, django_capture_on_commit_callbacks
):
    batch = draft(4)
    with django_capture_on_commit_callbacks(execute=True):
        activate_batch(batch)
    message = OutboxMessage.objects.get()
    first_send = message.sent_at
    waiting, stranded, failed, ready = batch.comparisons.order_by("pk")
    # A comparison stranded before the outbox existed: waiting, and no message asks for it.
    message.comparisons.remove(stranded)
    Comparison.objects.filter(pk=failed.pk).update(status="failed", generation_error="OOM")
    store_results(answer([r for r in queued(broker)[0]["args"][0] if r["comparison"] == ready.pk]))
    assert Comparison.objects.get(pk=ready.pk).status == "ready"

    api_client.force_authenticate(batch_admin)
    with django_capture_on_commit_callbacks(execute=True):
        retried = api_client.post(f"/api/v1/batches/{batch.pk}/retry-generation/")
    assert retried.status_code == 200, retried.content
    # The unanswered message again (its waiting and failed comparisons: 4 slots), and new
    # requests for the stranded comparison (2): the failed one is covered by the message.
    assert retried.json() == {"requests": 6}
    message.refresh_from_db()
    assert message.attempts == 2 and message.sent_at > first_send  # sent again at once
    new = OutboxMessage.objects.exclude(pk=message.pk).get()
    assert list(new.comparisons.all()) == [stranded]
    tasks = queued(broker)
    assert len(tasks) == 3
    assert {r["comparison"] for r in tasks[2]["args"][0]} == {stranded.pk}

    # With everything asked for, a second retry only sends the unanswered messages again.
    with django_capture_on_commit_callbacks(execute=True):
        again = api_client.post(f"/api/v1/batches/{batch.pk}/retry-generation/")
    assert again.json() == {"requests": 6}
    assert OutboxMessage.objects.count() == 2 and len(queued(broker)) == 5


def test_in_process_tasks_left_unanswered_by_an_earlier_process_run_again(
    tiny_policy, settings, django_capture_on_commit_callbacks, monkeypatch
):
    """The demo (no broker) runs tasks in its own process: those that died with an earlier
    process are in flight for ever, unless the next start sends them again."""
    batch = draft(2)
    settings.PAIRWISE_GENERATION_TIMEOUT_SECONDS = 3600
    monkeypatch.setattr(outbox, "_send", lambda message: None)  # the process dies: no answer
    with django_capture_on_commit_callbacks(execute=True):
        activate_batch(batch)
    monkeypatch.undo()
    message = OutboxMessage.objects.get()
    assert message.sent_at is not None and message.done_at is None
    assert outbox.relay() == 0
    assert outbox.relay(include_in_flight=True) == 1  # run inline here
    message.refresh_from_db()
    assert message.done_at is not None
    assert set(batch.comparisons.values_list("status", flat=True)) == {"ready"}
    assert batch.comparisons.filter(responses__isnull=False).count() == 4


# --- what never gets an answer, what is gone, what is old ---------------------------------------


def test_a_message_that_cannot_be_sent_holds_up_no_other_and_is_given_up_in_the_end(
    broker, tiny_policy, settings, monkeypatch
):
    settings.PAIRWISE_OUTBOX_MAX_ATTEMPTS = 2
    monkeypatch.setattr(generation, "REQUESTS_PER_TASK", 2)  # one comparison per message
    batch = draft(2)
    activate_batch(batch)  # not committed (no on-commit relay): both messages are due
    broken, good = OutboxMessage.objects.order_by("pk")
    OutboxMessage.objects.filter(pk=broken.pk).update(payload={"no": "requests"})

    assert outbox.relay() == 1  # the broken one first, then the good one all the same
    [task] = queued(broker)
    assert {r["comparison"] for r in task["args"][0]} == set(
        good.comparisons.values_list("pk", flat=True)
    )
    broken.refresh_from_db()
    assert broken.attempts == 1 and broken.last_error == "KeyError: 'requests'"
    assert broken.sent_at is not None  # tried again after its timeout, not at every pass
    assert outbox.backlog()[GENERATION] == {"due": 0, "in_flight": 1}  # only the good one

    timeout = outbox.answer_timeout(GENERATION)
    later = broken.sent_at + timeout + timedelta(seconds=1)
    store_results(answer(task["args"][0]), outbox_id=good.pk)
    assert outbox.relay(now=later) == 0  # its second try fails too
    broken.refresh_from_db()
    assert broken.attempts == 2 and broken.done_at is None
    # Two sends, no answer: given up, and its comparison failed with the reason.
    given_up = later + timeout + timedelta(seconds=1)
    assert outbox.relay(now=given_up) == 0
    broken.refresh_from_db()
    reason = "no answer after 2 sends; last error: KeyError: 'requests'"
    assert (broken.done_at, broken.last_error) == (given_up, reason)
    failed = Comparison.objects.get(outbox_messages=broken)
    assert (failed.status, failed.generation_error) == ("failed", reason)
    assert Comparison.objects.get(outbox_messages=good).status == "ready"


def test_a_message_unanswered_after_its_sends_fails_its_comparisons_which_can_be_retried(
    broker, tiny_policy, settings, django_capture_on_commit_callbacks
):
    """A worker killed by the kernel mid-task, or a task discarded on arrival: no answer, no
    error, and without a cap the message would be sent for ever."""
    settings.PAIRWISE_OUTBOX_MAX_ATTEMPTS = 3
    batch = draft(2)
    with django_capture_on_commit_callbacks(execute=True):
        activate_batch(batch)
    message = OutboxMessage.objects.get()
    timeout = outbox.answer_timeout(GENERATION)
    now = message.sent_at
    for _ in range(2):
        now += timeout + timedelta(seconds=1)
        assert outbox.relay(now=now) == 1
    now += timeout + timedelta(seconds=1)
    assert outbox.relay(now=now) == 0  # not a fourth time
    assert len(queued(broker)) == 3
    message.refresh_from_db()
    reason = "no answer after 3 sends; last error: none recorded (the task was lost or discarded)"
    assert (message.attempts, message.done_at, message.last_error) == (3, now, reason)
    assert set(batch.comparisons.values_list("status", "generation_error")) == {("failed", reason)}
    # An admin's retry asks anew, in a message of its own.
    assert retry_unfinished_generation(batch) == 4
    assert OutboxMessage.objects.filter(done_at__isnull=True).exclude(pk=message.pk).count() == 1
    assert set(batch.comparisons.values_list("status", flat=True)) == {"waiting"}


def test_a_training_message_given_up_fails_its_run_if_still_queued(broker, settings):
    settings.PAIRWISE_OUTBOX_MAX_ATTEMPTS = 5
    long_ago = timezone.now() - outbox.answer_timeout(OutboxMessage.Kind.TRAINING) * 2
    queued_run = TrainingRun.objects.create(kind=TrainingRun.Kind.REWARD_HELPFULNESS)
    running = TrainingRun.objects.create(kind=TrainingRun.Kind.REWARD_SAFETY, status="running")
    for run in (queued_run, running):
        OutboxMessage.objects.create(
            kind=OutboxMessage.Kind.TRAINING,
            payload={"run_id": run.pk},
            sent_at=long_ago,
            attempts=5,
        )
    assert outbox.relay() == 0
    assert not OutboxMessage.objects.filter(done_at__isnull=True).exists()
    assert queued(broker, "training") == []
    queued_run.refresh_from_db()
    assert queued_run.status == "failed" and queued_run.finished_at is not None
    assert queued_run.error == (
        "not started: the training task got no answer after 5 sends; "
        "last error: none recorded (the task was lost or discarded)"
    )
    assert TrainingRun.objects.get(pk=running.pk).status == "running"  # its worker has it


def test_a_retried_generation_task_gets_an_expiry_of_its_own(broker, monkeypatch):
    """Celery gives a retry the first send's options, its expiry included: a first attempt
    that ended past that deadline (it waited, then ran long) had its retry discarded."""

    def out_of_memory(requests):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(tasks, "run_generation", out_of_memory)
    passed = timezone.now() - timedelta(seconds=30)
    requests = [{"comparison": 1, "slot": 1}]
    # What a worker sets up for the task it took from the generation queue.
    tasks.generate_responses.push_request(
        id="first-attempt",
        args=[requests],
        kwargs={"expires_after": 120},
        retries=0,
        is_eager=False,
        called_directly=False,
        expires=passed.isoformat(),
        delivery_info={"exchange": "", "routing_key": "generation"},
    )
    try:
        with pytest.raises(Retry):
            tasks.generate_responses.run(requests, expires_after=120)
    finally:
        tasks.generate_responses.pop_request()
    [retry] = queued(broker)
    assert retry["task"] == "model_worker.tasks.generate_responses"
    assert retry["kwargs"] == {"expires_after": 120}  # and so on, for its own retries
    fresh = timezone.now() + timedelta(seconds=2 + 120)  # its countdown, then its lifetime
    assert abs((datetime.fromisoformat(retry["expires"]) - fresh).total_seconds()) < 5


def test_a_generation_message_whose_comparisons_are_gone_is_closed_unsent(broker, tiny_policy):
    batch = draft(2)
    activate_batch(batch)  # not committed: due
    message = OutboxMessage.objects.get()
    batch.delete()  # nothing was annotated: it may go, with its comparisons
    assert outbox.relay() == 0
    assert queued(broker) == []
    message.refresh_from_db()
    assert message.done_at is not None and message.attempts == 0
    assert message.last_error == "not sent: its comparisons were deleted"


def test_sends_have_no_publish_retries_of_their_own(broker, tiny_policy, monkeypatch):
    """Celery would retry a publish (and kombu its connection) while the request that recorded
    the work waits: one try, and the outbox is the retry."""
    sent = []
    monkeypatch.setattr(_chain, "apply_async", lambda chain, *args, **options: sent.append(options))
    activate_batch(draft(1))
    assert outbox.relay() == 1
    timeout = outbox.answer_timeout(GENERATION).total_seconds()
    assert sent == [
        {
            "ignore_result": True,
            "retry": True,
            "retry_policy": {"max_retries": 0},
            "expires": timeout,
        }
    ]


def test_answered_messages_are_pruned_after_the_retention(broker, tiny_policy, settings):
    settings.PAIRWISE_OUTBOX_RETENTION_DAYS = 7
    now = timezone.now()
    [comparison] = draft(1).comparisons.all()

    def message(created_days_ago: float, answered_days_ago: float | None) -> int:
        made = OutboxMessage.objects.create(
            kind=GENERATION,
            payload={"requests": []},
            created_at=now - timedelta(days=created_days_ago),
            sent_at=now - timedelta(days=created_days_ago),
            done_at=None if answered_days_ago is None else now - timedelta(answered_days_ago),
        )
        made.comparisons.add(comparison)
        return made.pk

    old = message(10, 9)
    kept = [message(10, 1), message(2, 2), message(1, None)]
    assert outbox.prune(now) == 1
    assert sorted(OutboxMessage.objects.values_list("pk", flat=True)) == sorted(kept)
    assert not OutboxMessage.comparisons.through.objects.filter(outboxmessage_id=old).exists()

    message(30, 29)
    out = io.StringIO()
    call_command("relay_outbox", stdout=out)
    assert "pruned 1 answered message(s) older than 7 days" in out.getvalue()
    assert sorted(OutboxMessage.objects.values_list("pk", flat=True)) == sorted(kept)


@pytest.mark.django_db(transaction=True)
def test_two_relays_at_once_send_a_due_message_once(broker, tiny_policy, monkeypatch):
    batch = draft(2)
    activate_batch(batch)  # committed: sent at once
    message = OutboxMessage.objects.get()
    later = message.sent_at + outbox.answer_timeout(GENERATION) + timedelta(seconds=1)
    redis.Redis.from_url(broker).flushdb()  # lost with the broker: due again at `later`

    both_read_it = threading.Barrier(2, timeout=30)
    relay_one = outbox._relay_one

    def together(due_message, now):
        both_read_it.wait()  # each relay has read the message as due; now both try
        return relay_one(due_message, now)

    monkeypatch.setattr(outbox, "_relay_one", together)
    sent = []

    def relay() -> None:
        try:
            sent.append(outbox.relay(now=later))
        finally:
            connections.close_all()  # this thread's own

    relays = [threading.Thread(target=relay) for _ in range(2)]
    for thread in relays:
        thread.start()
    for thread in relays:
        thread.join(60)
    assert sorted(sent) == [0, 1]
    assert len(queued(broker)) == 1
    message.refresh_from_db()
    assert message.attempts == 2 and message.sent_at == later


def test_the_default_in_flight_cap_fits_one_gpu_process(settings):
    """The rule: in flight × a task's duration ÷ worker processes < the generation timeout,
    for docker compose's gpu profile: one process, about 60 s for a task of 64 requests."""
    assert generation.REQUESTS_PER_TASK == 64
    assert (
        settings.PAIRWISE_GENERATION_MAX_IN_FLIGHT * 60 / 1
        < settings.PAIRWISE_GENERATION_TIMEOUT_SECONDS
    )
