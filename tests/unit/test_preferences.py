"""The Llama 2 rating vocabulary: margins, safety bins and the safety drop rule."""

import pytest

from rlhf.preferences import (
    MARGIN_TABLES,
    SafetyBin,
    is_dropped_safety_pair,
    margin_for_rating,
    safety_bin,
)


@pytest.mark.parametrize(
    ("strength", "small", "large"),
    [
        ("significantly_better", 1.0, 3.0),
        ("better", 2 / 3, 2.0),
        ("slightly_better", 1 / 3, 1.0),
        ("negligibly_better", 0.0, 0.0),
    ],
)
def test_margins_follow_table_27_of_the_paper(strength, small, large):
    assert margin_for_rating(strength) == pytest.approx(small)  # small is the default
    assert margin_for_rating(strength, "small") == pytest.approx(small)
    assert margin_for_rating(strength, "large") == pytest.approx(large)
    assert margin_for_rating(strength, "none") == 0.0


def test_margins_shrink_with_the_strength():
    for table in ("small", "large"):
        values = list(MARGIN_TABLES[table].values())
        assert values == sorted(values, reverse=True)


def test_unknown_table_or_strength_is_an_error():
    with pytest.raises(ValueError, match="unknown margin table 'huge'"):
        margin_for_rating("better", "huge")
    with pytest.raises(ValueError):
        margin_for_rating("much_better")


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (True, True, SafetyBin.BOTH_SAFE),
        (True, False, SafetyBin.ONE_SAFE),
        (False, True, SafetyBin.ONE_SAFE),
        (False, False, SafetyBin.NEITHER_SAFE),
        (None, True, None),
        (False, None, None),
    ],
)
def test_safety_bins(first, second, expected):
    assert safety_bin(first, second) == expected


@pytest.mark.parametrize(
    ("chosen_safe", "rejected_safe", "dropped"),
    [
        (False, True, True),
        (True, False, False),
        (True, True, False),
        (False, False, False),
        (None, True, False),
    ],
)
def test_only_unsafe_chosen_over_safe_rejected_is_dropped(chosen_safe, rejected_safe, dropped):
    assert is_dropped_safety_pair(chosen_safe, rejected_safe) is dropped
