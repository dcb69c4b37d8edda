"""Benchmark runs: score a :class:`~editseg.api.Segmenter` on a referring dataset, resumably.

    from editseg import Segmenter
    from editseg.data.refer import RefCOCODataset
    from editseg.evaluation.runner import evaluate

    seg = Segmenter.from_pretrained("flux2-klein-4b")
    summary = evaluate(seg, RefCOCODataset("data", "refcoco", "val"), "runs/refcoco-val/records.jsonl")
    summary["metrics"]["oIoU"], summary["metrics"]["mIoU"]   # percent

**Records file.** A JSONL file: the first line is a header ``{"format": "editseg-eval-records/1",
"settings": {...}}`` (model, method settings, ``max_side``, dataset, split, benchmark, shard); every
further line is one scored sample (see :func:`sample_record`). Lines are appended and flushed after
each image, so an interrupted run loses at most the image it was working on.

**Resume.** Running again on the same records file skips the sample ids already in it. A truncated
last line (a run killed mid-write) is dropped with a warning and cut from the file; other broken
lines are an error that names the line and how to drop it (its sample is then redone). Resuming with different settings raises :class:`SettingsMismatchError`;
``limit`` and ``ids`` are not settings, so a quick ``limit=50`` run can later be extended.

**Samples the model cannot take.** Before the first forward every pending sample's expression is
checked (:meth:`~editseg.api.Segmenter.expression_problems`: empty, no words, stop words only,
over the text encoder's token limit). ``invalid="record"`` (the default, so an hour-long run never
dies at sample 9,000) records such a sample, and any sample whose expression or image the model
refuses while running, as *failed*: IoU 0 (empty prediction: intersection 0, union = ground-truth
area, point miss), a ``"failed"`` reason in its record, counted in every metric and listed in the
summary's ``failed`` entry. ``invalid="refuse"`` stops before any forward with the list instead
(and stops at the first refusal while running).

**Summary.** Computed with :class:`~editseg.evaluation.metrics.MetricAccumulator` from the records of
the *selected* samples (resumed or new; a ``limit=10`` run over a file holding 50 records reports
10; ``run.records_in_file`` and ``run.outside_selection`` say what else the file holds) and written
next to the records (``records.jsonl`` →
``summary.json`` and ``table.md``; ``records-shard0of4.jsonl`` → ``summary-shard0of4.json`` ...).
Everything in a summary except its ``"run"`` entry (paths, timings, progress) depends only on the
settings and the multiset of records.

**Sharding.** ``shard=(i, n)`` (or ``"i/n"``, 0-based) evaluates the ``i``-th of ``n`` image-aligned
shards of the selection (:func:`editseg.data.base.shard`). Shards run as separate processes, each
with its own records file; :func:`merge_records` then combines them into a summary identical to an
unsharded run's (duplicate ids are an error). One process per GPU from plain shell::

    for i in 0 1 2 3; do
      editseg eval --dataset refcoco --split val --data-root data --model flux2-klein-4b \\
          --out runs/refcoco-val --shard $i/4 --device cuda:$i &
    done; wait
    editseg eval-merge runs/refcoco-val

The selection is: the dataset's samples in their stable order, filtered by ``ids``, cut to the first
``limit``, then sharded; so the shards of a ``limit=N`` run merge to the unsharded ``limit=N`` run.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import MethodConfig
from ..methods.registry import DEFAULT_METHOD
from ..data.base import ReferringSample, group_by_image, parse_shard, shard
from ..masks import encode_rle, save_mask_png
from .failures import INVALID_POLICIES, evaluate_or_record, failed_record, refusal_message
from .metrics import argmax_in_mask, intersection_union, iou_from_counts
from .summary import SUMMARY_FORMAT, markdown_table, summarize, write_summary
from .records import (
    INFORMATIONAL_SETTINGS,
    RECORDS_FORMAT,
    EvaluationError,
    InterruptBetweenSamples,
    SettingsMismatchError,
    check_resumable,
    compare_settings,
    read_records,
    safe_name,
    write_line,
)

if TYPE_CHECKING:
    from ..api import Segmenter, SegmentationResult

__all__ = [
    "RECORDS_FORMAT",
    "SUMMARY_FORMAT",
    "EvaluationError",
    "SettingsMismatchError",
    "check_resumable",
    "dataset_info",
    "evaluate",
    "failed_record",
    "markdown_table",
    "merge_records",
    "read_records",
    "records_filename",
    "run_settings",
    "sample_record",
    "select_samples",
    "shard_label",
    "sibling_path",
    "summarize",
]

SAVE_MASKS = (None, "png", "rle")


# -- selection -------------------------------------------------------------------------------------


def _normalize_shard(spec: str | tuple[int, int] | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    try:
        if isinstance(spec, str):
            return parse_shard(spec)
        index, count = (int(v) for v in spec)
        return parse_shard(f"{index}/{count}")
    except (TypeError, ValueError) as error:
        raise EvaluationError(str(error)) from None


def shard_label(spec: str | tuple[int, int] | None) -> str | None:
    """``"i/n"`` for a shard spec (validated), ``None`` for none."""
    parsed = _normalize_shard(spec)
    return None if parsed is None else f"{parsed[0]}/{parsed[1]}"


def select_samples(
    samples: Iterable[ReferringSample],
    ids: Sequence[str] | None = None,
    limit: int | None = None,
    shard_spec: str | tuple[int, int] | None = None,
) -> list[ReferringSample]:
    """The samples a run evaluates: stable order, filtered by ``ids``, first ``limit``, then one shard."""
    selected = list(samples)
    seen: set[str] = set()
    for sample in selected:
        if sample.sample_id in seen:
            raise EvaluationError(f"sample id {sample.sample_id!r} occurs twice in the dataset; ids must be unique.")
        seen.add(sample.sample_id)
    if ids is not None:
        wanted = set(str(i) for i in ids)
        known = {s.sample_id for s in selected}
        missing = sorted(wanted - known)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise EvaluationError(f"{len(missing)} requested sample id(s) are not in the dataset: {shown}")
        selected = [s for s in selected if s.sample_id in wanted]
    if limit is not None:
        if limit < 0:
            raise EvaluationError(f"limit must be 0 or more, got {limit}")
        selected = selected[:limit]
    parsed = _normalize_shard(shard_spec)
    if parsed is not None:
        selected = shard(selected, *parsed)
    return selected


# -- settings --------------------------------------------------------------------------------------


def dataset_info(dataset: Any) -> dict[str, Any]:
    """``dataset``, ``split``, ``benchmark`` (and ``split_by``) settings of a dataset or sample list."""
    name = str(getattr(dataset, "name", "samples"))
    split = str(getattr(dataset, "split", ""))
    benchmark = getattr(dataset, "benchmark", None) or (name, split)
    info = {"dataset": name, "split": split, "benchmark": [str(benchmark[0]), str(benchmark[1])]}
    if getattr(dataset, "split_by", None):
        info["split_by"] = dataset.split_by
    return info


def is_early_grounding(segmenter: "Segmenter") -> bool:
    """Whether ``segmenter`` runs the paper's method (whose MethodConfig drives sweeps and settings)."""
    return getattr(getattr(segmenter, "method", None), "name", "early-grounding") == "early-grounding"


def run_settings(
    segmenter: "Segmenter",
    dataset: Any,
    config: MethodConfig | None = None,
    shard_spec: str | tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The settings a records file is tied to: model, method and its settings (:meth:`Method.settings
    <editseg.methods.base.Method.settings>`), input size, data, shard. Files written before methods
    had names lack ``method``; they count as early grounding (:func:`~.records.normalize_settings`)."""
    if not is_early_grounding(segmenter):
        method = segmenter.method
        return {
            **method.settings(),
            "method": method.name,
            "max_side": segmenter.max_side,
            **dataset_info(dataset),
            "shard": shard_label(shard_spec),
        }
    backbone = segmenter.backbone
    return {
        "model": backbone.name,
        "method": DEFAULT_METHOD,
        "config": (config or segmenter.config).resolved(backbone).to_dict(),
        **backbone.switch_settings(),
        "max_side": segmenter.max_side,
        **dataset_info(dataset),
        "shard": shard_label(shard_spec),
    }


def records_filename(shard_spec: str | tuple[int, int] | None = None) -> str:
    """``records.jsonl``, or ``records-shard<i>of<n>.jsonl`` for a shard."""
    parsed = _normalize_shard(shard_spec)
    return "records.jsonl" if parsed is None else f"records-shard{parsed[0]}of{parsed[1]}.jsonl"


def sibling_path(records_path: str | Path, kind: str, suffix: str) -> Path:
    """``records*.jsonl`` → ``<kind>*<suffix>`` in the same folder; other names get ``.<kind><suffix>``."""
    path = Path(records_path)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.stem
    if stem.startswith("records"):
        return path.with_name(kind + stem[len("records") :] + suffix)
    return path.with_name(f"{stem}.{kind}{suffix}")


def point_hit(result: "SegmentationResult", gt: np.ndarray) -> bool | None:
    """Point accuracy: the RAM's argmax (early grounding), else the method's own point (RefAM's SAM
    prompt), else the argmax of its first map, inside the ground truth; None when it has none."""
    if "ram" in result.maps:
        return argmax_in_mask(result.maps["ram"], gt)
    if result.point is not None:
        x, y = result.point
        return bool(gt[int(y), int(x)])
    if result.maps:
        return argmax_in_mask(next(iter(result.maps.values())), gt)
    return None


REFINER_KEYS = ("refined_instruction", "refiner", "refiner_raw", "refiner_fallback")


def sample_record(
    sample: ReferringSample,
    result: "SegmentationResult",
    gt: np.ndarray,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One line of a records file.

    Keys: ``id``, ``method`` (the result's), ``image_id``, ``expression`` (as annotated), ``instruction`` (what the model read),
    ``iou``, ``intersection``, ``union`` (pixels at the original resolution), ``point_hit`` (RAM argmax
    inside the ground truth), ``pred_area``, ``gt_area``, ``size`` ([width, height]) and ``timings``
    (seconds; the model's are per image / per batch, see ``SegmentationResult.timings``).
    """
    if result.mask.shape != gt.shape:
        raise EvaluationError(
            f"{sample.describe()}: the ground-truth mask is {gt.shape[1]}x{gt.shape[0]} but the image is "
            f"{result.mask.shape[1]}x{result.mask.shape[0]} (width x height); they must match."
        )
    intersection, union = intersection_union(result.mask, gt)
    return {
        "id": sample.sample_id,
        "method": result.method,
        "image_id": sample.image_id,
        "expression": sample.expression,
        "instruction": result.instruction,
        "iou": iou_from_counts(intersection, union),
        "intersection": intersection,
        "union": union,
        # RAM at the input resolution: the token grid may cover a centre crop of the image
        "point_hit": point_hit(result, gt),
        "pred_area": int(result.mask.sum()),
        "gt_area": int(gt.sum()),
        "size": [int(gt.shape[1]), int(gt.shape[0])],
        "timings": {**result.timings, **(timings or {})},
        # the MLLM refiner's instruction and identity, when --refine-instruction was used
        **{key: result.config[key] for key in REFINER_KEYS if key in result.config},
    }


# -- evaluation ------------------------------------------------------------------------------------


def evaluate(
    segmenter: "Segmenter",
    dataset_or_samples: Any,
    records_path: str | Path,
    config: MethodConfig | None = None,
    limit: int | None = None,
    ids: Sequence[str] | None = None,
    shard: str | tuple[int, int] | None = None,
    save_masks: str | None = None,
    progress: bool = True,
    invalid: str = "record",
) -> dict[str, Any]:
    """Score every selected sample not yet in ``records_path``, then summarise the selection's records.

    Samples are grouped by image: one ``set_image`` per image and one ``predict`` for all of its
    expressions (batched by ``segmenter.batch_size``). ``save_masks="png"`` writes
    ``masks/<id>.png`` next to the records (``mask_file`` in the record), ``"rle"`` stores a COCO RLE
    as ``mask_rle``. ``invalid``: ``"record"`` or ``"refuse"`` samples the model cannot take (see the
    module docstring). Returns the summary (see :func:`summarize`), also written to ``summary.json`` and
    ``table.md`` beside the records. See the module docstring for resume and sharding.
    """
    from tqdm import tqdm

    if save_masks not in SAVE_MASKS:
        raise EvaluationError(f"save_masks must be None, 'png' or 'rle', got {save_masks!r}")
    if invalid not in INVALID_POLICIES:
        raise EvaluationError(f"invalid must be one of {', '.join(INVALID_POLICIES)}, got {invalid!r}")
    if config is None and getattr(getattr(segmenter, "method", None), "name", "early-grounding") == "early-grounding":
        config = segmenter.config
    records_path = Path(records_path)
    settings = run_settings(segmenter, dataset_or_samples, config, shard)
    samples = list(dataset_or_samples)
    selection = select_samples(samples, ids=ids, limit=limit, shard_spec=shard)
    without_gt = [s for s in selection if not s.has_mask]
    if without_gt:
        raise EvaluationError(
            f"{len(without_gt)} selected sample(s) have no ground-truth mask, e.g. {without_gt[0].describe()}; "
            "evaluation needs one per sample."
        )

    records_path.parent.mkdir(parents=True, exist_ok=True)
    header, records = read_records(records_path, repair=True)
    if header is not None:
        compare_settings(settings, header["settings"], str(records_path), ignore=INFORMATIONAL_SETTINGS)
    done = {r["id"] for r in records}
    todo = [s for s in selection if s.sample_id not in done]
    problems = segmenter.expression_problems([s.expression for s in todo], config) if todo else {}
    rejected = [s for s in todo if s.expression in problems]
    if rejected and invalid == "refuse":
        raise EvaluationError(refusal_message([(s, problems[s.expression]) for s in rejected], len(todo)))
    mask_dir = records_path.parent / "masks"
    started = time.perf_counter()

    with InterruptBetweenSamples() as interrupt, records_path.open("a", encoding="utf-8") as handle, tqdm(
        total=len(selection), initial=len(selection) - len(todo), unit="sample",
        desc=f"eval {settings['dataset']} {settings['split']}".rstrip(), disable=not progress, dynamic_ncols=True,
    ) as bar:  # fmt: skip
        if header is None:
            write_line(handle, {"format": RECORDS_FORMAT, "settings": settings})
            handle.flush()
        if rejected:
            new = [failed_record(s, problems[s.expression]) for s in rejected]
            for record in new:
                write_line(handle, record)
            handle.flush()
            os.fsync(handle.fileno())
            records.extend(new)
            bar.update(len(new))
        runnable = [s for s in todo if s.expression not in problems]
        for _, group in group_by_image(runnable):
            new = _evaluate_image_or_record(segmenter, group, config, save_masks, mask_dir, records_path.parent, invalid)
            for record in new:
                write_line(handle, record)
            handle.flush()
            os.fsync(handle.fileno())
            records.extend(new)
            bar.update(len(group))
            interrupt.check()  # Ctrl-C stops here, with every finished sample on disk

    recorded = {r["id"] for r in records}
    selected_ids = {s.sample_id for s in selection}
    counted = [r for r in records if r["id"] in selected_ids]
    run = {
        "records": [str(records_path)],
        "selected": len(selection),
        "dataset_size": len(samples),
        "evaluated_now": len(todo),
        "resumed_from": len(selection) - len(todo),
        "records_in_file": len(records),
        "outside_selection": len(records) - len(counted),
        "complete": all(s.sample_id in recorded for s in selection),
        "wall_s": time.perf_counter() - started,
    }
    summary = summarize(settings, counted, run)
    write_summary(summary, sibling_path(records_path, "summary", ".json"), sibling_path(records_path, "table", ".md"))
    return summary


def _evaluate_image_or_record(
    segmenter: "Segmenter",
    group: list[ReferringSample],
    config: MethodConfig,
    save_masks: str | None,
    mask_dir: Path,
    base: Path,
    invalid: str,
) -> list[dict[str, Any]]:
    """:func:`_evaluate_image`; with ``invalid="record"``, samples the model refuses become failed records."""
    return evaluate_or_record(lambda samples: _evaluate_image(segmenter, samples, config, save_masks, mask_dir, base), group, invalid)


def _evaluate_image(
    segmenter: "Segmenter",
    group: list[ReferringSample],
    config: MethodConfig | None,
    save_masks: str | None,
    mask_dir: Path,
    base: Path,
) -> list[dict[str, Any]]:
    start = time.perf_counter()
    image = group[0].load_image()
    load_s = time.perf_counter() - start
    segmenter.set_image(image)
    results = segmenter.predict([s.expression for s in group], config)
    out = []
    for sample, result in zip(group, results):
        start = time.perf_counter()
        gt = sample.load_mask()
        record = sample_record(sample, result, gt, {"image_load_s": load_s})
        record["timings"]["score_s"] = time.perf_counter() - start
        if save_masks == "rle":
            record["mask_rle"] = encode_rle(result.mask)
        elif save_masks == "png":
            mask_dir.mkdir(parents=True, exist_ok=True)
            path = mask_dir / f"{safe_name(sample.sample_id)}.png"
            save_mask_png(result.mask, path)
            record["mask_file"] = path.relative_to(base).as_posix()
        out.append(record)
    return out


# -- summaries -------------------------------------------------------------------------------------


def merge_records(
    paths: Sequence[str | Path],
    summary_path: str | Path | None = None,
    table_path: str | Path | None = None,
) -> dict[str, Any]:
    """Summarise several records files (e.g. the shards of one run) as one run.

    Headers must agree on every setting but ``shard``; a sample id found twice raises
    :class:`EvaluationError`. The summary equals an unsharded run's except for its ``run`` entry.
    A truncated last line of a file (a shard still running or killed) is dropped with a warning.
    Writes ``summary_path`` (and ``table_path``) when given.
    """
    if not paths:
        raise EvaluationError("merge needs at least one records file.")
    settings: dict[str, Any] | None = None
    first = ""
    owners: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    shards: list[str | None] = []
    for path in paths:
        if not Path(path).is_file():
            raise EvaluationError(f"records file not found: {path}")
        header, found = read_records(path)
        if header is None:
            raise EvaluationError(f"{path} is empty: no header, no records.")
        if settings is None:
            settings, first = header["settings"], str(path)
        else:
            compare_settings(settings, header["settings"], f"{path} (compared with {first})",
                             ignore=("shard", *INFORMATIONAL_SETTINGS))
        shards.append(header["settings"].get("shard"))
        for record in found:
            if record["id"] in owners:
                raise EvaluationError(
                    f"sample {record['id']!r} is in both {owners[record['id']]} and {path}: overlapping shards "
                    "or the same run given twice."
                )
            owners[record["id"]] = str(path)
            records.append(record)
    assert settings is not None
    run: dict[str, Any] = {"records": [str(p) for p in paths], "shards": shards}
    counts = {str(s).split("/")[1] for s in shards if s}
    if all(shards) and len(counts) == 1:
        count = int(counts.pop())
        missing = sorted({f"{i}/{count}" for i in range(count)} - set(shards))
        run["missing_shards"] = missing
        if missing:
            warnings.warn(f"merging without shard(s) {', '.join(missing)}: the summary covers part of the data.", stacklevel=2)
    summary = summarize(settings, records, run)
    if summary_path is not None:
        write_summary(summary, summary_path, table_path)
    return summary
