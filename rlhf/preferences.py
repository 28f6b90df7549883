"""The vocabulary of a Llama 2 preference judgement, shared by the platform and the trainers.

An annotator says which of two responses is better and by how much, on the paper's four-point
scale, and labels each response safe or unsafe. The reward-model loss turns the strength into a
margin (Touvron et al. 2023, Table 27): ``L = -log σ(r_chosen - r_rejected - margin)``.
"""

from enum import StrEnum


class Strength(StrEnum):
    """How much better the preferred response is, strongest first."""

    SIGNIFICANTLY_BETTER = "significantly_better"
    BETTER = "better"
    SLIGHTLY_BETTER = "slightly_better"
    NEGLIGIBLY_BETTER = "negligibly_better"  # "negligibly better / unsure"


class SafetyBin(StrEnum):
    """The paper's three safety bins for a pair of responses."""

    BOTH_SAFE = "both_safe"
    ONE_SAFE = "one_safe"
    NEITHER_SAFE = "neither_safe"


STRENGTH_LABELS: dict[Strength, str] = {
    Strength.SIGNIFICANTLY_BETTER: "Significantly better",
    Strength.BETTER: "Better",
    Strength.SLIGHTLY_BETTER: "Slightly better",
    Strength.NEGLIGIBLY_BETTER: "Negligibly better / unsure",
}

# The accuracy buckets of Llama 2's Table 8: the rating scale's, strongest first, then pairs
# without a rating (imported preferences, HH-RLHF). Keys as evaluation metrics name them.
UNRATED = "unrated"
TABLE8_BUCKETS: dict[str, str] = {
    **{strength.value: label for strength, label in STRENGTH_LABELS.items()},
    UNRATED: "Unrated",
}
# The same, short enough to label a bar of a chart of five.
TABLE8_SHORT_LABELS: dict[str, str] = {
    Strength.SIGNIFICANTLY_BETTER: "Significantly",
    Strength.BETTER: "Better",
    Strength.SLIGHTLY_BETTER: "Slightly",
    Strength.NEGLIGIBLY_BETTER: "Negligibly",
    UNRATED: "Unrated",
}

# Margins of the Llama 2 paper, Table 27; "none" is the plain Bradley-Terry loss.
MARGIN_TABLES: dict[str, dict[Strength, float]] = {
    "none": {strength: 0.0 for strength in Strength},
    "small": {
        Strength.SIGNIFICANTLY_BETTER: 1.0,
        Strength.BETTER: 2.0 / 3.0,
        Strength.SLIGHTLY_BETTER: 1.0 / 3.0,
        Strength.NEGLIGIBLY_BETTER: 0.0,
    },
    "large": {
        Strength.SIGNIFICANTLY_BETTER: 3.0,
        Strength.BETTER: 2.0,
        Strength.SLIGHTLY_BETTER: 1.0,
        Strength.NEGLIGIBLY_BETTER: 0.0,
    },
}
DEFAULT_MARGIN_TABLE = "small"


def margin_for_rating(strength: str, table: str = DEFAULT_MARGIN_TABLE) -> float:
    """The loss margin for a rating, from the named margin table ("none", "small", "large")."""
    if table not in MARGIN_TABLES:
        raise ValueError(f"unknown margin table {table!r}; choose one of {sorted(MARGIN_TABLES)}")
    return MARGIN_TABLES[table][Strength(strength)]


def safety_bin(first_safe: bool | None, second_safe: bool | None) -> SafetyBin | None:
    """Bin a pair by its safety labels; ``None`` when either response was not labelled."""
    if first_safe is None or second_safe is None:
        return None
    safe_count = int(first_safe) + int(second_safe)
    return (SafetyBin.NEITHER_SAFE, SafetyBin.ONE_SAFE, SafetyBin.BOTH_SAFE)[safe_count]


def is_dropped_safety_pair(chosen_safe: bool | None, rejected_safe: bool | None) -> bool:
    """True for a pair the safety reward model must not learn from.

    Llama 2 (section 3.2.2) drops safety pairs whose chosen response is unsafe while the
    rejected one is safe: a safer response is always the better one for safety.
    """
    return chosen_safe is False and rejected_safe is True
