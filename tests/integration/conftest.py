"""Fixtures for the integration suite: a real Celery worker consuming from Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

# One Redis database per xdist worker, so that parallel test processes never share a broker.
_WORKER_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_URL = os.environ.get(
    "PAIRWISE_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{15 - _WORKER_INDEX % 16}"
)


@pytest.fixture(scope="session")
def redis_url():
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as error:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {error}")
    client.flushdb()
    return REDIS_URL


def _database_url() -> str:
    """The URL of the test database, so that the worker writes where the tests read."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture(scope="session")
def celery_worker_process(redis_url, django_db_setup, django_db_blocker):
    """A `celery worker` subprocess on every queue, and the test process's app pointed at it.

    The worker uses the test database: tasks it runs are visible to transactional tests.
    """
    from config.celery import app

    env = {
        **os.environ,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": _database_url(),
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
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
            f"pytest-worker-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
    )
    previous = {
        key: app.conf.get(key) for key in ("broker_url", "result_backend", "task_always_eager")
    }
    app.conf.update(broker_url=redis_url, result_backend=redis_url, task_always_eager=False)
    try:
        deadline = time.monotonic() + 60
        while not app.control.inspect(timeout=1).ping():
            if worker.poll() is not None:
                pytest.fail(f"the Celery worker exited with code {worker.returncode}")
            if time.monotonic() > deadline:
                pytest.fail("the Celery worker did not answer within 60 s")
        yield worker
    finally:
        app.conf.update(previous)
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
