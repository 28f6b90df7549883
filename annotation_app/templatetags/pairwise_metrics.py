"""Filters for metric tables: a dictionary cell by key, a fraction as a percentage."""

from collections.abc import Mapping

from django import template

register = template.Library()


@register.filter
def get_item(mapping: Mapping | None, key: str):
    """``mapping[key]``, or None: templates cannot index with a variable key."""
    return mapping.get(key) if isinstance(mapping, Mapping) else None


@register.filter
def percent(value, digits: int = 1) -> str:
    """0.6432 -> "64.3 %"; "—" for a missing value (no pairs, nothing predicted)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—"
    return f"{100 * value:.{int(digits)}f} %"
