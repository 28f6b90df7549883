"""Real Celery workers consuming from Redis: fixtures (registered in tests/conftest.py), helpers."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# One Redis database per xdist worker, so that parallel test processes never share a broker.
_WORKER_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_URL = os.environ.get(
    "PAIRWISE_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{15 - 2 * (_WORKER_INDEX % 8)}"
)
# Every key of this test session carries its own prefix, so that two test runs sharing a Redis
# server (two checkouts, say) never consume each other's tasks.
KEY_PREFIX = {"global_keyprefix": f"pairwise-test-{os.getpid()}:"}
# A second database for tests that need a broker of their own (killing a worker, say).
SCRATCH_REDIS_URL = os.environ.get(
    "PAIRWISE_TEST_SCRATCH_REDIS_URL",
    REDIS_URL.rsplit("/", 1)[0] + f"/{14 - 2 * (_WORKER_INDEX % 8)}",
)


def _flushed(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as error:
        pytest.fail(f"Redis is not reachable at {url}: {error}")
    client.flushdb()
    return url


@pytest.fixture(scope="session")
def redis_url():
    return _flushed(REDIS_URL)


def _database_url() -> str:
    """The URL of the test database, so that the worker writes where the tests read."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


def start_worker(
    broker_url: str,
    *,
    module: str = "celery",
    name: str = "worker",
    transport_options: dict | None = None,
    extra_env: dict | None = None,
) -> subprocess.Popen:
    """Start `celery worker` (or a wrapper module that ends by running it) on every queue."""
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": broker_url,
        "CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps({**KEY_PREFIX, **(transport_options or {})}),
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": _database_url(),
        **(extra_env or {}),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            "-A",
            "config",
            "worker",
            "--pool",
            "solo",
            "--queues",
            "default,generation,training",
            "--loglevel",
            "WARNING",
            "--hostname",
            f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
    )


@contextlib.contextmanager
def app_using(broker_url: str) -> Iterator:
    """Point this process's Celery app at ``broker_url`` and turn eager execution off."""
    from config.celery import app

    keys = ("broker_url", "result_backend", "task_always_eager", "broker_transport_options")
    previous = {key: app.conf.get(key) for key in keys}
    _drop_connections(app)
    app.conf.update(
        broker_url=broker_url,
        result_backend=broker_url,
        task_always_eager=False,
        broker_transport_options=KEY_PREFIX,
    )
    try:
        yield app
    finally:
        _drop_connections(app)
        app.conf.update(previous)


@pytest.fixture
def eager_tasks():
    """Tasks run in this process, as without a broker (the demo), even after a test of the
    session pointed the app at a worker."""
    from config.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        yield app
    finally:
        app.conf.task_always_eager = previous


def _drop_connections(app) -> None:
    # The producer pool is bound to the broker URL it was made with; Celery makes new ones
    # on demand once these are gone (there is no public API to re-point a running app).
    # They are not closed: kombu keeps producer pools per URL and would hand a closed one back.
    app._pool = None
    app.amqp._producer_pool = None
    app._backend_cache = None  # the result backend, made again from the new URL
    app._local.__dict__.pop("backend", None)


def wait_until_answering(app, worker: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not app.control.inspect(timeout=1).ping():
        if worker.poll() is not None:
            pytest.fail(f"the Celery worker exited with code {worker.returncode}")
        if time.monotonic() > deadline:
            pytest.fail(f"the Celery worker did not answer within {timeout} s")


def stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@pytest.fixture(scope="session")
def celery_worker_process(redis_url, django_db_setup, django_db_blocker, tmp_path_factory):
    """A `celery worker` subprocess on every queue, and the test process's app pointed at it.

    The worker uses the test database: what its tasks write, transactional tests can read.
    Training runs write their data snapshots and models under a folder of this session.
    """
    training_dir = tmp_path_factory.mktemp("training-runs")
    worker = start_worker(redis_url, extra_env={"PAIRWISE_TRAINING_DIR": str(training_dir)})
    try:
        with app_using(redis_url) as app:
            wait_until_answering(app, worker)
            yield worker
    finally:
        stop(worker)


def wait_for(condition, timeout: float = 90, interval: float = 0.2, message: str = ""):
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(message or f"condition not met within {timeout} s")
        time.sleep(interval)
