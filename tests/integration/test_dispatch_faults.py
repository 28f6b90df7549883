"""Faults on real components: a private Redis broker that a test stops and starts again (empty,
as after a crash), real Celery workers, the real relay process (`manage.py relay_outbox --loop`),
and a whole generation worker killed with SIGKILL to its process group.

The generation bound is short here (GENERATION_TIMEOUT); the broker's visibility timeout keeps its
default of an hour, so that only the outbox's own bound can bring the work back in time.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from kombu import Connection
from rest_framework.test import APIClient

from annotation_app.models import Batch, Comparison, ModelVersion, OutboxMessage, Response
from annotation_app.services.batches import activate_batch
from annotation_app.services.imports import import_comparisons
from tests.conftest import FAST_PLAN
from tests.workers import KEY_PREFIX, ROOT, _database_url, app_using, wait_for

GENERATION_TIMEOUT = 15  # seconds; PAIRWISE_GENERATION_TIMEOUT_SECONDS, 300 by default
RELAY_INTERVAL = 1  # seconds; PAIRWISE_RELAY_INTERVAL_SECONDS, 15 by default
# PAIRWISE_GENERATION_MAX_IN_FLIGHT (4 by default): with one worker and a few seconds a task
# here, more queued at once would wait past the short timeout and be sent again.
MAX_IN_FLIGHT = 3
PRIVATE_PORTS = range(6391, 6395)
QUEUE_KEY = KEY_PREFIX["global_keyprefix"] + "{}"


# --- a private Redis, workers, the relay ------------------------------------------------------


class PrivateRedis:
    """A redis-server of this test's own, without persistence: stopped, it loses everything."""

    def __init__(self, port: int, directory: Path):
        self.port, self.directory = port, directory
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", self.directory],
            stdout=subprocess.DEVNULL,
        )
        wait_for(self._answers, timeout=10, message=f"redis-server on {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def _answers(self) -> bool:
        try:
            return self.client().ping()
        except redis.ConnectionError:
            return False


def free_private_port() -> int:
    for port in PRIVATE_PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail(f"no free port for a private Redis in {PRIVATE_PORTS}")


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(free_private_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _environment(broker_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": broker_url,
        # Merged over the settings' defaults: the visibility timeout stays at an hour.
        "CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps(KEY_PREFIX),
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": _database_url(),
        "PAIRWISE_GENERATION_TIMEOUT_SECONDS": str(GENERATION_TIMEOUT),
        "PAIRWISE_GENERATION_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
        **extra,
    }


def start_worker(
    broker_url: str, record: Path, *, name: str, prefork: bool = False, stall: float = 0
) -> tuple[subprocess.Popen, str]:
    """A recording Celery worker (tests/integration/recording_celery.py) in a session of its
    own; returns the process and its node name. ``prefork``: a pool child runs the tasks."""
    node = f"{name}-{os.getpid()}-{time.monotonic_ns()}@{socket.gethostname()}"
    pool = ["prefork", "--concurrency", "1"] if prefork else ["solo"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.recording_celery", "-A", "config", "worker"]
        + ["--pool", *pool]
        + ["--queues", "default,generation,training", "--loglevel", "WARNING"]
        + ["--hostname", node, "--without-gossip", "--without-mingle"],
        cwd=ROOT,
        env=_environment(
            broker_url,
            PAIRWISE_TEST_GENERATIONS_FILE=str(record),
            PAIRWISE_TEST_STALL_SECONDS=str(stall),
        ),
        start_new_session=True,  # its own process group, to be killed whole
    )
    return worker, node


def start_relay(broker_url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "relay_outbox", "--loop", "--interval", str(RELAY_INTERVAL)],
        cwd=ROOT,
        env=_environment(broker_url),
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )


def end(process: subprocess.Popen) -> None:
    """Stop a process this test started, and whatever it started (its process group)."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):  # its pool children, if any are left
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_answering(app, worker: subprocess.Popen, node: str) -> None:
    def answers():
        if worker.poll() is not None:
            pytest.fail(f"the worker {node} exited with code {worker.returncode}")
        return app.control.inspect(destination=[node], timeout=1).ping()

    wait_for(answers, timeout=60, message=f"the worker {node} did not answer")


def generations(record: Path) -> int:
    return len(record.read_text().splitlines()) if record.exists() else 0


def two_responses_each(comparisons) -> bool:
    ids = list(comparisons.values_list("pk", flat=True))
    responses = Response.objects.filter(comparison_id__in=ids)
    counts = Counter(responses.values_list("comparison_id", flat=True))
    return len(ids) > 0 and all(counts[pk] == 2 for pk in ids)


def prompt_file(count: int, label: str) -> io.BytesIO:
    lines = (json.dumps({"prompt": f"{label}: tell me about {i}."}) for i in range(count))
    return io.BytesIO(("\n".join(lines) + "\n").encode())


def write_prompt(api: APIClient, batch: Batch, text: str) -> int:
    started = time.monotonic()
    written = api.post(f"/api/v1/batches/{batch.pk}/prompts/", {"prompt": text}, format="json")
    assert written.status_code == 201, written.content
    assert time.monotonic() - started < 10  # answered at once, broker or not
    return written.json()["assignment"]


# --- the broker goes away -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_broker_outage_during_prompts_imports_and_activation_strands_nothing(
    private_redis, tiny_policy, annotator, batch_admin, tmp_path, settings
):
    settings.PAIRWISE_GENERATION_TIMEOUT_SECONDS = GENERATION_TIMEOUT
    settings.PAIRWISE_GENERATION_MAX_IN_FLIGHT = MAX_IN_FLIGHT
    prompts = Batch.objects.create(
        name="written",
        kind="helpfulness",
        status=Batch.Status.ACTIVE,
        allow_annotator_prompts=True,
        sampling_plan=FAST_PLAN,
    )
    growing = Batch.objects.create(
        name="growing", kind="helpfulness", status=Batch.Status.ACTIVE, sampling_plan=FAST_PLAN
    )
    drafted = Batch.objects.create(name="drafted", kind="helpfulness", sampling_plan=FAST_PLAN)
    import_comparisons(drafted, prompt_file(3, "drafted"), "drafted.jsonl")
    writer, admin = APIClient(), APIClient()
    writer.force_authenticate(annotator)
    admin.force_authenticate(batch_admin)
    record = tmp_path / "generations"

    with app_using(private_redis.url) as app:
        # Accepted just before the outage, queued on the broker where no worker took them yet.
        for i in range(2):
            write_prompt(writer, prompts, f"Before the outage {i}")
        early = list(OutboxMessage.objects.order_by("pk"))
        assert [m.attempts for m in early] == [1, 1] and all(m.sent_at for m in early)
        assert private_redis.client().llen(QUEUE_KEY.format("generation")) == 2

        private_redis.stop()
        write_prompt(writer, prompts, "During the outage")
        imported = admin.post(
            f"/api/v1/batches/{growing.pk}/import/",
            {"file": SimpleUploadedFile("more.jsonl", prompt_file(2, "growing").read())},
            format="multipart",
        )
        assert imported.status_code == 201, imported.content
        activated = admin.post(f"/api/v1/batches/{drafted.pk}/activate/")
        assert activated.status_code == 200, activated.content
        during = OutboxMessage.objects.exclude(pk__in=[m.pk for m in early])
        assert during.count() == 3
        assert all(m.sent_at is None and "OperationalError" in m.last_error for m in during)

        private_redis.start()  # empty: the early messages were lost with its queue
        assert private_redis.client().llen(QUEUE_KEY.format("generation")) == 0
        worker, node = start_worker(private_redis.url, record, name="after-outage")
        relay = None
        try:
            wait_answering(app, worker, node)
            relay = start_relay(private_redis.url)
            every = Comparison.objects.all()
            wait_for(
                lambda: not every.exclude(status=Comparison.Status.READY).exists(),
                timeout=120,
                message="some comparisons were never generated after the outage",
            )
        finally:
            for process in (relay, worker):
                if process is not None:
                    end(process)

    assert every.count() == 2 + 1 + 2 + 3
    assert two_responses_each(every)  # none stuck, none with a third
    assert Response.objects.count() == 2 * every.count()
    assert not OutboxMessage.objects.filter(done_at__isnull=True).exists()
    # The lost messages were sent again once their timeout passed, not before.
    for message in early:
        first_sent = message.sent_at
        message.refresh_from_db()
        assert message.attempts >= 2
        assert (message.sent_at - first_sent).total_seconds() >= GENERATION_TIMEOUT
    # Those written during the outage were sent once the relay found the broker back, a few at
    # a time (the oldest first), as answers came in (a refused send is not counted).
    assert all(m.attempts >= 1 for m in during.all())
    # One task per message, unless a task outlived the short timeout on a busy machine and was
    # sent again: stored responses are the same either way.
    assert generations(record) >= 5


# --- a generation worker killed whole -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_killed_generation_worker_s_work_completes_within_the_generation_bound(
    private_redis, tiny_policy, tmp_path, settings, capsys
):
    settings.PAIRWISE_GENERATION_TIMEOUT_SECONDS = GENERATION_TIMEOUT
    settings.PAIRWISE_GENERATION_MAX_IN_FLIGHT = MAX_IN_FLIGHT
    batch = Batch.objects.create(name="killed", kind="helpfulness", sampling_plan=FAST_PLAN)
    import_comparisons(batch, prompt_file(3, "killed"), "killed.jsonl")
    stalled_record, fresh_record = tmp_path / "stalled", tmp_path / "fresh"

    with app_using(private_redis.url) as app:
        stalling, stalling_node = start_worker(
            private_redis.url, stalled_record, name="stalling", prefork=True, stall=600
        )
        fresh = relay = None
        try:
            wait_answering(app, stalling, stalling_node)
            relay = start_relay(private_redis.url)
            activate_batch(batch)
            message = OutboxMessage.objects.get()
            wait_for(lambda: generations(stalled_record), timeout=60, message="never started")
            [child] = {int(pid) for pid in stalled_record.read_text().split()}
            assert child != stalling.pid  # a pool child runs the task
            # The worker dies whole, its task half done; a fresh one starts.
            killed_at = time.monotonic()
            os.killpg(stalling.pid, signal.SIGKILL)
            stalling.wait(timeout=10)
            wait_for(lambda: not _alive(child), timeout=10, message="the pool child survived")
            fresh, fresh_node = start_worker(private_redis.url, fresh_record, name="fresh")
            wait_answering(app, fresh, fresh_node)
            assert Response.objects.count() == 0
            # Unacknowledged, the killed task's message waits out the hour-long visibility
            # timeout in the broker; the outbox sends the work again after its own timeout.
            wait_for(
                lambda: not batch.comparisons.exclude(status=Comparison.Status.READY).exists(),
                timeout=GENERATION_TIMEOUT + 60,
                message="the killed worker's work was not done again within the bound",
            )
            after_kill = time.monotonic() - killed_at
            message.refresh_from_db()
            after_send = (message.done_at - message.created_at).total_seconds()
            with capsys.disabled():
                print(
                    f"\n[generation bound {GENERATION_TIMEOUT} s + relay every {RELAY_INTERVAL} s]"
                    f" all comparisons ready {after_kill:.1f} s after the SIGKILL,"
                    f" {after_send:.1f} s after the first send"
                )
            # The bound: sent again at most timeout + relay interval after the first send, then
            # one tiny generation (generous here: two shared CPUs).
            assert after_send <= GENERATION_TIMEOUT + RELAY_INTERVAL + 20
            assert message.attempts >= 2  # sent again: the broker alone would wait an hour
            assert two_responses_each(batch.comparisons.all())
            done_by_fresh = generations(fresh_record)
            assert done_by_fresh >= 1

            # An hour later the broker would hand the killed worker's copy out again: do it now,
            # as kombu does (restore_visible with the timeout passed). It has expired: the
            # worker discards it instead of generating again.
            # (The fresh worker acknowledges its last task once it returns, a moment after the
            # comparisons it stored are ready: only the killed worker's copy stays.)
            wait_for(
                lambda: private_redis.client().hlen(QUEUE_KEY.format("unacked")) == 1,
                timeout=10,
                message="not exactly one unacknowledged message: the killed worker's",
            )
            with Connection(
                private_redis.url, transport_options={**KEY_PREFIX, "visibility_timeout": 0}
            ) as connection:
                connection.default_channel.qos.restore_visible(num=10)
            client = private_redis.client()
            wait_for(
                lambda: (
                    client.hlen(QUEUE_KEY.format("unacked")) == 0
                    and client.llen(QUEUE_KEY.format("generation")) == 0
                ),
                timeout=30,
                message="the restored copy was not taken",
            )
            time.sleep(1)
            assert generations(fresh_record) == done_by_fresh  # discarded, not generated again
            assert two_responses_each(batch.comparisons.all())
        finally:
            for process in (relay, fresh, stalling):
                if process is not None:
                    end(process)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- training dispatch --------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_training_run_started_while_the_broker_is_down_stays_queued_and_is_relayed(
    private_redis, ml_staff, api_client, django_capture_on_commit_callbacks
):
    ModelVersion.objects.create(name="base", role="policy", path="org/base", is_current=True)
    pairs = Batch.objects.create(name="pairs", kind="helpfulness")
    line = {
        "prompt": [{"role": "user", "content": "Relayed?"}],
        "chosen": [{"role": "assistant", "content": "Later."}],
        "rejected": [{"role": "assistant", "content": "Never."}],
    }
    import_comparisons(pairs, io.BytesIO((json.dumps(line) + "\n").encode()), "pairs.jsonl")
    api_client.force_authenticate(ml_staff)
    with app_using(private_redis.url):
        private_redis.stop()
        with django_capture_on_commit_callbacks(execute=True):
            started = api_client.post(
                "/api/v1/training-runs/",
                {"kind": "helpfulness", "batches": [pairs.pk], "config": {}},
                format="json",
            )
        assert started.status_code == 201, started.content
        assert started.json()["status"] == "queued"
        message = OutboxMessage.objects.get(kind="training")
        assert message.sent_at is None and "OperationalError" in message.last_error

        private_redis.start()
        out = io.StringIO()
        call_command("relay_outbox", stdout=out)
        assert "training: 0 due, 1 in flight" in out.getvalue()
    # The platform's task that writes the run's job goes first (it then sends the job to the
    # training queue's model workers).
    [raw] = private_redis.client().lrange(QUEUE_KEY.format("default"), 0, -1)
    queued = json.loads(raw)
    assert queued["headers"]["task"] == "annotation_app.tasks.start_training_run"
    assert queued["headers"]["argsrepr"] == f"({started.json()['id']},)"
    assert queued["headers"]["kwargsrepr"] == f"{{'outbox_id': {message.pk}}}"
