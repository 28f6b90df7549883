"""`python -m tests.integration.recording_celery worker ...`: a Celery worker whose generation
appends a line (its process id) to ``PAIRWISE_TEST_GENERATIONS_FILE`` each time it starts, then
waits ``PAIRWISE_TEST_STALL_SECONDS`` (default none) before generating: a test counts the
generation tasks a worker really ran, or kills the worker in the middle of one.
"""

import os
import sys
import time
from pathlib import Path

# torch and transformers load before the worker answers, not in its first task: a cold start
# (seconds on a busy machine) would count against the fault tests' short generation timeout.
import torch  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

import model_worker.tasks

_generate = model_worker.tasks.run_generation


def _recorded_generation(requests):
    with Path(os.environ["PAIRWISE_TEST_GENERATIONS_FILE"]).open("a") as record:
        record.write(f"{os.getpid()}\n")
    time.sleep(float(os.environ.get("PAIRWISE_TEST_STALL_SECONDS", "0")))
    return _generate(requests)


# Patched before the pool forks: prefork children inherit it.
model_worker.tasks.run_generation = _recorded_generation

if __name__ == "__main__":
    from celery.__main__ import main

    sys.exit(main())
