"""Foreground/background separability of clean-token features, J(t, l) (paper appendix A1, Fig. 1).

    from editseg.evaluation.separability import separability_study

    summary = separability_study(seg, dataset, timesteps=(0, 5, 10), out_dir="runs/sep")

One probed forward per image, timestep and expression batch (:meth:`~editseg.api.Segmenter.probe`,
features only); per-sample lines are appended to ``separability.jsonl`` and resumed on re-runs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.base import ReferringSample, group_by_image
from ..geometry import ImageGeometry
from ..probing.recorder import FEATURE_SITES
from .metrics import separability_score
from .plots import box_plot, save_png
from .records import EvaluationError, compare_settings, read_jsonl, write_line
from .runner import dataset_info, select_samples
from .sweeps import DEFAULT_TIMESTEPS

if TYPE_CHECKING:
    from ..api import Segmenter

__all__ = ["SEPARABILITY_FORMAT", "mask_to_token_grid", "plot_separability", "separability_study"]

SEPARABILITY_FORMAT = "editseg-separability/1"


def mask_to_token_grid(mask: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """An input-resolution (H, W) mask on the clean-token grid (rows, cols), nearest neighbour.

    Token ``(r, c)`` covers the ``patch``-sized square at ``(left + c*patch, top + r*patch)`` of the
    resized image (the token grid covers ``geometry.crop`` of it); it takes the input pixel under
    that square's centre, mapped back through the resize (exact integer arithmetic).
    """
    mask = np.asarray(mask).astype(bool)
    width, height = geometry.input_size
    if mask.shape != (height, width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height} (width x height)")
    resized_w, resized_h = geometry.resized_size
    left, top, _, _ = geometry.crop
    rows, cols = geometry.grid
    p = geometry.patch
    xs = ((2 * left + (2 * np.arange(cols) + 1) * p) * width) // (2 * resized_w)
    ys = ((2 * top + (2 * np.arange(rows) + 1) * p) * height) // (2 * resized_h)
    return mask[np.ix_(np.minimum(ys, height - 1), np.minimum(xs, width - 1))]


def _read_separability(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Header and entries of a separability JSONL file (a truncated last line is cut from it)."""
    lines = read_jsonl(path, repair=True)
    if not lines:
        return None, []
    (_, header), entries = lines[0], [value for _, value in lines[1:]]
    if header.get("format") != SEPARABILITY_FORMAT:
        raise EvaluationError(f"{path} is not an editseg separability records file ({SEPARABILITY_FORMAT}).")
    return header, entries


def separability_study(
    segmenter: "Segmenter",
    samples: Any,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    blocks: Sequence[int] | None = None,
    site: str = "attn",
    *,
    num_steps: int = 28,
    limit: int | None = None,
    ids: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    plot_block: int | None = None,
    panel_size: tuple[int, int] = (480, 360),
    progress: bool = False,
) -> dict[str, Any]:
    """Foreground/background separability J(t, l) of clean-token features (appendix A1, eqs. A1-A3).

    For every image, one probed forward per timestep and expression batch records ``site`` features
    at all ``blocks`` (default: the backbone's feature block); the ground truth is brought to the
    token grid with :func:`mask_to_token_grid` and J is :func:`separability_score` on L2-normalised
    features. Samples whose grid mask is all foreground or all background are skipped (listed).
    With ``out_dir``: per-sample lines in ``separability.jsonl`` (resumed on re-runs),
    ``separability.json`` (summary) and ``separability.png`` (one box per timestep at ``plot_block``,
    the paper's Fig. 1 left panel). Returns the summary.
    """
    from tqdm import tqdm

    if site not in FEATURE_SITES:
        raise EvaluationError(f"feature site must be one of {', '.join(FEATURE_SITES)}, got {site!r}.")
    backbone = segmenter.backbone
    blocks = sorted({int(b) for b in (blocks if blocks is not None else [backbone.default_feature_block])})
    bad = [b for b in blocks if not 0 <= b < backbone.num_blocks]
    if bad or not blocks:
        raise EvaluationError(f"blocks {bad or '[]'}: the model has blocks 0-{backbone.num_blocks - 1}.")
    timesteps = [int(t) for t in timesteps]
    if not timesteps or any(not 0 <= t < num_steps for t in timesteps):
        raise EvaluationError(f"timesteps must lie in 0-{num_steps - 1}, got {timesteps}.")
    plot_block = plot_block if plot_block is not None else (backbone.default_feature_block if backbone.default_feature_block in blocks else blocks[0])
    if plot_block not in blocks:
        raise EvaluationError(f"plot block {plot_block} is not among the probed blocks {blocks}.")
    config = segmenter.config
    selection = select_samples(list(samples), ids=ids, limit=limit)
    settings = {
        "model": backbone.name, "site": site, "blocks": blocks, "timesteps": timesteps, "num_steps": num_steps,
        "instruction_template": config.instruction_template, "seed": config.seed, "max_side": segmenter.max_side,
        **dataset_info(samples),
    }  # fmt: skip

    entries: list[dict[str, Any]] = []
    handle = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        records_path = out_dir / "separability.jsonl"
        header, entries = _read_separability(records_path)
        if header is not None:
            compare_settings(settings, header["settings"], str(records_path))
        handle = records_path.open("a", encoding="utf-8")
        if header is None:
            write_line(handle, {"format": SEPARABILITY_FORMAT, "settings": settings})
            handle.flush()
    done = {e["id"] for e in entries}
    try:
        todo = [s for s in selection if s.sample_id not in done]
        with tqdm(total=len(selection), initial=len(selection) - len(todo), unit="sample", desc="separability", disable=not progress) as bar:
            for _, group in group_by_image(todo):
                new = _separability_image(segmenter, group, timesteps, blocks, site, num_steps)
                if handle is not None:
                    for entry in new:
                        write_line(handle, entry)
                    handle.flush()
                    os.fsync(handle.fileno())
                entries.extend(new)
                bar.update(len(group))
    finally:
        if handle is not None:
            handle.close()

    chosen = {s.sample_id for s in selection}
    entries = [e for e in entries if e["id"] in chosen]
    summary = _separability_summary(settings, entries, timesteps, blocks)
    summary["plot_block"] = plot_block
    if out_dir is not None:
        (out_dir / "separability.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        summary["plot"] = str(plot_separability(summary, out_dir / "separability.png", plot_block, panel_size))
    return summary


def _separability_image(
    segmenter: "Segmenter", group: list[ReferringSample], timesteps: list[int], blocks: list[int], site: str, num_steps: int
) -> list[dict[str, Any]]:
    """J for every sample of one image, timestep and block (one forward per timestep and batch;
    the text is encoded once per batch)."""
    segmenter.set_image(group[0].load_image())
    geometry = segmenter.method.image.geometry
    grids = [mask_to_token_grid(s.load_mask(), geometry) for s in group]
    values: list[dict[str, dict[str, float]]] = [{} for _ in group]
    config = segmenter.config.replace(mode="ram")  # features below only: no prototype features of its own
    for start in range(0, len(group), segmenter.batch_size):
        batch = group[start : start + segmenter.batch_size]
        expressions = [s.expression for s in batch]
        first = None
        for t in timesteps:
            at_t = config.replace(timestep_index=t, num_inference_steps=num_steps)
            probe = segmenter.probe(expressions, [at_t], attention=False, features={site: blocks}, reuse_text=first)
            first = first or probe
            recorder = probe.recorder
            for i in range(len(batch)):
                fg = grids[start + i]
                if fg.all() or not fg.any():
                    continue
                values[start + i][str(t)] = {
                    str(b): separability_score(recorder.features[(site, b)][i].float().cpu().numpy(), fg) for b in blocks
                }
    out = []
    for sample, grid, value in zip(group, grids, values):
        entry: dict[str, Any] = {"id": sample.sample_id, "image_id": sample.image_id, "fg_tokens": int(grid.sum()), "tokens": int(grid.size)}
        if grid.all() or not grid.any():
            entry["skipped"] = "the ground truth covers " + ("every" if grid.all() else "no") + " token"
        else:
            entry["J"] = {t: {b: (_finite_or_none(j)) for b, j in per_block.items()} for t, per_block in value.items()}
        out.append(entry)
    return out


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _separability_summary(settings: dict[str, Any], entries: list[dict[str, Any]], timesteps: list[int], blocks: list[int]) -> dict[str, Any]:
    stats: dict[str, dict[str, dict[str, Any]]] = {}
    for t in timesteps:
        for b in blocks:
            values = np.array([e["J"][str(t)][str(b)] for e in entries if "J" in e and e["J"][str(t)][str(b)] is not None], dtype=np.float64)
            cell: dict[str, Any] = {"n": int(values.size)}
            if values.size:
                q1, median, q3 = np.percentile(values, [25, 50, 75])
                cell.update(mean=float(values.mean()), median=float(median), q1=float(q1), q3=float(q3), min=float(values.min()), max=float(values.max()))
            stats.setdefault(str(t), {})[str(b)] = cell
    return {
        "format": SEPARABILITY_FORMAT,
        "settings": settings,
        "num_samples": len(entries),
        "skipped": [{"id": e["id"], "reason": e["skipped"]} for e in entries if "skipped" in e],
        "stats": stats,
        "samples": entries,
    }


def plot_separability(summary: dict[str, Any], path: str | Path, block: int, panel_size: tuple[int, int] = (480, 360)) -> Path:
    """Box plot of J at ``block``, one box per timestep (the paper's Fig. 1, left panel)."""
    settings = summary["settings"]
    groups = {
        f"t={t}": [e["J"][str(t)][str(block)] for e in summary["samples"] if "J" in e and e["J"][str(t)][str(block)] is not None]
        for t in settings["timesteps"]
    }
    title = f"separability J, {settings['site']} features, block {block}, {settings['model']}"
    return save_png(box_plot(groups, title, x_label=f"timestep index ({settings['num_steps']}-step schedule)", size=panel_size), path)
