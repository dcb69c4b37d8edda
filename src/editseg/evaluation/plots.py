"""Small charts for ablation sweeps, drawn with Pillow only (no matplotlib).

Every chart function returns a ``PIL.Image`` of exactly ``size`` pixels (width, height);
:func:`side_by_side` joins panels (e.g. one per metric) and :func:`save_png` writes a sheet.
Values of ``None`` or NaN are left out (a gap in a line, no bar, an empty heatmap cell).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..viz import heatmap as _colour_ramp

__all__ = ["PALETTE", "bar_chart", "box_plot", "heatmap_chart", "line_chart", "save_png", "side_by_side"]

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 120, 30),  # orange
    (40, 110, 200),  # blue
    (50, 160, 70),  # green
    (200, 50, 50),  # red
    (140, 90, 190),  # purple
    (120, 80, 50),  # brown
    (220, 100, 170),  # pink
    (110, 110, 110),  # grey
)
_MARGIN = (52, 30, 14, 40)  # left, top, right, bottom of the plot area
_AXIS = (60, 60, 60)
_GRID = (225, 225, 225)

Number = float | int | None


def _ok(value: Number) -> bool:
    return value is not None and math.isfinite(float(value))


def _nice_range(values: Sequence[Number], include_zero: bool = False) -> tuple[float, float]:
    finite = [float(v) for v in values if _ok(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if include_zero:
        low = min(low, 0.0)
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.08
    return (low if include_zero and low == 0 else low - pad), high + 3 * pad  # headroom for the legend


def _format(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.2f}"
    return f"{value:.1e}"


def _text_width(draw: ImageDraw.ImageDraw, text: str) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text)
    return right - left


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """``text`` shortened with an ellipsis to at most ``width`` pixels."""
    if _text_width(draw, text) <= width:
        return text
    while text and _text_width(draw, text + "..") > width:
        text = text[:-1]
    return text + ".."


class _Frame:
    """A blank panel with a title and a value axis mapping [low, high] onto the plot area."""

    def __init__(self, size: tuple[int, int], title: str, y_range: tuple[float, float], y_label: str = "") -> None:
        self.image = Image.new("RGB", size, (255, 255, 255))
        self.draw = ImageDraw.Draw(self.image)
        width, height = size
        left, top, right, bottom = _MARGIN
        self.box = (left, top, width - right, height - bottom)
        self.low, self.high = y_range
        self.draw.text((6, 4), _fit(self.draw, title, width - 12), fill=(0, 0, 0))
        if y_label:
            self.draw.text((6, 16), _fit(self.draw, y_label, width - 12), fill=_AXIS)

    def y(self, value: float) -> float:
        x0, y0, x1, y1 = self.box
        return y1 - (value - self.low) / (self.high - self.low) * (y1 - y0)

    def axes(self, ticks: int = 5) -> None:
        x0, y0, x1, y1 = self.box
        for i in range(ticks + 1):
            value = self.low + (self.high - self.low) * i / ticks
            y = self.y(value)
            self.draw.line([(x0, y), (x1, y)], fill=_GRID)
            label = _format(value)
            self.draw.text((x0 - 4 - _text_width(self.draw, label), y - 5), label, fill=_AXIS)
        self.draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=_AXIS)

    def x_labels(self, positions: Sequence[float], labels: Sequence[str], x_label: str = "") -> None:
        x0, _, x1, y1 = self.box
        slot = (x1 - x0) / max(len(labels), 1)
        step = 1
        while step < len(labels) and max(_text_width(self.draw, s) for s in labels[::step]) > slot * step - 2:
            step += 1
        for i, (x, label) in enumerate(zip(positions, labels)):
            self.draw.line([(x, y1), (x, y1 + 3)], fill=_AXIS)
            if i % step == 0:
                text = _fit(self.draw, label, int(slot * step) - 2)
                self.draw.text((x - _text_width(self.draw, text) / 2, y1 + 5), text, fill=_AXIS)
        if x_label:
            width = self.image.width
            self.draw.text(((width - _text_width(self.draw, x_label)) / 2, y1 + 20), x_label, fill=_AXIS)

    def legend(self, entries: Sequence[tuple[str, tuple[int, int, int], bool]]) -> None:
        """Entries (name, colour, dashed) stacked in the plot area's top-right corner."""
        if not entries:
            return
        x0, y0, x1, _ = self.box
        width = min(max(_text_width(self.draw, n) for n, _, _ in entries) + 30, (x1 - x0) // 2)
        left = x1 - width - 4
        self.draw.rectangle([left, y0 + 2, x1 - 2, y0 + 6 + 12 * len(entries)], fill=(255, 255, 255), outline=_GRID)
        for i, (name, colour, dashed) in enumerate(entries):
            y = y0 + 10 + 12 * i
            _line(self.draw, [(left + 4, y), (left + 20, y)], colour, dashed)
            self.draw.text((left + 24, y - 5), _fit(self.draw, name, width - 28), fill=(0, 0, 0))


def _line(draw: ImageDraw.ImageDraw, points: Sequence[tuple[float, float]], colour: tuple[int, int, int], dashed: bool, width: int = 2) -> None:
    if not dashed:
        draw.line(points, fill=colour, width=width)
        return
    for (ax, ay), (bx, by) in zip(points, points[1:]):
        length = math.hypot(bx - ax, by - ay)
        pieces = max(1, int(length // 5))
        for k in range(0, pieces, 2):
            t0, t1 = k / pieces, min(1.0, (k + 1) / pieces)
            draw.line([(ax + (bx - ax) * t0, ay + (by - ay) * t0), (ax + (bx - ax) * t1, ay + (by - ay) * t1)], fill=colour, width=width)


def line_chart(
    x: Sequence[float],
    series: Mapping[str, Sequence[Number]],
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    size: tuple[int, int] = (480, 360),
    dashed: Sequence[str] = (),
) -> Image.Image:
    """One line with markers per series over numeric ``x`` (series named in ``dashed`` are dashed)."""
    frame = _Frame(size, title, _nice_range([v for s in series.values() for v in s]), y_label)
    frame.axes()
    x0, _, x1, _ = frame.box
    xs = [float(v) for v in x]
    lo, hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    span = hi - lo or 1.0
    inner = 10

    def px(value: float) -> float:
        return x0 + inner + (value - lo) / span * (x1 - x0 - 2 * inner) if hi > lo else (x0 + x1) / 2

    frame.x_labels([px(v) for v in xs], [_format(v) if not float(v).is_integer() else str(int(v)) for v in xs], x_label)
    entries = []
    for index, (name, values) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        is_dashed = name in dashed
        run: list[tuple[float, float]] = []
        for xv, value in zip(xs, values):
            if _ok(value):
                point = (px(xv), frame.y(float(value)))
                run.append(point)
                frame.draw.ellipse([point[0] - 3, point[1] - 3, point[0] + 3, point[1] + 3], fill=colour)
            else:
                if len(run) > 1:
                    _line(frame.draw, run, colour, is_dashed)
                run = []
        if len(run) > 1:
            _line(frame.draw, run, colour, is_dashed)
        entries.append((name, colour, is_dashed))
    frame.legend(entries)
    return frame.image


def bar_chart(
    categories: Sequence[str],
    series: Mapping[str, Sequence[Number]],
    title: str = "",
    y_label: str = "",
    size: tuple[int, int] = (480, 360),
) -> Image.Image:
    """Grouped bars: one group per category, one bar per series, value printed above each bar."""
    frame = _Frame(size, title, _nice_range([v for s in series.values() for v in s], include_zero=True), y_label)
    frame.axes()
    x0, _, x1, _ = frame.box
    slot = (x1 - x0) / max(len(categories), 1)
    bar = max(2.0, slot * 0.8 / max(len(series), 1))
    centres = [x0 + slot * (i + 0.5) for i in range(len(categories))]
    frame.x_labels(centres, list(categories))
    base = frame.y(max(frame.low, 0.0))
    entries = []
    for s, (name, values) in enumerate(series.items()):
        colour = PALETTE[s % len(PALETTE)]
        for centre, value in zip(centres, values):
            if not _ok(value):
                continue
            left = centre - bar * len(series) / 2 + bar * s
            top = frame.y(float(value))
            frame.draw.rectangle([left + 1, min(top, base), left + bar - 1, max(top, base)], fill=colour)
            label = _format(float(value))
            if _text_width(frame.draw, label) <= bar + 6:
                frame.draw.text((left + bar / 2 - _text_width(frame.draw, label) / 2, min(top, base) - 11), label, fill=(0, 0, 0))
        entries.append((name, colour, False))
    frame.legend(entries)
    return frame.image


def heatmap_chart(
    rows: Sequence[str],
    cols: Sequence[str],
    values: Sequence[Sequence[Number]] | np.ndarray,
    title: str = "",
    row_label: str = "",
    col_label: str = "",
    size: tuple[int, int] = (480, 360),
) -> Image.Image:
    """A coloured grid (rows × cols), each cell labelled with its value; colours span the finite range."""
    grid = np.array([[float(v) if _ok(v) else np.nan for v in row] for row in values], dtype=np.float64).reshape(len(rows), len(cols))
    frame = _Frame(size, title, (0.0, 1.0), row_label)
    x0, y0, x1, y1 = frame.box
    finite = grid[np.isfinite(grid)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    scaled = (grid - low) / (high - low) if high > low else np.where(np.isfinite(grid), 0.5, np.nan)
    colours = np.asarray(_colour_ramp(np.nan_to_num(scaled, nan=0.0)))
    cell_w, cell_h = (x1 - x0) / max(len(cols), 1), (y1 - y0) / max(len(rows), 1)
    for r in range(len(rows)):
        for c in range(len(cols)):
            box = [x0 + c * cell_w, y0 + r * cell_h, x0 + (c + 1) * cell_w - 1, y0 + (r + 1) * cell_h - 1]
            if not np.isfinite(grid[r, c]):
                frame.draw.rectangle(box, fill=(245, 245, 245), outline=_GRID)
                continue
            colour = tuple(int(v) for v in colours[r, c])
            frame.draw.rectangle(box, fill=colour)
            label = _format(float(grid[r, c]))
            if _text_width(frame.draw, label) < cell_w - 2 and cell_h >= 11:
                ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
                frame.draw.text((box[0] + (cell_w - _text_width(frame.draw, label)) / 2, box[1] + cell_h / 2 - 5), label, fill=ink)
    for r, name in enumerate(rows):
        text = _fit(frame.draw, name, x0 - 6)
        frame.draw.text((x0 - 4 - _text_width(frame.draw, text), y0 + (r + 0.5) * cell_h - 5), text, fill=_AXIS)
    frame.x_labels([x0 + (c + 0.5) * cell_w for c in range(len(cols))], list(cols), col_label)
    return frame.image


def box_plot(
    groups: Mapping[str, Sequence[float]],
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    size: tuple[int, int] = (480, 360),
) -> Image.Image:
    """One box per group: quartiles (box), median (line), whiskers to the furthest point within
    1.5 IQR, points beyond drawn as outliers; the group size is printed under its label."""
    data = {name: np.array([v for v in values if _ok(v)], dtype=np.float64) for name, values in groups.items()}
    frame = _Frame(size, title, _nice_range([float(v) for values in data.values() for v in values]), y_label)
    frame.axes()
    x0, _, x1, _ = frame.box
    slot = (x1 - x0) / max(len(data), 1)
    centres = [x0 + slot * (i + 0.5) for i in range(len(data))]
    frame.x_labels(centres, [f"{name} (n={len(v)})" for name, v in data.items()], x_label)
    half = min(slot * 0.3, 40)
    colour = PALETTE[1]
    for centre, values in zip(centres, data.values()):
        if values.size == 0:
            continue
        q1, median, q3 = (float(v) for v in np.percentile(values, [25, 50, 75]))
        reach = 1.5 * (q3 - q1)
        inside = values[(values >= q1 - reach) & (values <= q3 + reach)]
        low, high = float(inside.min()), float(inside.max())
        draw = frame.draw
        draw.line([(centre, frame.y(low)), (centre, frame.y(q1))], fill=_AXIS)
        draw.line([(centre, frame.y(q3)), (centre, frame.y(high))], fill=_AXIS)
        for end in (low, high):
            draw.line([(centre - half / 2, frame.y(end)), (centre + half / 2, frame.y(end))], fill=_AXIS)
        draw.rectangle([centre - half, frame.y(q3), centre + half, frame.y(q1)], fill=(200, 220, 245), outline=colour)
        draw.line([(centre - half, frame.y(median)), (centre + half, frame.y(median))], fill=PALETTE[0], width=2)
        for value in values[(values < q1 - reach) | (values > q3 + reach)]:
            y = frame.y(float(value))
            draw.ellipse([centre - 2, y - 2, centre + 2, y + 2], outline=_AXIS)
    return frame.image


def side_by_side(panels: Sequence[Image.Image]) -> Image.Image:
    """Panels left to right on white (height = the tallest panel)."""
    sheet = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), (255, 255, 255))
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width
    return sheet


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
