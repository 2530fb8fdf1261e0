"""Server-rendered line charts: the geometry of an SVG chart, drawn by ``templates/_chart.html`` (no script).

``line_chart(title, series, ...)`` turns named ``(x, y)`` series into a
``LineChart``: pixel coordinates of each series' polyline and dots, axis ticks
with their labels, and a legend. It computes numbers only and returns no
markup, so the template draws the ``<svg>`` with autoescape on: a series name
or title holding ``<script>`` is text in a ``<text>`` element, never markup
(``train.plot.svg_plot`` writes a standalone SVG file instead; embedding its
string would need ``|safe``, which the console never uses).

Rules: non-finite y values are dropped; a series keeps at most
``MAX_POINTS`` points (evenly strided, the last one always kept); a series
named in ``dots`` is drawn as dots only (no line), and any series of at most
``DOT_LIMIT`` points gets a dot on each point, so every point of a short
curve is visible. ``x_time``
makes the x axis UTC time (x in epoch seconds, evenly spaced ticks labelled
``MM-DD HH:MM``). The chart keeps the figures it drew (``Series.rows``) for the
table the template puts under it, for screen readers and exact values.
Knows nothing of runs or loops.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

#: series colours, in order (stroke and legend)
COLOURS = ("#0a58ca", "#b42318", "#1a7f37", "#8250df", "#bf8700", "#57606a")
MAX_POINTS = 1000
DOT_LIMIT = 60


@dataclass(frozen=True)
class Tick:
    """One axis tick: its pixel position and label."""

    at: float
    label: str


@dataclass(frozen=True)
class Series:
    """One drawn series.

    Attributes:
        name: the legend's text.
        colour: stroke and fill colour.
        points: the polyline's ``points`` attribute (empty when fewer than two points).
        dots: pixel (x, y) of each dot drawn.
        rows: the figures drawn, as (x label, y label), for the table under the chart.
    """

    name: str
    colour: str
    points: str
    dots: list[tuple[float, float]]
    rows: list[tuple[str, str]]


@dataclass(frozen=True)
class LineChart:
    """A chart ready to draw: the SVG's size, the plot box, ticks, series and labels."""

    title: str
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    series: list[Series]
    x_label: str
    y_label: str

    @property
    def empty(self) -> bool:
        """Whether no series has a point."""
        return not any(s.rows for s in self.series)

    @property
    def bottom(self) -> int:
        """The plot box's bottom edge (pixels)."""
        return self.top + self.plot_height


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k apart) covering ``[lo, hi]``."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    out, v = [], math.ceil(lo / step) * step
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def _number(v: float) -> str:
    return f"{v:.4g}"


def _time(v: float) -> str:
    return datetime.fromtimestamp(v, UTC).strftime("%m-%d %H:%M")


def _thin(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(pts) <= MAX_POINTS:
        return pts
    stride = math.ceil(len(pts) / MAX_POINTS)
    kept = pts[::stride]
    return kept if kept[-1] == pts[-1] else [*kept, pts[-1]]


def line_chart(
    title: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    x_label: str = "step",
    y_label: str = "",
    x_time: bool = False,
    dots: Collection[str] = (),
    width: int = 720,
    height: int = 280,
) -> LineChart:
    """The ``LineChart`` of ``series`` (name -> [(x, y)]); see the module docstring."""
    clean = {name: _thin(sorted((float(x), float(y)) for x, y in pts if math.isfinite(y) and math.isfinite(x)))
             for name, pts in series.items()}
    every = [xy for pts in clean.values() for xy in pts] or [(0.0, 0.0), (1.0, 1.0)]
    x0, x1 = min(x for x, _ in every), max(x for x, _ in every)
    if x1 <= x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(y for _, y in every), max(y for _, y in every)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.06
    y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 64, 40, 14, 44
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return round(left + (x - x0) / (x1 - x0) * pw, 1)

    def py(y: float) -> float:
        return round(top + (1 - (y - y0) / (y1 - y0)) * ph, 1)

    fmt_x = _time if x_time else _number
    x_values = [x0 + i * (x1 - x0) / 4 for i in range(5)] if x_time else nice_ticks(x0, x1, 8)
    drawn = []
    for i, (name, pts) in enumerate(clean.items()):
        dotted = name in dots or len(pts) <= DOT_LIMIT
        drawn.append(Series(
            name=name, colour=COLOURS[i % len(COLOURS)],
            points=" ".join(f"{px(x)},{py(y)}" for x, y in pts) if len(pts) > 1 and name not in dots else "",
            dots=[(px(x), py(y)) for x, y in pts] if dotted else [],
            rows=[(fmt_x(x), _number(y)) for x, y in pts],
        ))
    return LineChart(
        title=title, width=width, height=height, left=left, top=top, plot_width=pw, plot_height=ph,
        x_ticks=[Tick(px(v), fmt_x(v)) for v in x_values if x0 <= v <= x1],
        y_ticks=[Tick(py(v), f"{v:g}") for v in nice_ticks(y0, y1)], series=drawn,
        x_label="time (UTC)" if x_time and x_label == "step" else x_label, y_label=y_label,
    )


__all__ = ["COLOURS", "DOT_LIMIT", "MAX_POINTS", "LineChart", "Series", "Tick", "line_chart", "nice_ticks"]
