"""Eval summaries: metrics over a records file and the Markdown table beside the published numbers."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .metrics import MetricAccumulator, SampleRecord
from .records import EvaluationError
from .published import DEFAULT_COMPARISON, IIE_RIS_TABLE1, PublishedTable, method_rows

SUMMARY_FORMAT = "editseg-eval-summary/1"

__all__ = ["SUMMARY_FORMAT", "markdown_table", "summarize", "write_summary"]


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def summarize(
    settings: dict[str, Any], records: Sequence[dict[str, Any]], run: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The summary of ``records`` (metrics in percent; ``None`` where undefined).

    Keys: ``format``, ``settings`` (without ``shard``), ``benchmark``, ``num_samples``, ``metrics``
    (:meth:`MetricAccumulator.summary` with ``percent=True``), ``failed`` (``count`` and ``samples``:
    id and reason of each sample recorded as failed, already counted in the metrics as IoU 0) and
    ``run`` (paths, mean timings and bookkeeping; the only part that may differ between equal evaluations).
    """
    accumulator = MetricAccumulator()
    for record in records:
        try:
            accumulator.add_record(
                SampleRecord(
                    record["id"], int(record["intersection"]), int(record["union"]),
                    None if record.get("point_hit") is None else bool(record["point_hit"]),
                )
            )  # fmt: skip
        except ValueError as error:
            raise EvaluationError(f"record {record.get('id')!r}: {error}") from None
    metrics = {k: _finite(v) for k, v in accumulator.summary(percent=True).items()}
    failed = [{"id": r["id"], "reason": r["failed"]} for r in records if r.get("failed")]
    timing_keys = sorted({k for r in records for k in (r.get("timings") or {})})
    mean_timings = {
        k: math.fsum(r["timings"][k] for r in records if k in (r.get("timings") or {}))
        / sum(1 for r in records if k in (r.get("timings") or {}))
        for k in timing_keys
    }
    return {
        "format": SUMMARY_FORMAT,
        "settings": {k: v for k, v in settings.items() if k != "shard"},
        "benchmark": list(settings.get("benchmark") or [settings.get("dataset", ""), settings.get("split", "")]),
        "num_samples": len(records),
        "metrics": metrics,
        "failed": {"count": len(failed), "samples": failed},
        "run": {**(run or {}), "mean_timings": mean_timings},
    }


def write_summary(summary: dict[str, Any], summary_path: str | Path, table_path: str | Path | None = None) -> None:
    """Write the summary as JSON and, optionally, its Markdown table (:func:`markdown_table`)."""
    Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
    Path(summary_path).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if table_path is not None:
        Path(table_path).write_text(markdown_table([summary]) + "\n", encoding="utf-8")


def _method(summary: dict[str, Any]) -> str:
    return summary.get("settings", {}).get("method") or "early-grounding"


def _label(summary: dict[str, Any]) -> str:
    settings = summary.get("settings", {})
    mode = settings.get("config", {}).get("mode", "full")
    method = _method(summary)
    prefix = "editseg" if method == "early-grounding" else f"editseg {method}"
    sampler = settings.get("config", {}).get("sampler")  # RLFseg: aos / one-step / ... are separate rows
    variant = mode if mode != "full" else sampler
    return f"{prefix}: {settings.get('model', '?')}" + ("" if not variant else f" ({variant})")


def markdown_table(
    summaries: Sequence[dict[str, Any]],
    methods: Sequence[str] = DEFAULT_COMPARISON,
    table: PublishedTable = IIE_RIS_TABLE1,
    metrics: Sequence[str] = ("oIoU", "mIoU"),
) -> str:
    """A table laid out like the paper's Table 1: one row per method or model, one column per
    (dataset, split) and metric. Published rows (``methods`` of ``table``, labelled "published") are
    shown where the paper has a number for one of the columns; our rows come from ``summaries``.
    """
    columns: list[tuple[str, str]] = []
    ours: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for summary in summaries:
        benchmark = tuple(summary["benchmark"])
        if benchmark not in columns:
            columns.append(benchmark)  # type: ignore[arg-type]
        ours.setdefault(_label(summary), {})[benchmark] = summary  # type: ignore[index]

    def cell(value: Any) -> str:
        return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.2f}"

    header = "| Method | Source | " + " | ".join(f"{d} {s} {m}".strip() for d, s in columns for m in metrics) + " |"
    lines = [header, "|---|---|" + "---:|" * (len(columns) * len(metrics))]
    for method in methods:
        values = [table.get(method, m, d, s) for d, s in columns for m in metrics]
        if any(v is not None for v in values):
            lines.append(f"| {method} | published ({table.table}) | " + " | ".join(cell(v) for v in values) + " |")
    # each evaluated method's own paper (assets/published_methods.json), e.g. Ref-Diff's RefCOCOg Google column
    papers = []
    for evaluated in dict.fromkeys(_method(summary) for summary in summaries):
        for row, own in method_rows(evaluated):
            values = [own.get(row, m, d, s) for d, s in columns for m in metrics]
            if own is table and row in methods or not any(v is not None for v in values):
                continue
            lines.append(f"| {row} | published ({own.table}) | " + " | ".join(cell(v) for v in values) + " |")
            if own is not table and own.paper not in papers:
                papers.append(own.paper)
    notes = []
    for label, by_column in ours.items():
        values = [by_column[c]["metrics"].get(m) if c in by_column else None for c in columns for m in metrics]
        lines.append(f"| **{label}** | ours | " + " | ".join(cell(v) for v in values) + " |")
        for (d, s), summary in by_column.items():
            run = summary.get("run", {})
            caveat = ""
            if run.get("complete") is False or run.get("missing_shards"):
                caveat = " (run not finished)"
            elif run.get("selected", 0) < run.get("dataset_size", 0):
                caveat = f" (a subset: {run['selected']} of {run['dataset_size']})"
            notes.append(f"{label} on {d} {s}: {summary['num_samples']} samples{caveat}.")
    text = "\n".join(lines)
    if notes:
        text += "\n\n" + "\n".join(f"- {n}" for n in notes)
    if any(table.get(m, "oIoU", d, s) is not None for m in methods for d, s in columns):
        text += f"\n- published: {table.paper}, {table.table}, full splits, in percent."
    for paper in papers:
        text += f"\n- published: {paper}, full splits, in percent."
    return text


# -- merging ---------------------------------------------------------------------------------------
