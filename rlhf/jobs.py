"""The job contract: a training stage reads a run spec and writes an event log, metrics and a model.

A job is what the platform's model workers launch (``accelerate launch -m rlhf run SPEC.json``)
and what the stages' own commands (``train-reward``, …) build and run; it touches no database.
This module is the contract alone (what a spec holds, what a job writes), free of torch, so that
the platform can write specs and read events; :mod:`rlhf.runner` runs them. Its spec (JSON) says
everything:

    {"stage": "reward",                       # which stage runs it (STAGES)
     "config": {...},                         # the stage's settings (reward: RewardTrainingConfig)
     "inputs": {"data": [{"path": "...", "sha256": "..."}]},   # files by role, with their hash
     "options": {...},                        # stage choices that are not settings (reward: recipe)
     "output_dir": "...",
     "resume": false}                         # continue from the job's own checkpoints

The inputs' SHA-256 is checked before anything runs, so a job trains on exactly the data its
spec names. In ``output_dir`` the job writes:

    events.jsonl   one JSON record a line, appended as it goes: ``{"type", "time", ...}`` with
                   the types in EVENT_TYPES (a reader tailing it skips an unfinished last line)
    metrics.json   what the run did and its final metrics, written last: the job finished
    model/         the trained model (``save_pretrained``) with its metadata and checkpoints
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

SPEC_FILE = "spec.json"  # where the commands and the platform keep the spec they ran
EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.json"
MODEL_DIR = "model"

# Each event type and the fields it carries besides "type" and "time".
EVENT_TYPES = {
    "log": ("message",),
    "step": ("step", "total_steps", "loss", "learning_rate", "pairs_per_second"),
    "evaluation": ("step", "metrics"),
    # One iteration's record of an iterative stage (PPO: reward, KL, losses, the time split).
    "iteration": ("step", "metrics"),
    "progress": ("fraction",),
    # What the stage trains on and holds out, once its data is read (pairs, prompts, …).
    "data": ("train", "held_out"),
    # The current model of the kind on the newest data, before training on it (reward stage).
    "baseline": ("model", "batch", "pairs", "metrics", "error"),
    "metrics": ("metrics",),
    "error": ("message", "traceback"),
}


class JobError(ValueError):
    """A spec that cannot run, naming the field (or file) at fault; nothing was written."""

    def __init__(self, field_name: str, message: str):
        self.field, self.message = field_name, message
        super().__init__(f"{field_name}: {message}")


def require_directories(config: Any, names: tuple[str, ...]) -> None:
    """Raise JobError naming ``config.<name>`` for each set path among ``names`` that is not a
    directory (the models a stage loads: checked before anything is written)."""
    for name in names:
        path = getattr(config, name)
        if path and not Path(path).is_dir():
            raise JobError(f"config.{name}", f"{path}: no such directory")


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class InputFile:
    path: Path
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> InputFile:
        """The file as it is now, hashed."""
        return cls(Path(path), sha256_of(path))

    def verify(self, role: str) -> None:
        """Refuse a file that is missing or is not the one the spec was written for."""
        if not self.path.is_file():
            raise JobError(f"inputs.{role}", f"{self.path}: no such file")
        found = sha256_of(self.path)
        if found != self.sha256:
            raise JobError(
                f"inputs.{role}",
                f"{self.path} has SHA-256 {found}, not the {self.sha256} the spec names: "
                "it changed since the spec was written",
            )


@dataclass
class RunSpec:
    stage: str
    output_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, list[InputFile]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    resume: bool = False

    @classmethod
    def from_dict(cls, values: Any) -> RunSpec:
        """A spec from its JSON; a missing or mistyped field raises JobError naming it."""
        if not isinstance(values, dict):
            raise JobError("spec", "must be a JSON object")
        known = {"stage", "output_dir", "config", "inputs", "options", "resume"}
        for name in values:
            if name not in known:
                raise JobError(
                    name, f"is not a field of a run spec; the fields are {sorted(known)}"
                )
        for name in ("stage", "output_dir"):
            if not isinstance(values.get(name), str) or not values[name]:
                raise JobError(name, "is required (a string)")
        for name in ("config", "options"):
            if not isinstance(values.get(name, {}), dict):
                raise JobError(name, "must be an object")
        if not isinstance(values.get("resume", False), bool):
            raise JobError("resume", "must be true or false")
        return cls(
            stage=values["stage"],
            output_dir=Path(values["output_dir"]),
            config=values.get("config", {}),
            inputs=_inputs_from(values.get("inputs", {})),
            options=values.get("options", {}),
            resume=values.get("resume", False),
        )

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        try:
            values = json.loads(Path(path).read_text())
        except OSError as error:
            raise JobError("spec", f"{path}: {error.strerror or error}") from None
        except json.JSONDecodeError as error:
            raise JobError("spec", f"{path}: not JSON: {error}") from None
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "config": self.config,
            "inputs": {
                role: [{"path": str(file.path), "sha256": file.sha256} for file in files]
                for role, files in self.inputs.items()
            },
            "options": self.options,
            "output_dir": str(self.output_dir),
            "resume": self.resume,
        }

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def paths(self, role: str) -> list[Path]:
        return [file.path for file in self.inputs.get(role, [])]


def _inputs_from(values: Any) -> dict[str, list[InputFile]]:
    if not isinstance(values, dict):
        raise JobError("inputs", "must map roles to lists of {path, sha256}")
    inputs = {}
    for role, files in values.items():
        if not isinstance(files, list):
            raise JobError(f"inputs.{role}", "must be a list of {path, sha256}")
        inputs[role] = []
        for index, entry in enumerate(files):
            where = f"inputs.{role}[{index}]"
            if not isinstance(entry, dict) or set(entry) != {"path", "sha256"}:
                raise JobError(where, "must be an object with exactly path and sha256")
            if not all(isinstance(entry[key], str) and entry[key] for key in entry):
                raise JobError(where, "path and sha256 must be non-empty strings")
            inputs[role].append(InputFile(Path(entry["path"]), entry["sha256"]))
    return inputs


class EventLog:
    """``events.jsonl`` of a job: records appended a line at a time, flushed as written.

    Under several processes only the main one writes (``main_process``); the others' writes do
    nothing, so that a stage can report without asking which process it runs in. ``listener``
    receives each record as it is written (the command line's progress display).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        main_process: bool = True,
        listener: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.path = Path(path)
        self.main_process = main_process
        self.listener = listener

    def write(self, event_type: str, **fields: Any) -> None:
        expected = EVENT_TYPES.get(event_type)
        if expected is None:
            raise ValueError(
                f"unknown event type {event_type!r}; the types are {list(EVENT_TYPES)}"
            )
        if set(fields) != set(expected):
            raise ValueError(f"a {event_type!r} event carries {expected}, not {sorted(fields)}")
        if not self.main_process:
            return
        record = {"type": event_type, "time": datetime.now(UTC).isoformat(), **fields}
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        if self.listener is not None:
            self.listener(record)


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """The complete records of an event log (a line still being written is left for later)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


# --- what a stage is (rlhf.runner runs them) ----------------------------------------------------


@dataclass
class JobContext:
    """What a stage's training step gets besides its plan."""

    spec: RunSpec
    events: EventLog
    main_process: bool = True
    # (pairs or prompts done, total) while a stage evaluates: the command line's progress bar.
    eval_progress: Callable[[int, int], None] | None = None


class Stage(Protocol):
    def prepare(self, spec: RunSpec) -> Any: ...

    def train(self, plan: Any, context: JobContext) -> dict[str, Any]: ...
