"""Launching a training job (rlhf/jobs.py) and following it, on a model worker.

The worker hands ``rlhf`` a spec file and reads files back, as DESIGN.md says: it runs

    accelerate launch [LAUNCH OPTIONS] -m rlhf run SPEC.json

in a process group of its own, reads the job's ``events.jsonl`` as it grows and passes each new
batch of records, as plain data, to a callback. The launch options are the deployment's:
``PAIRWISE_TRAINING_LAUNCH`` (default ``--num_processes 1``: one process, CPU or one GPU; for
example ``--multi_gpu --num_processes 4`` or an FSDP config). A job that dies from a signal
(a SIGKILL, the kernel's OOM killer) is reported as such, with the events it wrote.

:func:`train` is the body of the ``training`` queue's task: it takes a lease on the job's
directory (``worker.json``: host, worker pid, the job's process group, refreshed while it runs),
so that a copy of the task delivered twice does not run the job twice, and a copy delivered
after its worker died stops the orphaned job and resumes it from its last checkpoint. A job
that finished already is reported from its files, not run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.jobs import EVENTS_FILE, METRICS_FILE, MODEL_DIR, RunSpec, read_events

DEFAULT_LAUNCH_OPTIONS = "--num_processes 1"
POLL_SECONDS = 0.5
# With no new event for this long, the callback gets an empty batch: the job is alive.
HEARTBEAT_SECONDS = 30.0
LEASE_FILE = "worker.json"
# A lease not refreshed for this long belongs to a worker that is gone.
LEASE_STALE_SECONDS = 120.0


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
    on_poll: Callable[[], None] = lambda: None,
    events_from: int | None = None,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
) -> JobOutcome:
    """Launch the job of ``spec_path`` and wait for it, passing new events to ``on_events``
    as they are written (and an empty list after ``heartbeat_seconds`` without any).
    ``on_start`` receives the process (its group id is its pid); ``on_poll`` is called at each
    look at the log. ``events_from``: the first event to pass on (default: those written from
    now on; a resumed job appends to its log)."""
    spec = RunSpec.load(spec_path)
    events_path = spec.output_dir / EVENTS_FILE
    seen = len(read_events(events_path)) if events_from is None else events_from
    last_report = time.monotonic()
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
            on_poll()
            events = read_events(events_path)
            if len(events) > seen or time.monotonic() - last_report > heartbeat_seconds:
                on_events(events[seen:])
                seen, last_report = max(seen, len(events)), time.monotonic()
            if finished:
                break
            time.sleep(POLL_SECONDS)
    tail = log_path.read_text(errors="replace")[-4000:]
    return JobOutcome(process.returncode, read_events(events_path), tail)


# --- the task's body: one job per directory, resumed when its worker was lost --------------------


class Lease:
    """``worker.json`` in a job's directory: which worker runs the job, and its process group."""

    def __init__(self, directory: Path):
        self.path = directory / LEASE_FILE
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "process_group": None}

    def acquire(self) -> bool:
        """Take the lease unless another worker, alive, holds it; False: it does.

        A lease file is created exclusively, so of two copies of a task that arrive together
        one wins. A lease not refreshed for LEASE_STALE_SECONDS, or (on this host) whose worker
        process is gone, is taken over: its job, orphaned, is stopped first.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            if self._held_elsewhere():
                return False
        self.take()
        return True

    def _held_elsewhere(self) -> bool:
        try:
            lease = json.loads(self.path.read_text() or "{}")
            age = time.time() - self.path.stat().st_mtime
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        same_host = lease.get("host") == self.mine["host"]
        if same_host and lease.get("pid") == self.mine["pid"]:
            return False
        # A live worker refreshes its lease at every poll; on this host a dead one is known at
        # once (its pid may be reused later, hence the age too).
        fresh = age < LEASE_STALE_SECONDS
        if fresh and (not same_host or _process_exists(lease.get("pid"))):
            return True
        if same_host and lease.get("process_group"):  # the dead worker's job, orphaned
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(lease["process_group"], signal.SIGKILL)
        return False

    def take(self, process_group: int | None = None) -> None:
        self.mine["process_group"] = process_group
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(LEASE_FILE + ".partial")
        partial.write_text(json.dumps(self.mine))
        partial.replace(self.path)

    def refresh(self) -> None:
        self.path.touch()

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _process_exists(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def outcome_report(spec: RunSpec, outcome: JobOutcome | None) -> dict[str, Any]:
    """How a job ended, as plain data for the platform: ``status`` (succeeded, failed), the
    error, the final metrics and where the model is. ``outcome`` None: it had finished before
    (its files say how)."""
    metrics_path = spec.output_dir / METRICS_FILE
    events = outcome.events if outcome else read_events(spec.output_dir / EVENTS_FILE)
    finished = metrics_path.is_file() and (outcome is None or outcome.succeeded)
    report: dict[str, Any] = {
        "status": "succeeded" if finished else "failed",
        "model_dir": str(spec.output_dir / MODEL_DIR),
        "metrics": json.loads(metrics_path.read_text()) if finished else None,
        "error": "",
        "output_tail": outcome.output_tail if outcome else "",
    }
    if not finished:
        errors = [event for event in events if event["type"] == "error"]
        if outcome is not None and outcome.killed_by:
            report["error"] = (
                f"the job was killed by {outcome.killed_by} (stopped, or out of memory)"
            )
        elif errors:
            report["error"] = errors[-1]["message"]
        else:
            code = outcome.returncode if outcome else "?"
            report["error"] = f"the job exited with status {code} without an error event"
    return report


def train(
    spec_path: Path,
    on_events: Callable[[int, list[dict]], None],
    *,
    events_from: int = 0,
    options: list[str] | None = None,
) -> tuple[dict[str, Any], JobOutcome | None]:
    """Run the job of ``spec_path`` unless another worker runs it; returns (report, outcome).

    ``on_events(index, events)``: new events, ``index`` the position of the first in the log
    (so that the platform applies each once, in order), from ``events_from`` on. The report's
    ``status`` is "skipped" when a live worker holds the job's lease.
    """
    spec = RunSpec.load(spec_path)
    lease = Lease(spec.output_dir)
    if not lease.acquire():
        return {"status": "skipped", "error": "another worker runs this job"}, None
    position = events_from

    def send(events: list[dict]) -> None:
        nonlocal position
        on_events(position, events)
        position += len(events)

    try:
        if (spec.output_dir / METRICS_FILE).is_file():  # finished before its answer was sent
            send(read_events(spec.output_dir / EVENTS_FILE)[events_from:])
            return outcome_report(spec, None), None
        outcome = run_training_job(
            spec_path,
            send,
            options=options,
            on_start=lambda process: lease.take(process.pid),
            on_poll=lease.refresh,
            events_from=events_from,
        )
    finally:
        lease.release()
    return outcome_report(spec, outcome), outcome
