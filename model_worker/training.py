"""Launching a training job (rlhf/jobs.py) and following it, on a model worker.

The worker hands ``rlhf`` a spec file and reads files back, as DESIGN.md says: it runs

    accelerate launch [LAUNCH OPTIONS] -m rlhf run SPEC.json

in a process group of its own, reads the job's ``events.jsonl`` as it grows and passes each new
batch of records, as plain data, to a callback. The launch options are the deployment's:
``PAIRWISE_TRAINING_LAUNCH`` (default ``--num_processes 1``: one process, CPU or one GPU; for
example ``--multi_gpu --num_processes 4`` or an FSDP config). A job that dies from a signal
(a SIGKILL, the kernel's OOM killer) is reported as such, with the events it wrote.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.jobs import EVENTS_FILE, RunSpec, read_events

DEFAULT_LAUNCH_OPTIONS = "--num_processes 1"
POLL_SECONDS = 0.5


def launch_options() -> list[str]:
    """The deployment's ``accelerate launch`` options (``PAIRWISE_TRAINING_LAUNCH``)."""
    return shlex.split(os.environ.get("PAIRWISE_TRAINING_LAUNCH", DEFAULT_LAUNCH_OPTIONS))


def launch_command(spec_path: Path, options: list[str] | None = None) -> list[str]:
    options = launch_options() if options is None else options
    return [
        sys.executable, "-m", "accelerate.commands.launch", *options,
        "-m", "rlhf", "run", str(spec_path),
    ]  # fmt: skip


@dataclass
class JobOutcome:
    """How a launched job ended: its exit code (negative: the signal that killed it), every
    event it wrote, and the last lines it printed (for a failure that wrote no event)."""

    returncode: int
    events: list[dict] = field(default_factory=list)
    output_tail: str = ""

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and any(e["type"] == "metrics" for e in self.events)

    @property
    def killed_by(self) -> str | None:
        """The signal's name when a signal ended the job (SIGKILL: killed, or out of memory)."""
        if self.returncode < 0:
            return signal.Signals(-self.returncode).name
        return None


def run_training_job(
    spec_path: Path,
    on_events: Callable[[list[dict]], None] = lambda events: None,
    *,
    options: list[str] | None = None,
    on_start: Callable[[subprocess.Popen], None] = lambda process: None,
) -> JobOutcome:
    """Launch the job of ``spec_path`` and wait for it, passing new events to ``on_events``
    as they are written. ``on_start`` receives the process (its group id is its pid)."""
    spec = RunSpec.load(spec_path)
    events_path = spec.output_dir / EVENTS_FILE
    seen = len(read_events(events_path))  # a resumed job appends to its log
    log_path = spec.output_dir / "launch.log"
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            launch_command(spec_path, options),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
        on_start(process)
        while True:
            finished = process.poll() is not None
            events = read_events(events_path)
            if len(events) > seen:
                on_events(events[seen:])
                seen = len(events)
            if finished:
                break
            time.sleep(POLL_SECONDS)
    tail = log_path.read_text(errors="replace")[-4000:]
    return JobOutcome(process.returncode, read_events(events_path), tail)
