"""The charts of the platform's pages: :mod:`rlhf.charts`' SVG, marked safe for templates (it
escapes every label itself)."""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.safestring import SafeString, mark_safe

from rlhf import charts


def line_chart(
    points: Sequence[tuple[float, float]], *, title: str, x_label: str, y_label: str
) -> SafeString:
    """One line through ``points`` (x, y); empty if none (:func:`rlhf.charts.line_chart`)."""
    svg = charts.line_chart({y_label: points}, title=title, x_label=x_label, y_label=y_label)
    return mark_safe(svg)


def bar_chart(
    bars: Sequence[tuple[str, float, str]], *, title: str, y_label: str, y_max: float = 1.0
) -> SafeString:
    """Bars with a label and a note each (:func:`rlhf.charts.bar_chart`)."""
    return mark_safe(charts.bar_chart(bars, title=title, y_label=y_label, y_max=y_max))
