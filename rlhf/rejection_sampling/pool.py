"""The rejection-sampling pool: each prompt's best sample over every iteration so far.

Llama 2 (section 3.2.3) first fine-tuned each round on the samples of that round only, and saw
capabilities regress; it then kept, for each prompt, the best sample of all iterations. The pool
is that: a JSON Lines file, one record per prompt, replaced by a later sample only when that one
scores higher (ties keep the earlier), each record saying what produced it:

    {"prompt": [{"role", "content"}, …], "response": "…",
     "reward": R_c, "helpfulness": R_h, "safety": R_s, "by_safety": bool, "safety_prompt": bool,
     "iteration": 2, "model": "runs/rs-1/model", "temperature": 1.2, "seed": 1234}

``prompt`` and ``response`` are what supervised fine-tuning reads (``rlhf.sft``); rewards are
probabilities (σ of the reward models' scores), R_c the gated one (:mod:`rlhf.reward.gate`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhf.data.pairs import context_key


@dataclass(frozen=True)
class Sample:
    """One scored sample of a prompt, with what produced it."""

    prompt: list[dict[str, str]]
    response: str
    reward: float
    helpfulness: float
    safety: float
    by_safety: bool
    safety_prompt: bool
    iteration: int
    model: str
    temperature: float
    seed: int

    @property
    def key(self) -> str:
        return context_key(self.prompt)


class Pool:
    """Each prompt's best :class:`Sample` so far (see the module docstring)."""

    def __init__(self, best: Mapping[str, Sample] | None = None):
        self.best: dict[str, Sample] = dict(best or {})

    def __len__(self) -> int:
        return len(self.best)

    def offer(self, samples: Iterable[Sample]) -> dict[str, int]:
        """Keep each sample that beats its prompt's best; returns how many of the prompts
        offered were ``new`` to the pool, ``improved``, or ``kept`` their earlier best."""
        before = dict(self.best)
        offered = set()
        for sample in samples:
            offered.add(sample.key)
            current = self.best.get(sample.key)
            if current is None or sample.reward > current.reward:
                self.best[sample.key] = sample
        counts = {"new": 0, "improved": 0, "kept": 0}
        for key in offered:
            if key not in before:
                counts["new"] += 1
            elif self.best[key] is not before[key]:
                counts["improved"] += 1
            else:
                counts["kept"] += 1
        return counts

    def samples(self) -> list[Sample]:
        return list(self.best.values())

    @classmethod
    def load(cls, path: str | Path) -> Pool:
        """The pool in ``path``; an empty one when there is no such file (the first iteration)."""
        path = Path(path)
        if not path.is_file():
            return cls()
        best = {}
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    try:
                        sample = Sample(**json.loads(line))
                    except (json.JSONDecodeError, TypeError) as error:
                        raise ValueError(
                            f"{path}, line {number}: not a pool record: {error}"
                        ) from None
                    best[sample.key] = sample
        return cls(best)

    def save(self, path: str | Path) -> None:
        """Write the pool to ``path`` (a temporary file renamed: never half written)."""
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        with partial.open("w", encoding="utf-8") as out:
            for sample in self.best.values():
                out.write(json.dumps(_record(sample), ensure_ascii=False) + "\n")
        os.replace(partial, path)


def _record(sample: Sample) -> dict[str, Any]:
    return asdict(sample)
