"""Running ablation sweeps: every setting scored on the selected samples, forwards shared, resumable.

See :mod:`.sweeps` for the sweep definitions and the module docstring there for the files written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import MethodConfig
from ..data.base import ReferringSample, group_by_image
from .records import RECORDS_FORMAT, EvaluationError, compare_settings, read_records, write_line
from .runner import dataset_info, run_settings, sample_record, select_samples, summarize, write_summary
from .sweep_report import plot_sweep, sweep_json, sweep_table
from .sweeps import DEFAULT_TAUS, DEFAULT_TIMESTEPS, Sweep, SweepResult, SweepRow, build_sweep, config_dirname

if TYPE_CHECKING:
    from ..api import Segmenter

__all__ = ["run_sweep"]


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
            write_line(handle, {"format": RECORDS_FORMAT, "settings": settings})
    else:
        compare_settings(settings, header["settings"], str(path))
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
        result.json_path.write_text(json.dumps(sweep_json(result, out_dir), indent=2, allow_nan=False) + "\n", encoding="utf-8")
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
                    write_line(handle, record)
            run.records.extend(records)
            run.done.update(r["id"] for r in records)
