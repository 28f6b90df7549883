"""`python -m tests.integration.slow_celery worker ...`: a Celery worker whose generation
announces itself and then stalls, so that a test can kill the worker in the middle of a task.
"""

import os
import sys
import time
from pathlib import Path

import model_worker.tasks

_generate = model_worker.tasks.run_generation


def _stalling_generation(requests):
    Path(os.environ["PAIRWISE_TEST_STARTED_FILE"]).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("PAIRWISE_TEST_STALL_SECONDS", "120")))
    return _generate(requests)


model_worker.tasks.run_generation = _stalling_generation

if __name__ == "__main__":
    from celery.__main__ import main

    sys.exit(main())
