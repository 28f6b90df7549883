"""Celery tasks. Generation and training tasks are routed to their own queues (see settings)."""

import os
import socket

from celery import shared_task


@shared_task(name="model_worker.tasks.ping")
def ping() -> dict:
    """Health check: proves a worker consumes the ``default`` queue, and which process it is."""
    return {"ok": True, "host": socket.gethostname(), "pid": os.getpid()}
