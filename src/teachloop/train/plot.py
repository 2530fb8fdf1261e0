"""Plots of a run's metrics: a standalone SVG file and a one-line terminal sparkline.

No plotting library: the SVG is written by hand (axes, ticks, one polyline per
series, eval points as dots), so it renders anywhere without network or fonts
beyond the viewer's default. Knows nothing about runs beyond (step, value) pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

SPARKS = "▁▂▃▄▅▆▇█"
_COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea")


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """Values as a line of block characters (resampled to at most ``width``)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return ""
    if len(vals) > width:
        step = len(vals) / width
        vals = [vals[int(i * step)] for i in range(width)]
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * (len(SPARKS) - 1) + 0.5))] for v in vals)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    out = []
    v = start
    while v <= hi + 1e-12:
        out.append(round(v, 10))
        v += step
    return out


def svg_plot(
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    title: str = "",
    y_label: str = "",
    points: dict[str, Sequence[tuple[float, float]]] | None = None,
    x_label: str = "step",
    width: int = 720,
    height: int = 360,
) -> str:
    """An SVG line chart: ``series`` name -> [(x, y)] drawn as lines, ``points`` name -> [(x, y)] as dots."""
    points = points or {}
    all_xy = [xy for s in (*series.values(), *points.values()) for xy in s if math.isfinite(xy[1])]
    if not all_xy:
        all_xy = [(0.0, 0.0), (1.0, 1.0)]
    xs, ys = [x for x, _ in all_xy], [y for _, y in all_xy]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 60, 20, 30 if title else 12, 40
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    for t in _ticks(x0, x1, 8):
        out.append(f'<text x="{px(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{t:g}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#9ca3af"/>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>')
    if y_label:
        out.append(f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" '
                   f'text-anchor="middle">{escape(y_label)}</text>')
    legend_y = top + 14
    for i, (name, pts) in enumerate([*series.items(), *points.items()]):
        colour = _COLOURS[i % len(_COLOURS)]
        clean = [(x, y) for x, y in pts if math.isfinite(y)]
        if name in series and len(clean) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in clean)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{path}"/>')
        else:
            out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{colour}"/>' for x, y in clean)
        out.append(f'<rect x="{left + 10}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{left + 26}" y="{legend_y}">{escape(name)}</text>')
        legend_y += 16
    out.append("</svg>")
    return "\n".join(out)


__all__ = ["sparkline", "svg_plot"]
