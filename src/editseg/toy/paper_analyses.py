"""The paper's analyses on the toy editor, with baselines, chance and ceilings in every table.

:func:`analyse_tier` measures one tier of the shapes benchmark; the result is a JSON-able dict of
tables (lists of rows) and figure data, which :mod:`.paper_report` renders as Markdown and
:mod:`.paper_figures` as PNG figures. ``bench/toy_paper_analyses.py`` is the command line.

1. Headline: the full method at the paper's defaults, CAM-only and RAM-only (Table 2), the model's
   own first-step edit as a segmenter, the same statistics read from the noisy-token rows
   (diagnostic), another sample's expression (oracle), FSL with the true region as M, and the
   geometry ceilings (a) and (b).
2. From one probe per sample and timestep (:func:`~.probe_grid.probe_grid`): tau 0.1-0.9
   (Fig. 5), attention blocks all / double / single / each alone, the FSL feature block at every
   timestep (Fig. 4), CAM / RAM over double / single / all blocks at every timestep (Fig. 3),
   J(t, l) (Fig. 1 left / appendix A1) and the per-block attention mass on target and background.
3. Prompt-token sets: expression / content words / instruction / all (one forward each).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..config import MethodConfig
from ..data.shapes import ShapesSample
from .analysis import edit_baseline, fsl_with_true_region, geometry_ceilings, shifted_expressions
from .evaluate import noisy_as_clean, score_sweep
from .probe_grid import GridReadout, probe_grid

TAUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PROMPT_SETS = ("expression", "expression-content", "instruction", "all")
BLOCK_SETS = (("all", "all"), ("double", "double-stream"), ("single", "single-stream"))


def scores_rows(scores) -> list[dict]:
    """:class:`~.evaluate.ToyScores` as table rows."""
    return [{"label": s.label, "mIoU": s.mIoU, "oIoU": s.oIoU, "ram_pa": s.ram_point_accuracy,
             "cam_pa": s.cam_point_accuracy} for s in scores]


def reference_rows(samples: Sequence[ShapesSample], patch: int) -> dict:
    """Chance (point accuracy of a uniformly random point = mean mask area) and the two ceilings."""
    ceilings = [{"label": c.label, "mIoU": c.mIoU, "ceiling": True} for c in geometry_ceilings(samples, patch)]
    return {"chance_pa": float(np.mean([s.mask.mean() for s in samples])), "ceilings": ceilings}


def headline(segmenter, samples: Sequence[ShapesSample]) -> dict:
    """Table 2 with the baselines, diagnostics and ceilings (module docstring, item 1)."""
    base = MethodConfig()
    backbone = segmenter.backbone
    main = score_sweep(segmenter, samples, [
        ("full method: RAM + FSL, paper defaults (tau 0.8)", base),
        ("CAM only (map > 0.5)", base.replace(mode="cam")),
        ("RAM only (map > 0.5)", base.replace(mode="ram")),
    ])
    noisy = score_sweep(noisy_as_clean(segmenter), samples, [("diagnostic: noisy-token rows read as the image", base)])
    shifted = score_sweep(segmenter, samples, [("oracle: another sample's expression", base)],
                          expressions=shifted_expressions(samples))
    edit = edit_baseline(backbone, samples)
    fsl_true = fsl_with_true_region(segmenter, samples)
    rows = scores_rows(main) + [
        {"label": edit.label, "mIoU": edit.mIoU, "ram_pa": edit.point_accuracy,
         "note": f"edit accuracy {edit.object_accuracy:.3f} (PA column: argmax of the edit map)"},
    ] + scores_rows(noisy) + scores_rows(shifted) + [{"label": fsl_true.label, "mIoU": fsl_true.mIoU}]
    return {
        "rows": rows,
        "edit_accuracy": edit.object_accuracy,
        "precision": {k: v for k, v in main[0].extra.items() if k.startswith("Pr@")},
        "by_kind": main[0].extra["by_kind"],
    }


def grid_rows(num_blocks: int) -> list[tuple[str, MethodConfig]]:
    """The configs read from every probe of :func:`~.probe_grid.probe_grid`."""
    base = MethodConfig()
    rows = [("full method (tau 0.8, all blocks)", base)]
    for key, name in BLOCK_SETS:
        rows += [(f"CAM, {name} blocks", base.replace(mode="cam", attention_blocks=key)),
                 (f"RAM, {name} blocks", base.replace(mode="ram", attention_blocks=key))]
    rows += [(f"full, attention blocks {name}", base.replace(attention_blocks=key)) for key, name in BLOCK_SETS[1:]]
    rows += [(f"full, tau {tau:.1f}", base.replace(tau=tau)) for tau in TAUS]
    rows += [(f"full, attention block {b} alone", base.replace(attention_blocks=(b,))) for b in range(num_blocks)]
    return rows


def _summary(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {"n": 0}
    q1, median, q3 = np.percentile(finite, [25, 50, 75])
    return {"n": int(finite.size), "median": float(median), "q1": float(q1), "q3": float(q3), "mean": float(finite.mean())}


def grid_tables(grid: GridReadout, default_block: int) -> dict:
    """Tables (and the per-sample values the figures need) from one :class:`GridReadout`."""
    t0 = grid.timesteps[0]
    at0 = {label: per_t[t0] for label, per_t in grid.rows.items()}
    blocks = grid.blocks
    tau = [{**at0[f"full, tau {x:.1f}"], "tau": x} for x in TAUS]
    attention = [at0["full method (tau 0.8, all blocks)"], at0["full, attention blocks double-stream"],
                 at0["full, attention blocks single-stream"]] + [at0[f"full, attention block {b} alone"] for b in blocks]
    features = [{**grid.fsl[b][t0], "label": f"feature block {b}" + (" (default)" if b == default_block else ""), "block": b}
                for b in blocks]
    timesteps = []
    for t in grid.timesteps:
        for label in ["full method (tau 0.8, all blocks)"] + [f"{m}, {n} blocks" for _, n in BLOCK_SETS for m in ("CAM", "RAM")]:
            timesteps.append({**grid.rows[label][t], "label": f"step {t}: {label}", "timestep": t, "series": label})
    separability = []
    for k, t in enumerate(grid.timesteps):
        for b in blocks:
            separability.append({"timestep": t, "block": b, **_summary(grid.separability[:, k, b]),
                                 "shuffled": _summary(grid.separability_shuffled[:, k, b])})
    mass = []
    for b in blocks:
        fg, bg = grid.mass_target[:, 0, b], grid.mass_background[:, 0, b]
        fg_mean, bg_mean = float(np.nanmean(fg)), float(np.nanmean(bg))
        alone = at0[f"full, attention block {b} alone"]
        mass.append({"block": b, "target": fg_mean, "background": bg_mean,
                     "contrast": fg_mean / bg_mean if bg_mean > 0 else float("inf"),
                     "ram_pa": alone["ram_pa"], "cam_pa": alone["cam_pa"]})
    return {
        "timesteps_probed": grid.timesteps, "num_steps": grid.num_steps, "settings": grid.settings,
        "tau": tau, "attention_blocks": attention, "feature_blocks": features,
        "feature_heatmap": {"timesteps": grid.timesteps, "blocks": blocks,
                            "mIoU": [[grid.fsl[b][t]["mIoU"] for b in blocks] for t in grid.timesteps],
                            "oIoU": [[grid.fsl[b][t]["oIoU"] for b in blocks] for t in grid.timesteps]},
        "timestep_rows": timesteps,
        "separability": separability,
        "separability_values": grid.separability.tolist(),
        "separability_shuffled_values": grid.separability_shuffled.tolist(),
        "attention_mass": mass,
    }


def prompt_set_rows(segmenter, samples: Sequence[ShapesSample]) -> list[dict]:
    """The full method with each prompt-token set (one forward per set)."""
    base = MethodConfig()
    rows = []
    for name in PROMPT_SETS:
        rows += scores_rows(score_sweep(segmenter, samples, [(f"prompt tokens: {name}", base.replace(prompt_tokens=name))]))
    return rows


def analyse_tier(
    segmenter,
    samples: Sequence[ShapesSample],
    sweep: Sequence[ShapesSample] | None = None,
    *,
    num_steps: int = 4,
    timesteps: Sequence[int] | None = None,
    sweeps: bool = True,
    **grid_options,
) -> dict:
    """Every analysis on one tier: the headline on ``samples``, the sweeps on ``sweep`` (default:
    ``samples``), probing ``timesteps`` (default: all) of a ``num_steps``-step schedule.
    ``grid_options`` go to :func:`~.probe_grid.probe_grid` (switches ``grid_rule``, ``normalize``,
    ``fsl_attention``, ``site``)."""
    backbone = segmenter.backbone
    sweep = list(samples if sweep is None else sweep)
    out = {"n": len(samples), **reference_rows(samples, backbone.patch), "headline": headline(segmenter, samples)}
    if not sweeps:
        return out
    grid = probe_grid(segmenter, sweep, grid_rows(backbone.num_blocks),
                      range(num_steps) if timesteps is None else timesteps, num_steps, **grid_options)
    out["sweep"] = {"n": len(sweep), "double_blocks": backbone.num_double_blocks, **reference_rows(sweep, backbone.patch),
                    **grid_tables(grid, backbone.default_feature_block),
                    "prompt_tokens": prompt_set_rows(segmenter, sweep)}
    return out
