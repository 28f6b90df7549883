"""A run as its pages show it: the log's tail, and the metrics shaped as Llama 2's Table 8."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from annotation_app.models import TrainingRun
from rlhf.preferences import TABLE8_BUCKETS, UNRATED

LOG_TAIL_LINES = 200


def log_tail(run: TrainingRun, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(run.logs.rstrip("\n").split("\n")[-lines:]) if run.logs else ""


def _accuracy_row(label: str, metrics: Mapping[str, Any]) -> dict:
    by_strength = metrics.get("by_strength") or {}
    return {
        "label": label,
        "cells": {key: by_strength.get(key) for key in TABLE8_BUCKETS},
        "overall": {"pairs": metrics.get("pairs"), "accuracy": metrics.get("accuracy")},
    }


def metrics_report(run: TrainingRun) -> dict:
    """A run's metrics shaped for its page: the Table 8 rows, per batch, calibration, safety.

    Plain data; missing parts are None, so that a run that failed half-way still shows what
    it has (the evaluation before training, say).
    """
    metrics = run.metrics or {}
    evaluation = metrics.get("eval") or {}
    before = metrics.get("before_training")
    rows = []
    if evaluation.get("pairs"):
        rows.append(_accuracy_row("After training, held-out pairs", evaluation))
    if before and before.get("metrics"):
        rows.append(
            _accuracy_row(
                f"Before training: {before['model_version']['name']} on {before['batch']}",
                before["metrics"],
            )
        )
    present = {key for row in rows for key, cell in row["cells"].items() if cell}
    columns = [
        (key, label) for key, label in TABLE8_BUCKETS.items() if key in present or key != UNRATED
    ]
    by_batch = [
        {"batch": name, **values}
        for name, values in sorted((evaluation.get("by_batch") or {}).items())
    ]
    return {
        "columns": columns,
        "rows": rows,
        "by_batch": by_batch,
        "by_kind": evaluation.get("by_kind") or {},
        "loss": evaluation.get("loss"),
        "ece": evaluation.get("ece"),
        "calibration": evaluation.get("calibration") or [],
        "safety_gate": evaluation.get("safety_gate"),
        "before_training": before,
        "history": metrics.get("history") or [],
        "steps": metrics.get("steps"),
        "train_pairs": metrics.get("train_pairs"),
        "eval_pairs": metrics.get("eval_pairs"),
        "seconds": metrics.get("seconds"),
    }
