"""Ablation sweeps (paper §4.4: Tables 2-3, Figs. 3-5) and the separability study (appendix A1).

    from editseg import Segmenter
    from editseg.evaluation.ablations import run_sweep, separability_study

    seg = Segmenter.from_pretrained("flux2-klein-4b")
    results = run_sweep(seg, dataset, ["modules", "feature_site", "tau"], "runs/ablations", limit=500)
    results["tau"].rows[0].metrics["oIoU"]

**Sweeps.** A sweep is a named list of :class:`SweepSetting` (label, :class:`MethodConfig`) built
from a base config (:func:`build_sweep`; names in :data:`SWEEPS`). ``"<name>*timestep"`` crosses a
sweep with the timesteps (e.g. ``feature_block*timestep`` is Fig. 4's heatmap, and
``attention_blocks*timestep`` Fig. 3's lines).

**Shared forwards.** :func:`run_sweep` calls ``set_image`` once per image and
:meth:`~editseg.api.Segmenter.predict_sweep` with every config of every sweep (split by forward group
and expression batch only to bound memory), so configs that share a
:meth:`~editseg.config.MethodConfig.forward_key` share the transformer forward: modules, feature_site,
feature_block, attention_blocks and tau all cost one forward per expression batch together;
prompt_tokens costs one per token set; a timestep ``t > 0`` costs its forward plus ``t`` denoising
forwards (``2t`` with classifier-free guidance on base models).

**Records and resume.** Each distinct config gets its own folder ``<out>/configs/<name>/`` holding an
ordinary eval records file (``records.jsonl``, same header as :func:`editseg.evaluation.runner.evaluate`
writes, so ``editseg eval`` with the same settings resumes it and ``editseg eval-table`` reads its
``summary.json``). Records are appended after every image; a re-run skips (sample, config) pairs
already recorded. Per sweep, ``<out>/<sweep>.md`` (table), ``<out>/<sweep>.json`` and
``<out>/<sweep>.png`` (plot) are written from all records.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import MethodConfig
from ..data.base import ReferringSample, group_by_image
from ..geometry import ImageGeometry
from ..probing.recorder import FEATURE_SITES
from ..text import PROMPT_TOKEN_SETS
from .metrics import separability_score
from .plots import bar_chart, box_plot, heatmap_chart, line_chart, save_png, side_by_side
from .published import IIE_RIS_TABLE2, IIE_RIS_TABLE3, PublishedTable
from .runner import (
    RECORDS_FORMAT,
    EvaluationError,
    _compare_settings,
    _safe_name,
    _write_line,
    dataset_info,
    read_records,
    run_settings,
    sample_record,
    select_samples,
    summarize,
    write_summary,
)

if TYPE_CHECKING:
    from ..api import Segmenter

__all__ = [
    "DEFAULT_TAUS",
    "DEFAULT_TIMESTEPS",
    "SEPARABILITY_FORMAT",
    "SWEEPS",
    "SWEEP_FORMAT",
    "Sweep",
    "SweepResult",
    "SweepRow",
    "SweepSetting",
    "build_sweep",
    "config_dirname",
    "mask_to_token_grid",
    "parse_sweep_names",
    "plot_separability",
    "plot_sweep",
    "run_sweep",
    "separability_study",
    "sweep_table",
]

SWEEPS = ("modules", "feature_site", "feature_block", "attention_blocks", "tau", "prompt_tokens", "timestep")
DEFAULT_TIMESTEPS: tuple[int, ...] = (0, 5, 10, 15, 20, 25)
DEFAULT_TAUS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SWEEP_FORMAT = "editseg-ablation-sweep/1"
SEPARABILITY_FORMAT = "editseg-separability/1"
PLOT_METRICS: tuple[str, ...] = ("oIoU", "mIoU")
TABLE_METRICS: tuple[tuple[str, str], ...] = (("oIoU", "oIoU"), ("mIoU", "mIoU"), ("Pr@0.5", "Pr@0.5"), ("point_accuracy", "Point acc."))
_CROSS = re.compile(r"^\s*([a-z_]+)\s*(?:\*|:|×|\bx\b)\s*timestep\s*$")


# -- sweep definitions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSetting:
    """One setting of a sweep: a row of its table, a point/bar/cell of its plot.

    ``category`` is the setting's value on the swept axis as text (e.g. ``"RAM all"``); ``value`` is
    its numeric value on ordered axes (tau, block, timestep); ``timestep`` is set on crossed sweeps.
    ``published`` names the row of the sweep's published table, if any.
    """

    label: str
    config: MethodConfig
    category: str
    value: float | None = None
    timestep: int | None = None
    published: str | None = None
    dashed: bool = False  # drawn dashed in line plots (CAM lines of Fig. 3 are dotted)


@dataclass(frozen=True)
class Sweep:
    """A named list of settings and how to show them."""

    name: str
    axis: str
    settings: tuple[SweepSetting, ...]
    ordered: bool
    caption: str
    published: PublishedTable | None = None

    @property
    def crossed(self) -> bool:
        """Whether the sweep is crossed with timesteps (2-D)."""
        return any(s.timestep is not None for s in self.settings)

    @property
    def configs(self) -> list[MethodConfig]:
        return [s.config for s in self.settings]


def parse_sweep_names(text: str | Sequence[str]) -> list[str]:
    """``"tau,feature_block*timestep"`` → canonical sweep names, validated."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        match = _CROSS.match(item)
        base = match.group(1) if match else item
        if base not in SWEEPS:
            raise EvaluationError(f"unknown sweep {base!r}; choose from {', '.join(SWEEPS)} (append *timestep to cross one with timesteps).")
        if match and base == "timestep":
            raise EvaluationError("timestep*timestep is not a sweep; use timestep.")
        name = f"{base}*timestep" if match else base
        if name not in names:
            names.append(name)
    if not names:
        raise EvaluationError("no sweep named.")
    return names


def _block_list(num_blocks: int, blocks: Sequence[int] | None, stride: int) -> list[int]:
    if blocks is not None:
        chosen = sorted({int(b) for b in blocks})
        bad = [b for b in chosen if not 0 <= b < num_blocks]
        if bad:
            raise EvaluationError(f"feature blocks {bad} do not exist: the model has blocks 0-{num_blocks - 1}.")
        return chosen
    if stride < 1:
        raise EvaluationError(f"block stride must be at least 1, got {stride}.")
    return list(range(0, num_blocks, stride))


def _base_settings(
    name: str,
    base: MethodConfig,
    num_blocks: int,
    blocks: Sequence[int] | None,
    block_stride: int,
    taus: Sequence[float],
    timesteps: Sequence[int],
    num_steps: int,
) -> tuple[str, bool, str, PublishedTable | None, list[SweepSetting]]:
    """(axis, ordered, caption, published table, settings) of an uncrossed sweep."""
    if name == "modules":
        rows = [
            ("CAMs", base.replace(mode="cam", map_threshold=0.5)),
            ("CAMs + RAMs", base.replace(mode="ram", map_threshold=0.5)),
            ("CAMs + RAMs + FSL", base.replace(mode="full")),
        ]
        settings = [SweepSetting(label, config, label, published=label, dashed=label == "CAMs") for label, config in rows]
        return "module", False, "Table 2: modules (CAM / RAM binarised at 0.5; full method)", IIE_RIS_TABLE2, settings
    if name == "feature_site":
        rows = [("Block", "block"), ("AdaLN", "adaln"), ("MMSA", "attn")]
        settings = [
            SweepSetting(f"{label} ({site})", base.replace(mode="full", feature_site=site), label, published=label)
            for label, site in rows
        ]
        return "feature_site", False, "Table 3: feature extraction location", IIE_RIS_TABLE3, settings
    if name == "feature_block":
        settings = [
            SweepSetting(f"block {b}", base.replace(mode="full", feature_block=b), str(b), value=float(b))
            for b in _block_list(num_blocks, blocks, block_stride)
        ]
        return "feature_block", True, "Fig. 4: FSL feature block", None, settings
    if name == "attention_blocks":
        names = {"all": "all", "double": "double (shallow)", "single": "single (deep)"}
        settings = [
            SweepSetting(f"{mode.upper()} {names[sel]}", base.replace(mode=mode, attention_blocks=sel), f"{mode.upper()} {names[sel]}", dashed=mode == "cam")
            for mode in ("cam", "ram")
            for sel in ("all", "double", "single")
        ]
        return "attention_blocks", False, "Fig. 3: blocks summed for CAM/RAM (binarised at map_threshold)", None, settings
    if name == "tau":
        settings = [SweepSetting(f"tau {t:g}", base.replace(mode="full", tau=float(t)), f"{t:g}", value=float(t)) for t in taus]
        return "tau", True, "Fig. 5: RAM threshold tau", None, settings
    if name == "prompt_tokens":
        settings = [SweepSetting(p, base.replace(prompt_tokens=p), p) for p in PROMPT_TOKEN_SETS]
        return "prompt_tokens", False, "Prompt tokens counted in eqs. 3-4", None, settings
    if name == "timestep":
        settings = [
            SweepSetting(f"t={t}", _at_timestep(base, int(t), num_steps), str(t), value=float(t))
            for t in timesteps
        ]
        return "timestep", True, f"Timestep index of a {num_steps}-step schedule", None, settings
    raise EvaluationError(f"unknown sweep {name!r}; choose from {', '.join(SWEEPS)}.")


def _at_timestep(config: MethodConfig, step: int, num_steps: int) -> MethodConfig:
    """``config`` probed at step ``step`` of ``num_steps`` (step 0 is sigma 1 whatever the schedule,
    so it keeps the base config and shares its records)."""
    if step == 0:
        return config.replace(timestep_index=0)
    return config.replace(timestep_index=step, num_inference_steps=num_steps)


def build_sweep(
    name: str,
    base: MethodConfig,
    num_blocks: int,
    *,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    num_steps: int = 28,
    blocks: Sequence[int] | None = None,
    block_stride: int = 1,
    taus: Sequence[float] = DEFAULT_TAUS,
) -> Sweep:
    """The sweep ``name`` (see :data:`SWEEPS`, or ``"<name>*timestep"``) around ``base``.

    ``num_blocks`` is the backbone's depth (the ``feature_block`` sweep covers every
    ``block_stride``-th block, or exactly ``blocks``); ``timesteps`` are indices into a
    ``num_steps`` schedule, used by ``timestep`` and crossed sweeps.
    """
    (canonical,) = parse_sweep_names([name])
    crossed = canonical.endswith("*timestep")
    plain = canonical.split("*")[0]
    bad = [t for t in timesteps if not 0 <= int(t) < num_steps]
    if bad:
        raise EvaluationError(f"timesteps {bad} are outside a {num_steps}-step schedule (0-{num_steps - 1}).")
    axis, ordered, caption, published, settings = _base_settings(
        plain, base, num_blocks, blocks, block_stride, taus, timesteps, num_steps
    )
    if not crossed:
        return Sweep(canonical, axis, tuple(settings), ordered, caption, published)
    crossed_settings = [
        SweepSetting(
            f"{s.label} @ t={t}", _at_timestep(s.config, int(t), num_steps),
            s.category, s.value, int(t), s.published if int(t) == 0 else None, s.dashed,
        )  # fmt: skip
        for s in settings
        for t in timesteps
    ]
    return Sweep(canonical, axis, tuple(crossed_settings), ordered, f"{caption} × timestep ({num_steps}-step schedule)", published)


def config_dirname(config: MethodConfig, default_feature_block: int) -> str:
    """A readable, file-name-safe folder name naming how ``config`` differs from the defaults,
    e.g. ``mode-cam__attention_blocks-double`` (``default`` for none)."""
    reference = MethodConfig(feature_block=default_feature_block).to_dict()
    values = {**config.to_dict(), "feature_block": default_feature_block if config.feature_block is None else config.feature_block}
    parts = []
    for key, value in values.items():
        if value != reference[key]:
            text = "+".join(str(v) for v in value) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)
            parts.append(f"{key}-{text}")
    return _safe_name("__".join(parts) or "default")


# -- running ---------------------------------------------------------------------------------------


@dataclass
class SweepRow:
    """One evaluated setting: its metrics (percent) over the records in its folder."""

    setting: SweepSetting
    directory: Path
    metrics: dict[str, Any]
    num_samples: int


@dataclass
class SweepResult:
    """A sweep's rows, and where its table, JSON and plot were written."""

    sweep: Sweep
    rows: list[SweepRow]
    benchmark: tuple[str, str]
    model: str
    table_path: Path | None = None
    json_path: Path | None = None
    plot_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metric(self, label: str, name: str = "oIoU") -> Any:
        """A metric of the row labelled ``label``."""
        for row in self.rows:
            if row.setting.label == label:
                return row.metrics.get(name)
        raise KeyError(label)


@dataclass
class _ConfigRun:
    directory: Path
    settings: dict[str, Any]
    records: list[dict[str, Any]]
    done: set[str]

    @property
    def records_path(self) -> Path:
        return self.directory / "records.jsonl"


def _open_config_run(segmenter: "Segmenter", dataset: Any, config: MethodConfig, directory: Path) -> _ConfigRun:
    settings = run_settings(segmenter, dataset, config)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "records.jsonl"
    header, records = read_records(path, repair=True)
    if header is None:
        with path.open("a", encoding="utf-8") as handle:
            _write_line(handle, {"format": RECORDS_FORMAT, "settings": settings})
    else:
        _compare_settings(settings, header["settings"], str(path))
    return _ConfigRun(directory, settings, records, {r["id"] for r in records})


def run_sweep(
    segmenter: "Segmenter",
    samples: Any,
    sweeps: Sequence[str | Sweep],
    out_dir: str | Path,
    limit: int | None = None,
    ids: Sequence[str] | None = None,
    *,
    base: MethodConfig | None = None,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    num_steps: int = 28,
    blocks: Sequence[int] | None = None,
    block_stride: int = 1,
    taus: Sequence[float] = DEFAULT_TAUS,
    plots: bool = True,
    panel_size: tuple[int, int] = (480, 360),
    progress: bool = False,
) -> dict[str, SweepResult]:
    """Evaluate every setting of ``sweeps`` on the selected samples, sharing forwards; resumable.

    ``samples`` is a dataset or a list of samples with ground truth; the selection is as in
    :func:`~editseg.evaluation.runner.evaluate` (``ids``, then the first ``limit``). Sweeps given by
    name are built around ``base`` (default: the segmenter's config) with the keyword options of
    :func:`build_sweep`. Returns ``{sweep name: SweepResult}``; see the module docstring for files.
    """
    from tqdm import tqdm

    base = base or segmenter.config
    backbone = segmenter.backbone
    built = [
        s if isinstance(s, Sweep) else build_sweep(
            s, base, backbone.num_blocks, timesteps=timesteps, num_steps=num_steps,
            blocks=blocks, block_stride=block_stride, taus=taus,
        )  # fmt: skip
        for s in sweeps
    ]
    if not built:
        raise EvaluationError("no sweep given.")
    default_block = backbone.default_feature_block
    # feature_block None and the default are one config; bad blocks fail here, before any work
    configs: list[MethodConfig] = list(dict.fromkeys(c.resolved(backbone) for sweep in built for c in sweep.configs))
    out_dir = Path(out_dir)
    selection = select_samples(list(samples), ids=ids, limit=limit)
    without_gt = [s for s in selection if not s.has_mask]
    if without_gt:
        raise EvaluationError(f"{len(without_gt)} selected sample(s) have no ground-truth mask, e.g. {without_gt[0].describe()}.")
    runs = {c: _open_config_run(segmenter, samples, c, out_dir / "configs" / config_dirname(c, default_block)) for c in configs}

    started = time.perf_counter()
    pending_pairs = sum(1 for c in configs for s in selection if s.sample_id not in runs[c].done)
    with tqdm(total=len(selection), unit="sample", desc="eval-sweep", disable=not progress, dynamic_ncols=True) as bar:
        for _, group in group_by_image(selection):
            todo = [c for c in configs if any(s.sample_id not in runs[c].done for s in group)]
            if todo:
                _sweep_image(segmenter, group, todo, runs)
            bar.update(len(group))
    wall = time.perf_counter() - started

    selected = {s.sample_id for s in selection}
    for config, run in runs.items():
        info = {
            "records": [str(run.records_path)], "selected": len(selection), "dataset_size": len(list(samples)),
            "complete": selected <= run.done, "wall_s": wall,
        }  # fmt: skip
        write_summary(summarize(run.settings, run.records, info), run.directory / "summary.json", run.directory / "table.md")

    info = dataset_info(samples)
    results: dict[str, SweepResult] = {}
    for sweep in built:
        rows = []
        for setting in sweep.settings:
            run = runs[setting.config.resolved(backbone)]
            chosen = [r for r in run.records if r["id"] in selected]
            summary = summarize(run.settings, chosen)
            rows.append(SweepRow(setting, run.directory, summary["metrics"], summary["num_samples"]))
        result = SweepResult(sweep, rows, tuple(info["benchmark"]), backbone.name)  # type: ignore[arg-type]
        result.extra = {"selected": len(selection), "pairs_evaluated_now": pending_pairs, "wall_s": wall}
        slug = sweep.name.replace("*", "-by-")
        result.table_path = out_dir / f"{slug}.md"
        result.table_path.write_text(sweep_table(result) + "\n", encoding="utf-8")
        result.json_path = out_dir / f"{slug}.json"
        result.json_path.write_text(json.dumps(_sweep_json(result, out_dir), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        if plots:
            result.plot_path = plot_sweep(result, out_dir / f"{slug}.png", panel_size)
        results[sweep.name] = result
    return results


def _sweep_image(
    segmenter: "Segmenter", group: list[ReferringSample], configs: list[MethodConfig], runs: dict[MethodConfig, _ConfigRun]
) -> None:
    """One ``set_image`` for an image's expressions, then ``predict_sweep`` per forward group and
    expression batch: exactly the forwards of one ``predict_sweep`` over everything, but only one
    batch of one group's results (input-resolution maps) is held at a time. Records are appended
    as each group finishes."""
    start = time.perf_counter()
    image = group[0].load_image()
    load_s = time.perf_counter() - start
    segmenter.set_image(image)
    gts = [s.load_mask() for s in group]
    forward_groups: dict[tuple, list[MethodConfig]] = {}
    for config in configs:
        forward_groups.setdefault(config.forward_key(), []).append(config)
    step = segmenter.batch_size
    for shared in forward_groups.values():
        new: dict[MethodConfig, list[dict[str, Any]]] = {c: [] for c in shared}
        for first in range(0, len(group), step):
            batch = group[first : first + step]
            swept = segmenter.predict_sweep([s.expression for s in batch], shared)
            for config, results in zip(shared, swept):
                done = runs[config].done
                new[config].extend(
                    sample_record(sample, result, gt, {"image_load_s": load_s})
                    for sample, result, gt in zip(batch, results, gts[first : first + step])
                    if sample.sample_id not in done
                )
            del swept
        for config, records in new.items():
            run = runs[config]
            with run.records_path.open("a", encoding="utf-8") as handle:
                for record in records:
                    _write_line(handle, record)
            run.records.extend(records)
            run.done.update(r["id"] for r in records)


# -- tables, JSON and plots ------------------------------------------------------------------------


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


def _sweep_json(result: SweepResult, out_dir: Path) -> dict[str, Any]:
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


# -- separability (appendix A1) --------------------------------------------------------------------


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
    """Header and entries of a separability JSONL file; a truncated last line is cut from the file."""
    if not path.is_file():
        return None, []
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    header: dict[str, Any] | None = None
    entries: list[dict[str, Any]] = []
    offset = 0
    for number, line in enumerate(lines):
        try:
            value = json.loads(line)
        except ValueError:
            if number == len(lines) - 1:
                warnings.warn(f"{path}: dropping a truncated last line", stacklevel=3)
                with path.open("r+b") as handle:
                    handle.truncate(offset)
                return header, entries
            raise EvaluationError(f"{path}:{number + 1}: not valid JSON; the file is damaged.") from None
        offset += len(line)
        if header is None:
            if not isinstance(value, dict) or value.get("format") != SEPARABILITY_FORMAT:
                raise EvaluationError(f"{path} is not an editseg separability records file ({SEPARABILITY_FORMAT}).")
            header = value
        else:
            entries.append(value)
    if data and not data.endswith(b"\n"):
        with path.open("ab") as handle:
            handle.write(b"\n")
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
            _compare_settings(settings, header["settings"], str(records_path))
        handle = records_path.open("a", encoding="utf-8")
        if header is None:
            _write_line(handle, {"format": SEPARABILITY_FORMAT, "settings": settings})
            handle.flush()
    done = {e["id"] for e in entries}
    try:
        todo = [s for s in selection if s.sample_id not in done]
        with tqdm(total=len(selection), initial=len(selection) - len(todo), unit="sample", desc="separability", disable=not progress) as bar:
            for _, group in group_by_image(todo):
                new = _separability_image(segmenter, group, timesteps, blocks, site, num_steps)
                if handle is not None:
                    for entry in new:
                        _write_line(handle, entry)
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

