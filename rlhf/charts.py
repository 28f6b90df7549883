"""Small SVG charts as text: a line chart (training loss; a PPO run's reward and KL against
iteration) and a bar chart (accuracy by rating bucket). No chart library: the platform renders
them on the server (pages stay light, work without scripts, and print) and the command line
writes them as files. Every label is escaped; every number is formatted here.

Inside the platform's pages the stylesheet colours them (``svg.chart`` rules); a file written
on its own takes ``standalone=True``, which puts the same rules in the SVG itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

WIDTH, HEIGHT = 560, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 16, 40


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def _number(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000 or magnitude < 0.01:
        return f"{value:.1e}"
    return f"{value:.3g}"


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    standalone: bool = False,
) -> str:
    """A line through each series' points (x, y), on shared axes with a few ticks, and a legend
    when there is more than one series; empty string if no point is finite."""
    lines = {
        name: [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
        for name, points in series.items()
    }
    lines = {name: points for name, points in lines.items() if points}
    if not lines:
        return ""
    everything = [point for points in lines.values() for point in points]
    xs, ys = [x for x, _ in everything], [y for _, y in everything]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    if y_high == y_low:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def sx(x: float) -> float:
        return MARGIN_LEFT + (x - x_low) / (x_high - x_low) * plot_w

    def sy(y: float) -> float:
        return MARGIN_TOP + (1 - (y - y_low) / (y_high - y_low)) * plot_h

    parts = [_open(title, standalone), _axes(plot_w, plot_h)]
    for y in _ticks(y_low, y_high):
        parts.append(
            f'<line class="grid" x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot_w}" '
            f'y1="{sy(y):.1f}" y2="{sy(y):.1f}"/>'
            f'<text class="tick" x="{MARGIN_LEFT - 6}" y="{sy(y) + 4:.1f}" '
            f'text-anchor="end">{_number(y)}</text>'
        )
    x_ticks = _ticks(x_low, x_high)
    if all(x == int(x) for x in xs):  # steps: whole numbers only
        x_ticks = sorted({round(x) for x in x_ticks if x_low <= round(x) <= x_high})
    for x in x_ticks:
        parts.append(
            f'<text class="tick" x="{sx(x):.1f}" y="{MARGIN_TOP + plot_h + 16}" '
            f'text-anchor="middle">{_number(round(x, 2))}</text>'
        )
    for index, (name, points) in enumerate(lines.items()):
        kind = "series" if index == 0 else f"series series-{index}"
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points)
        )
        parts.append(f'<path class="{kind}" d="{path}"><title>{escape(name)}</title></path>')
        if len(points) == 1:
            x, y = points[0]
            parts.append(f'<circle class="{kind}-dot" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3"/>')
        if len(lines) > 1:  # the legend, top right
            y = MARGIN_TOP + 12 + 14 * index
            x = MARGIN_LEFT + plot_w - 150
            parts.append(
                f'<line class="{kind}" x1="{x}" x2="{x + 18}" y1="{y - 4}" y2="{y - 4}"/>'
                f'<text class="tick" x="{x + 24}" y="{y}">{escape(name)}</text>'
            )
    parts.append(_labels(x_label, y_label, plot_w, plot_h))
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    bars: Sequence[tuple[str, float, str]],
    *,
    title: str,
    y_label: str,
    y_max: float = 1.0,
) -> str:
    """Bars of height ``value`` in [0, y_max], each with a label and a note (e.g. "n=12")."""
    bars = [(label, value, note) for label, value, note in bars if value is not None]
    if not bars:
        return ""
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    parts = [_open(title, False), _axes(plot_w, plot_h)]
    for y in _ticks(0.0, y_max):
        py = MARGIN_TOP + (1 - y / y_max) * plot_h
        parts.append(
            f'<line class="grid" x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot_w}" '
            f'y1="{py:.1f}" y2="{py:.1f}"/>'
            f'<text class="tick" x="{MARGIN_LEFT - 6}" y="{py + 4:.1f}" '
            f'text-anchor="end">{_number(y)}</text>'
        )
    slot = plot_w / len(bars)
    width = slot * 0.6
    for index, (label, value, note) in enumerate(bars):
        value = max(0.0, min(float(value), y_max))
        height = value / y_max * plot_h
        x = MARGIN_LEFT + index * slot + (slot - width) / 2
        y = MARGIN_TOP + plot_h - height
        parts.append(
            f'<rect class="bar-{index % 6}" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" '
            f'height="{height:.1f}"><title>{escape(label)}: {value:.3f} ({escape(note)})'
            f"</title></rect>"
            f'<text class="value" x="{x + width / 2:.1f}" y="{y - 4:.1f}" '
            f'text-anchor="middle">{value:.2f}</text>'
            f'<text class="tick" x="{x + width / 2:.1f}" y="{MARGIN_TOP + plot_h + 16}" '
            f'text-anchor="middle">{escape(label)}</text>'
            f'<text class="tick" x="{x + width / 2:.1f}" y="{MARGIN_TOP + plot_h + 30}" '
            f'text-anchor="middle">{escape(note)}</text>'
        )
    parts.append(_labels("", y_label, plot_w, plot_h))
    parts.append("</svg>")
    return "".join(parts)


# The platform stylesheet's chart rules, for a chart in a file of its own.
STANDALONE_STYLE = (
    "<style>svg.chart{font:11px sans-serif;background:#fff}.axis{stroke:#222}"
    ".grid{stroke:#ddd}.tick,.axis-label{fill:#666}.series{fill:none;stroke:#2456a6;"
    "stroke-width:2}.series-dot{fill:#2456a6}.series-1{stroke:#c0504d}.series-1-dot"
    "{fill:#c0504d}.series-2{stroke:#4f8a3c}.series-2-dot{fill:#4f8a3c}</style>"
)


def _open(title: str, standalone: bool) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>" + (STANDALONE_STYLE if standalone else "")
    )


def _axes(plot_w: float, plot_h: float) -> str:
    bottom = MARGIN_TOP + plot_h
    return (
        f'<line class="axis" x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{MARGIN_LEFT}" '
        f'y2="{bottom}"/>'
        f'<line class="axis" x1="{MARGIN_LEFT}" y1="{bottom}" x2="{MARGIN_LEFT + plot_w}" '
        f'y2="{bottom}"/>'
    )


def _labels(x_label: str, y_label: str, plot_w: float, plot_h: float) -> str:
    parts = []
    if x_label:
        parts.append(
            f'<text class="axis-label" x="{MARGIN_LEFT + plot_w / 2:.1f}" y="{HEIGHT - 4}" '
            f'text-anchor="middle">{escape(x_label)}</text>'
        )
    if y_label:
        middle = MARGIN_TOP + plot_h / 2
        parts.append(
            f'<text class="axis-label" x="12" y="{middle:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 12 {middle:.1f})">{escape(y_label)}</text>'
        )
    return "".join(parts)


__all__ = ["bar_chart", "line_chart"]
