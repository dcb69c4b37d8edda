"""The shapes comparison table: every method on both tiers of the shapes benchmark, beside the
geometry ceilings, assembled from ordinary ``editseg eval`` output folders.

    rows = [ShapesRow("early-grounding", "toy-shapes", ()), ...]          # or SHAPES_ROWS
    summaries = {(row.key, tier): read_summary(folder) ...}
    print(comparison_table(SHAPES_ROWS, summaries, ceilings, n=1000, world_seed=271828))

Each row is one ``editseg eval`` command per tier (:func:`eval_argv`); rows whose method needs
real weights that are not here (``needs_weights``) are shown with their command instead of
numbers. ``bench/shapes_comparison.py`` runs the evaluations (resumable) and writes the table.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .records import EvaluationError
from .summary import SUMMARY_FORMAT

__all__ = ["SHAPES_ROWS", "TIERS", "ShapesRow", "comparison_table", "eval_argv", "read_summary"]

TIERS = ("basic", "full")
METRICS = ("mIoU", "oIoU", "Pr@0.5", "point_accuracy")


@dataclass(frozen=True)
class ShapesRow:
    """One method setting of the table: ``editseg eval`` options beyond data and output."""

    key: str  # output sub-folder name: <out>/<key>-<tier>
    label: str  # what the table shows
    options: tuple[str, ...]  # e.g. ("--method", "rlfseg", "--sampler", "aos")
    needs_weights: str = ""  # non-empty: not run here; says which weights


SHAPES_ROWS: tuple[ShapesRow, ...] = (
    ShapesRow("early-grounding", "early-grounding (paper defaults), toy-shapes", ()),
    ShapesRow("rlfseg-aos", "rlfseg, toy LoRA, aos (Table 5: RF + AOS)", ("--method", "rlfseg", "--sampler", "aos")),
    ShapesRow("rlfseg-one-step", "rlfseg, toy LoRA, one-step (Table 5: RF)", ("--method", "rlfseg", "--sampler", "one-step")),
    ShapesRow("refam", "refam (FLUX.1 [dev] + SAM)", ("--method", "refam"), "FLUX.1 [dev] and SAM ViT-H"),
    ShapesRow("ref-diff", "ref-diff (SD 1.5 + SAM + CLIP)", ("--method", "ref-diff"), "SD 1.5, SAM ViT-H and CLIP ViT-B/16"),
)


def eval_argv(row: ShapesRow, tier: str, out_root: str | Path, limit: int, world_seed: int) -> list[str]:
    """The ``editseg eval`` arguments of ``row`` on ``tier`` (output in ``<out_root>/<key>-<tier>``)."""
    return ["eval", "--dataset", "shapes", "--tier", tier, "--world-seed", str(world_seed), "--limit", str(limit),
            *row.options, "--out", str(Path(out_root) / f"{row.key}-{tier}")]


def read_summary(folder: str | Path) -> dict[str, Any] | None:
    """The ``summary.json`` of an eval output folder, ``None`` when there is none yet."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))
    if summary.get("format") != SUMMARY_FORMAT:
        raise EvaluationError(f"{path} is not an editseg eval summary ({SUMMARY_FORMAT}).")
    return summary


def _cell(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.1f}"


def comparison_table(
    rows: Sequence[ShapesRow],
    summaries: Mapping[tuple[str, str], dict[str, Any] | None],
    ceilings: Mapping[str, Sequence[tuple[str, float]]],
    n: int,
    world_seed: int,
    out_root: str | Path = "runs/shapes-compare",
    chance: Mapping[str, float] | None = None,
) -> str:
    """Markdown: one row per method setting, per tier the sample count and mIoU, oIoU, Pr@0.5 and point
    accuracy (percent; a run may cover the first n' ≤ ``n`` samples, which the notes list),
    then the ceilings (``{tier: [(label, mIoU in [0, 1]), ...]}``, mIoU only) and notes on what each
    row ran (sample counts, settings, the commands of rows not run). ``chance``: the mean target area
    per tier (the point-accuracy chance level, in [0, 1])."""
    head = " | ".join(f"{tier} {m}" for tier in TIERS for m in ("n", "mIoU", "oIoU", "Pr@0.5", "PA"))
    width = len(TIERS) * (len(METRICS) + 1)
    lines = [f"| method | {head} |", "|---|" + "---:|" * width]
    notes: list[str] = []
    partial: list[str] = []
    for row in rows:
        found = {tier: summaries.get((row.key, tier)) for tier in TIERS}
        if row.needs_weights and not any(found.values()):
            command = "editseg " + shlex.join(eval_argv(row, "basic", out_root, n, world_seed))
            lines.append(f"| {row.label} | " + " | ".join(["–", "needs weights"] + [""] * (width - 2)) + " |")
            notes.append(f"{row.label}: needs {row.needs_weights} (not on this machine); run `{command}` (and `--tier full`).")
            continue
        cells = []
        for tier in TIERS:
            summary = found[tier]
            metrics = (summary or {}).get("metrics", {})
            cells += [str(summary["num_samples"]) if summary else "–"]
            cells += [_cell(metrics.get(m)) if summary else "not run" for m in METRICS]
            if summary is None:
                continue
            if tuple(summary["benchmark"]) != ("shapes", tier) or summary["num_samples"] > n:
                raise EvaluationError(
                    f"{row.key}-{tier}: a summary of {summary['num_samples']} samples on {summary['benchmark']}, "
                    f"expected at most {n} on shapes {tier}: is this the right folder?"
                )
            if summary["num_samples"] < n:
                partial.append(f"{row.key} {tier}: {summary['num_samples']}")
            settings = summary.get("settings", {})
            config = settings.get("config", {})
            if settings.get("method") == "rlfseg":
                notes.append(f"rlfseg rows: LoRA sha256 {config.get('lora_sha256')} on {settings.get('model')}, "
                             f"AOS ε {config.get('epsilon')}, mask = decoded probability > {config.get('threshold')}.")
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    for label in dict.fromkeys(label for tier in TIERS for label, _ in ceilings.get(tier, ())):
        values = {tier: dict(ceilings.get(tier, ())).get(label) for tier in TIERS}
        cells = []
        for tier in TIERS:
            cells += [str(n), _cell(None if values[tier] is None else 100 * values[tier]), "–", "–", "–"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    chance_text = ""
    if chance:
        chance_text = "; chance = the mean target area, " + ", ".join(f"{100 * chance[t]:.1f} {t}" for t in TIERS if t in chance)
    text += (f"\n\nShapes benchmark, world seed {world_seed}, the first n samples per tier (ceilings: {n}); percent. PA: point accuracy "
             "(early-grounding: the RAM's argmax inside the target; rlfseg: the argmax of its decoded foreground "
             f"probability{chance_text}). Ceilings: mIoU only, no model involved.")
    if partial:
        text += (f" Rows with n < {n} are the first n samples of the same list (the time this machine allowed); "
                 f"rerun with --limit {n} to complete them: " + "; ".join(partial) + ".")
    if notes:
        text += "\n\n" + "\n".join(f"- {note}" for note in dict.fromkeys(notes))
    return text
