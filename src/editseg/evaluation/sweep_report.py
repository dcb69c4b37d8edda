"""Sweep results shown: Markdown tables (published numbers beside ours), JSON and PNG plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .plots import bar_chart, heatmap_chart, line_chart, save_png, side_by_side
from .sweeps import SweepResult

__all__ = ["PLOT_METRICS", "SWEEP_FORMAT", "TABLE_METRICS", "plot_sweep", "sweep_json", "sweep_table"]

SWEEP_FORMAT = "editseg-ablation-sweep/1"
PLOT_METRICS: tuple[str, ...] = ("oIoU", "mIoU")
TABLE_METRICS: tuple[tuple[str, str], ...] = (("oIoU", "oIoU"), ("mIoU", "mIoU"), ("Pr@0.5", "Pr@0.5"), ("point_accuracy", "Point acc."))


def _cell(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.2f}"


def _published_columns(result: SweepResult) -> list[str]:
    table = result.sweep.published
    if table is None:
        return []
    dataset, split = result.benchmark
    return [m for m in ("oIoU", "mIoU") if any(table.get(s.published or "", m, dataset, split) is not None for s in result.sweep.settings)]


def sweep_table(result: SweepResult) -> str:
    """Markdown table of a sweep: one row per setting, our metrics (percent) and, where the paper
    reports this ablation on the same benchmark, its numbers in columns labelled published."""
    sweep = result.sweep
    published = _published_columns(result)
    dataset, split = result.benchmark
    header = ["Setting", *[name for _, name in TABLE_METRICS], "Samples", *[f"{m} (published)" for m in published]]
    lines = [
        f"**{sweep.name}** ({sweep.caption}); {result.model} on {dataset} {split}".rstrip(),
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in result.rows:
        ours = [_cell(row.metrics.get(key)) for key, _ in TABLE_METRICS]
        theirs = [_cell(sweep.published.get(row.setting.published or "", m, dataset, split)) for m in published] if sweep.published else []
        lines.append(f"| {row.setting.label} | " + " | ".join(ours + [str(row.num_samples)] + theirs) + " |")
    notes = ["Ours: percent over the selected samples."]
    if published and sweep.published is not None:
        notes.append(f"published: {sweep.published.paper}, {sweep.published.table} (Step1X-Edit variant, full val split, percent).")
    elif sweep.published is not None:
        notes.append(f"The paper's {sweep.published.table} reports this ablation on refcoco/refcoco+/refcocog val only.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def sweep_json(result: SweepResult, out_dir: Path) -> dict[str, Any]:
    """The JSON document of a sweep's results (rows, configs, metrics, published numbers)."""
    sweep = result.sweep
    rows = []
    for row in result.rows:
        s = row.setting
        entry: dict[str, Any] = {
            "label": s.label, "category": s.category, "value": s.value, "timestep": s.timestep,
            "config": s.config.to_dict(), "records": str(row.directory.relative_to(out_dir) / "records.jsonl"),
            "num_samples": row.num_samples, "metrics": row.metrics,
        }  # fmt: skip
        if sweep.published is not None and s.published:
            entry["published"] = {
                m: sweep.published.get(s.published, m, *result.benchmark) for m in ("oIoU", "mIoU")
            }
        rows.append(entry)
    return {
        "format": SWEEP_FORMAT, "sweep": sweep.name, "axis": sweep.axis, "caption": sweep.caption,
        "model": result.model, "benchmark": list(result.benchmark), "rows": rows, "run": result.extra,
    }  # fmt: skip


def plot_sweep(result: SweepResult, path: str | Path, panel_size: tuple[int, int] = (480, 360), metrics: Sequence[str] = PLOT_METRICS) -> Path:
    """One panel per metric, side by side (so the PNG is ``len(metrics) * width`` × ``height``):
    a heatmap (value × timestep) for crossed ordered sweeps, lines over timesteps per category for
    crossed categorical ones, a line over the axis for ordered sweeps, bars for categorical ones."""
    sweep = result.sweep
    panels = []
    for metric in metrics:
        title = f"{sweep.name}: {metric} (%), {result.benchmark[0]} {result.benchmark[1]}".rstrip()
        value = {id(r.setting): r.metrics.get(metric) for r in result.rows}
        if sweep.crossed:
            steps = sorted({s.timestep for s in sweep.settings if s.timestep is not None})
            categories = list(dict.fromkeys(s.category for s in sweep.settings))
            grid = {(s.category, s.timestep): value[id(s)] for s in sweep.settings}
            if sweep.ordered:
                panels.append(heatmap_chart(
                    categories, [f"t={t}" for t in steps], [[grid.get((c, t)) for t in steps] for c in categories],
                    title, row_label=sweep.axis, col_label="timestep index", size=panel_size,
                ))  # fmt: skip
            else:
                dashed = {s.category for s in sweep.settings if s.dashed}
                series = {c: [grid.get((c, t)) for t in steps] for c in categories}
                panels.append(line_chart(steps, series, title, x_label="timestep index", size=panel_size, dashed=list(dashed)))
        elif sweep.ordered:
            xs = [s.value if s.value is not None else float(i) for i, s in enumerate(sweep.settings)]
            panels.append(line_chart(xs, {metric: [value[id(s)] for s in sweep.settings]}, title, x_label=sweep.axis, size=panel_size))
        else:
            panels.append(bar_chart([s.category for s in sweep.settings], {metric: [value[id(s)] for s in sweep.settings]}, title, size=panel_size))
    return save_png(side_by_side(panels), path)
