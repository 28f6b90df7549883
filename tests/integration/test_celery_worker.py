"""The Celery app is wired: a real worker process consumes our tasks from Redis."""

import os

import pytest

from model_worker.tasks import ping

pytestmark = pytest.mark.slow


def test_a_real_worker_runs_tasks_from_redis(celery_worker_process):
    result = ping.apply_async(queue="default").get(timeout=30)
    assert result["ok"] is True
    assert result["pid"] == celery_worker_process.pid != os.getpid()
