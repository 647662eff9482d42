"""A dependency-free line plot as PNG (PIL only): axes, ticks, legend, and shaded bands (e.g. a noise floor).

Used for a pretraining run's ``loss.png`` and the layer-divergence tool's metric-vs-depth plot; matplotlib is not a
dependency.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Series", "line_plot_png"]

Color = tuple[int, int, int]


@dataclass(frozen=True)
class Series:
    """One line: ``points`` as ``(x, y)`` (non-finite ``y`` are left out), drawn ``width`` px wide in ``color``."""

    points: Sequence[tuple[float, float]]
    color: Color
    width: int = 1
    markers: bool = False


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (count - 1) for i in range(count)]


def line_plot_png(
    series: Mapping[str, Series],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    xlabel: str = "",
    band: Sequence[tuple[float, float, float]] = (),
    band_label: str = "",
    band_color: Color = (215, 215, 215),
    size: tuple[int, int] = (900, 500),
) -> Path:
    """Draw ``series`` (keyed by legend name) and an optional shaded ``band`` of ``(x, low, high)``; save a PNG.

    The band is drawn as one shaded column per point, from the midpoints to its neighbours, behind the lines.

    Raises:
        ValueError: no series has a finite point.
    """
    from PIL import Image, ImageDraw

    clean = {k: [(float(x), float(y)) for x, y in s.points if math.isfinite(y)] for k, s in series.items()}
    points = [p for pts in clean.values() for p in pts]
    if not points:
        raise ValueError(f"No finite point in series {list(series)}; nothing to plot for {path}.")
    shade = [(float(x), float(lo), float(hi)) for x, lo, hi in band if math.isfinite(lo) and math.isfinite(hi)]
    width, height = size
    left, right, top, bottom = 80, 130, 40, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    xs = [p[0] for p in points] + [b[0] for b in shade]
    ys = [p[1] for p in points] + [v for b in shade for v in b[1:]]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1.0
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def xy(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
        return px, py

    for i, (x, lo, hi) in enumerate(shade):
        half_left = (x - shade[i - 1][0]) / 2 if i > 0 else 0.5 if len(shade) == 1 else (shade[1][0] - x) / 2
        half_right = (shade[i + 1][0] - x) / 2 if i + 1 < len(shade) else half_left
        (pa, pt), (pb, pb_) = xy(x - half_left, hi), xy(x + half_right, lo)
        draw.rectangle([max(pa, left), pt, min(pb, width - right), pb_], fill=band_color)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for tick in _ticks(y0, y1):
        _, py = xy(x0, tick)
        draw.line([left - 5, py, left, py], fill="black")
        draw.text((8, py - 6), f"{tick:.3g}", fill="black")
    for tick in _ticks(x0, x1):
        px, _ = xy(tick, y0)
        draw.line([px, height - bottom, px, height - bottom + 5], fill="black")
        draw.text((px - 10, height - bottom + 8), f"{round(tick)}", fill="black")
    draw.text(((width - right + left) / 2 - 15, height - 25), xlabel, fill="black")
    draw.text((left, 12), title, fill="black")
    legend = [(name, s.color, s.width) for name, s in series.items() if clean[name]]
    if shade and band_label:
        legend.append((band_label, band_color, 8))
    for name, pts in clean.items():
        style = series[name]
        coords = [xy(x, y) for x, y in pts]
        if len(coords) > 1:
            draw.line(coords, fill=style.color, width=style.width)
        if style.markers or len(coords) == 1:
            for cx, cy in coords:
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=style.color)
    for i, (name, color, line_width) in enumerate(legend):
        ly = top + 10 + 18 * i
        draw.line([width - right + 10, ly + 6, width - right + 35, ly + 6], fill=color, width=max(3, line_width))
        draw.text((width - right + 40, ly), name, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
