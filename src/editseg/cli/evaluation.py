"""``editseg eval`` and ``editseg eval-merge``: benchmark runs from the command line.

    editseg eval --dataset refcoco --split val --data-root data --model flux2-klein-4b --out runs/rc-val
    editseg eval --dataset shapes --limit 200 --out runs/shapes --gallery 4
    editseg eval-merge runs/rc-val            # after sharded runs (--shard i/n) into runs/rc-val
    editseg eval-table runs/rc-val runs/rcp-val runs/rcg-val   # one table over several runs
    editseg eval-sweep --dataset refcoco --data-root data --sweep modules,feature_site,tau --out runs/abl
    editseg eval-separability --dataset refcoco --data-root data --timesteps 0,5,10,15,20,25 --out runs/sep
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..evaluation.records import EvaluationError  # light: the evaluation package loads its modules on use
from . import options

if TYPE_CHECKING:
    from ..data.base import ReferringSample

__all__ = [
    "DATASETS",
    "HANDLERS",
    "build_dataset",
    "register",
    "run_eval",
    "run_eval_merge",
    "run_eval_separability",
    "run_eval_sweep",
    "run_eval_table",
]

DATASETS = ("refcoco", "refcoco+", "refcocog", "manifest", "shapes")
DEFAULT_SHAPES_SAMPLES = 1000

EVAL_EPILOG = """Outputs in --out: records.jsonl (one line per sample, appended as images finish; re-running
the same command resumes), summary.json, table.md (ours beside the paper's Table 1), masks/ with
--save-masks png, gallery.png with --gallery K. With --shard i/n the files are named
records-shard<i>of<n>.jsonl etc., so all shards can share one --out; combine them with
`editseg eval-merge <out>`. Selection order: dataset order, then --ids, then --limit, then --shard."""


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    """The dataset options shared by ``eval``, ``eval-sweep`` and ``eval-separability``."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, choices=DATASETS, help="refcoco, refcoco+, refcocog (refer layout under --data-root), manifest (--manifest FILE) or shapes (the synthetic held-out-composition benchmark)")
    data.add_argument("--split", default="val", help="split: val/testA/testB (refcoco, refcoco+), val/test (refcocog umd), val (refcocog google); a free label for manifests; shapes always uses its test split (default: val)")
    data.add_argument("--data-root", default=None, help="refer data folder holding refcoco/, refcoco+/, refcocog/")
    data.add_argument("--image-root", default=None, help="COCO train2014 images (default: <data-root>/images/mscoco/images/train2014)")
    data.add_argument("--split-by", default=None, choices=["unc", "umd", "google"], help="split provider (default: unc for refcoco/refcoco+, umd for refcocog)")
    data.add_argument("--manifest", default=None, help="JSONL or CSV manifest for --dataset manifest (see editseg.data.manifest)")
    data.add_argument("--tier", default="full", choices=("basic", "full"), help="shapes tier: basic (attribute expressions, seen compositions) or full (all kinds, held-out compositions; default)")
    data.add_argument("--world-seed", type=int, default=None, help="shapes world seed (default: the fixed benchmark seed 314159)")


def register(subparsers: Any) -> None:
    """Add ``eval``, ``eval-merge``, ``eval-table``, ``eval-sweep`` and ``eval-separability`` to the ``editseg`` sub-command parser."""
    parser = subparsers.add_parser(
        "eval",
        help="score the method on RefCOCO/+/g, a manifest or the shapes benchmark (resumable, shardable)",
        description="Segment every sample of a dataset split and report oIoU, mIoU, Pr@t and point accuracy.",
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_options(parser)
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, help="output folder for records, summary, table, masks and gallery")
    run.add_argument("--limit", type=int, default=None, help="only the first N samples (for shapes: generate N, default 1000)")
    run.add_argument("--ids", default=None, help="comma-separated sample ids to evaluate")
    run.add_argument(
        "--shard",
        default=None,
        help="evaluate shard i of n (0-based), e.g. 0/4; 'auto' reads RANK/WORLD_SIZE set by torchrun or "
        "accelerate launch (and picks cuda:LOCAL_RANK); merge with eval-merge",
    )
    run.add_argument("--save-masks", default=None, choices=["png", "rle"], help="also keep predicted masks: PNG files in <out>/masks or COCO RLE inside the records")
    run.add_argument("--gallery", type=int, default=0, metavar="K", help="write gallery.png with the K best and K worst samples (re-segments those 2K)")
    run.add_argument("--invalid", default="record", choices=["record", "refuse"], help="samples the model cannot take (no words, stop words only, over its token limit, unreadable image): record them as failed, IoU 0, counted and listed in the summary, and go on (default); or refuse: check every sample first and stop before any forward, listing them")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    options.add_model_options(parser)
    options.add_method_options(parser)

    merge = subparsers.add_parser(
        "eval-merge",
        help="combine the records of sharded eval runs into one summary",
        description="Merge records files (or folders of records*.jsonl) of shards of one run; the summary equals an unsharded run's.",
    )
    merge.add_argument("inputs", nargs="+", help="records files or folders holding records*.jsonl")
    merge.add_argument("--out", default=None, help="folder for summary.json and table.md (default: the first input's folder)")

    table = subparsers.add_parser(
        "eval-table",
        help="one Table-1-style Markdown table from several eval summaries (e.g. all val splits)",
        description="Print (or write) a table with one column per dataset/split and metric, published rows beside ours.",
    )
    table.add_argument("inputs", nargs="+", help="summary.json files or eval output folders holding summary.json")
    table.add_argument("--out", default=None, help="write the table to this file instead of printing it")

    from ..evaluation.sweeps import DEFAULT_TIMESTEPS, SWEEPS

    steps = ",".join(str(t) for t in DEFAULT_TIMESTEPS)
    sweep = subparsers.add_parser(
        "eval-sweep",
        help="ablation sweeps (paper Tables 2-3, Figs. 3-5): every setting scored, forwards shared, resumable",
        description="Score every setting of the named sweeps around the method options; configs that share a forward share it.",
        epilog=SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_options(sweep)
    group = sweep.add_argument_group("sweep")
    group.add_argument("--sweep", required=True, help=f"comma list of sweeps: {', '.join(SWEEPS)}; NAME*timestep crosses one with --timesteps (quote it), e.g. 'feature_block*timestep' for Fig. 4")
    group.add_argument("--timesteps", default=steps, help=f"timestep indices for timestep and *timestep sweeps (default: {steps})")
    group.add_argument("--num-steps", type=int, default=28, help="schedule length the timestep indices refer to (default: 28)")
    group.add_argument("--blocks", default=None, help="feature blocks of the feature_block sweep, e.g. 0,10,20 or 0-31 (default: every --block-stride-th block)")
    group.add_argument("--block-stride", type=int, default=1, help="feature_block sweep: every k-th block from 0 (default: 1, every block)")
    group.add_argument("--taus", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="tau values of the tau sweep")
    group.add_argument("--no-plots", action="store_true", help="tables and JSON only, no PNG plots")
    run = sweep.add_argument_group("run")
    run.add_argument("--out", required=True, help="output folder: configs/<setting>/records.jsonl, <sweep>.md/.json/.png")
    run.add_argument("--limit", type=int, default=None, help="only the first N samples (for shapes: generate N, default 1000)")
    run.add_argument("--ids", default=None, help="comma-separated sample ids to evaluate")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    options.add_model_options(sweep)
    options.add_method_options(sweep)

    sep = subparsers.add_parser(
        "eval-separability",
        help="foreground/background feature separability J(t, l) per timestep (paper appendix A1, Fig. 1 left)",
        description="Probe clean-token features at the given blocks and timesteps; J against the ground truth on the token grid.",
        epilog="Outputs in --out: separability.jsonl (per sample, resumable), separability.json (statistics), "
        "separability.png (one box per timestep at --plot-block).",
    )
    _add_data_options(sep)
    group = sep.add_argument_group("separability")
    group.add_argument("--timesteps", default=steps, help=f"timestep indices (default: {steps})")
    group.add_argument("--num-steps", type=int, default=28, help="schedule length (default: 28)")
    group.add_argument("--blocks", default=None, help="blocks to probe, e.g. 20 or 0-31 (default: the backbone's feature block, ~2/3 depth)")
    group.add_argument("--site", default="attn", choices=["attn", "adaln", "block"], help="feature site (default: attn, the MMSA output)")
    group.add_argument("--plot-block", type=int, default=None, help="block shown in the box plot (default: the backbone's feature block if probed)")
    run = sep.add_argument_group("run")
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument("--limit", type=int, default=None, help="only the first N samples (for shapes: generate N, default 1000)")
    run.add_argument("--ids", default=None, help="comma-separated sample ids")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    options.add_model_options(sep)
    options.add_method_options(sep)


SWEEP_EPILOG = """Outputs in --out: configs/<setting>/records.jsonl + summary.json per distinct setting (ordinary
eval records: re-running resumes, `editseg eval-table` reads them), and per sweep <sweep>.md (table,
published Table 2/3 numbers beside ours on refcoco/+/g val), <sweep>.json and <sweep>.png.
Forwards: modules, feature_site, feature_block, attention_blocks and tau share one forward per
batch; each other prompt_tokens set adds one; timestep t > 0 adds 1 + t (1 + 2t with CFG)."""


def _int_list(text: str | None, what: str) -> list[int] | None:
    """``"0,5,10"`` or ``"0-3,8"`` → ints; ``None`` stays ``None``."""
    if text is None:
        return None
    values: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                low, high = part.split("-")
                values.extend(range(int(low), int(high) + 1))
            else:
                values.append(int(part))
    except ValueError:
        raise EvaluationError(f"{what}: cannot read {text!r}; use integers like 0,5,10 or ranges like 0-4.") from None
    if not values:
        raise EvaluationError(f"{what} is empty.")
    return values


def _float_list(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EvaluationError(f"{what}: cannot read {text!r}; use numbers like 0.5,0.8.") from None
    if not values:
        raise EvaluationError(f"{what} is empty.")
    return values


def build_dataset(args: argparse.Namespace) -> Any:
    """The dataset named by the ``eval`` options (annotations are read, images are not)."""
    if args.dataset == "shapes":
        from ..data.shapes_dataset import shapes_benchmark_dataset

        from ..data.shapes import BENCHMARK_SEED

        seed = BENCHMARK_SEED if getattr(args, "world_seed", None) is None else args.world_seed
        return shapes_benchmark_dataset(args.limit if args.limit is not None else DEFAULT_SHAPES_SAMPLES,
                                        tier=getattr(args, "tier", "full"), world_seed=seed)
    if args.dataset == "manifest":
        from ..data.manifest import ManifestDataset

        if not args.manifest:
            raise EvaluationError("--dataset manifest needs --manifest FILE (a .jsonl, .ndjson or .csv file).")
        return ManifestDataset(args.manifest, split=args.split)
    from ..data.refer import RefCOCODataset

    if not args.data_root:
        raise EvaluationError(f"--dataset {args.dataset} needs --data-root (the refer data folder holding {args.dataset}/).")
    dataset = RefCOCODataset(args.data_root, args.dataset, args.split, split_by=args.split_by, image_root=args.image_root)
    dataset.samples  # read the annotations now: fail before the model loads
    return dataset


def _check_images(samples: list[ReferringSample]) -> None:
    from ..data.base import DatasetFilesNotFound

    paths = sorted({str(s.image_path) for s in samples if s.image_path is not None})
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        shown = "\n  ".join(missing[:5])
        raise DatasetFilesNotFound(f"{len(missing)} of {len(paths)} images are missing, e.g.\n  {shown}")


def _raised_in_data_code(error: BaseException) -> bool:
    """Whether ``error`` was raised inside ``editseg/data`` (its innermost frame is there)."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).parent.name == "data" and "editseg" in Path(frames[-1].filename).parts


def resolve_launcher_shard(args: argparse.Namespace, environ=None) -> None:
    """``--shard auto``: this process's shard from the launcher's RANK / WORLD_SIZE (torchrun and
    ``accelerate launch`` set both), and, unless ``--device`` was given, ``cuda:LOCAL_RANK``."""
    if args.shard != "auto":
        return
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        raise EvaluationError(
            "--shard auto needs a launcher that sets RANK and WORLD_SIZE: run under "
            "`torchrun --nproc-per-node N -m editseg.cli eval ...` or `accelerate launch -m editseg.cli eval ...`."
        )
    rank, world = int(environ.get("RANK", 0)), int(environ["WORLD_SIZE"])
    args.shard = f"{rank}/{world}"
    if getattr(args, "device", None) is None and "LOCAL_RANK" in environ:
        import torch

        if torch.cuda.is_available():
            args.device = f"cuda:{int(environ['LOCAL_RANK'])}"


def _converted(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn data-file and data-format errors into messages (the CLI prints EditsegErrors)."""

    def run(args: argparse.Namespace) -> int:
        from ..data.base import DatasetFilesNotFound

        try:
            return handler(args)
        except DatasetFilesNotFound as error:
            raise EvaluationError(str(error)) from None
        except ValueError as error:  # bad splits, shard specs, manifests, masks: raised by editseg.data
            if _raised_in_data_code(error):
                raise EvaluationError(str(error)) from None
            raise

    run.__doc__ = handler.__doc__
    return run


def _eval(args: argparse.Namespace) -> int:
    """``editseg eval``."""
    from ..evaluation.report import write_gallery
    from ..evaluation.records import check_resumable, read_records
    from ..evaluation.runner import (
        dataset_info,
        evaluate,
        records_filename,
        select_samples,
        shard_label,
        sibling_path,
    )
    from .writers import check_output_dir

    ids = [i.strip() for i in args.ids.split(",") if i.strip()] if args.ids else None
    resolve_launcher_shard(args)
    if args.gallery < 0:
        raise EvaluationError(f"--gallery must be 0 or more, got {args.gallery}")
    config = options.config_from_args(args)  # validate method options before reading data
    dataset = build_dataset(args)
    selection = select_samples(dataset, ids=ids, limit=args.limit, shard_spec=args.shard)
    _check_images(selection)
    out = Path(args.out)
    records_path = out / records_filename(args.shard)
    settings = config.to_dict()
    if settings["feature_block"] is None:
        del settings["feature_block"]  # the backbone's default, known once it is loaded
    early = {"config": settings, "max_side": args.max_side}
    if args.method != "early-grounding":  # the method options are early grounding's; others record their own
        early = {"method": args.method}
    check_resumable(  # before loading the model: a mismatch fails in seconds, not minutes
        records_path, {**early, **dataset_info(dataset), "shard": shard_label(args.shard)},
    )
    if args.invalid == "refuse":  # what can be judged without the model's tokenizer, before loading it
        _refuse_unusable_expressions(selection, records_path)
    check_output_dir(out)
    segmenter = options.segmenter_from_args(_shapes_only_hint(args))
    summary = evaluate(
        segmenter, dataset, records_path, limit=args.limit, ids=ids, shard=args.shard,
        save_masks=args.save_masks, progress=not args.no_progress, invalid=args.invalid,
    )  # fmt: skip
    _print_summary(summary, records_path)
    if args.gallery:
        gallery = sibling_path(records_path, "gallery", ".png")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            selected = {s.sample_id for s in selection}
            records = [r for r in read_records(records_path)[1] if r["id"] in selected]
            written = write_gallery(segmenter, selection, records, gallery, k=args.gallery)
        if written:
            print(f"editseg: gallery written to {written}", file=sys.stderr)
    return 0


def _refuse_unusable_expressions(selection: list[ReferringSample], records_path: Path) -> None:
    from ..errors import ExpressionError
    from ..text import normalize_expression
    from ..evaluation.runner import read_records, refusal_message

    done = {r["id"] for r in read_records(records_path)[1]}
    pending = [s for s in selection if s.sample_id not in done]
    rejected = []
    for sample in pending:
        try:
            normalize_expression(sample.expression)
        except ExpressionError as error:
            rejected.append((sample, str(error)))
    if rejected:
        raise EvaluationError(refusal_message(rejected, len(pending)))


def _shapes_only_hint(args: argparse.Namespace) -> argparse.Namespace:
    """Mark shapes-only runs so the loader skips toy-shapes' "for photos use a real model" notice."""
    args.photo_hint = args.dataset != "shapes"
    return args


def _print_summary(summary: dict[str, Any], where: Path) -> None:
    m = summary["metrics"]

    def pct(key: str) -> str:
        return "-" if m.get(key) is None else f"{m[key]:.2f}"

    dataset, split = summary["benchmark"]
    print(
        f"{dataset} {split}: {summary['num_samples']} samples  oIoU {pct('oIoU')}  mIoU {pct('mIoU')}  "
        f"Pr@0.5 {pct('Pr@0.5')}  Pr@0.9 {pct('Pr@0.9')}  point acc. {pct('point_accuracy')}"
    )
    failed = summary.get("failed") or {}
    if failed.get("count"):
        shown = ", ".join(str(f["id"]) for f in failed["samples"][:5]) + (" ..." if failed["count"] > 5 else "")
        print(f"editseg: {failed['count']} sample(s) failed and count as IoU 0 (reasons in summary.json): {shown}", file=sys.stderr)
    outside = (summary.get("run") or {}).get("outside_selection")
    if outside:
        print(f"editseg: the records file holds {outside} more record(s) outside this selection (not counted)", file=sys.stderr)
    print(f"editseg: records, summary and table in {where.parent}", file=sys.stderr)


def _records_inputs(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.glob("records*.jsonl"))
            if not found:
                raise EvaluationError(f"no records*.jsonl files in {path}")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise EvaluationError(f"not found: {path}")
    return paths


def _eval_merge(args: argparse.Namespace) -> int:
    """``editseg eval-merge``."""
    from ..evaluation.runner import merge_records

    paths = _records_inputs(args.inputs)
    out = Path(args.out) if args.out else (Path(args.inputs[0]) if Path(args.inputs[0]).is_dir() else paths[0].parent)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = merge_records(paths, out / "summary.json", out / "table.md")
    for warning in caught:
        print(f"editseg: warning: {warning.message}", file=sys.stderr)
    print(f"editseg: merged {len(paths)} records file(s)", file=sys.stderr)
    _print_summary(summary, out / "summary.json")
    return 0


def _eval_table(args: argparse.Namespace) -> int:
    """``editseg eval-table``."""
    import json

    from ..evaluation.runner import SUMMARY_FORMAT, markdown_table

    summaries = []
    for item in args.inputs:
        path = Path(item) / "summary.json" if Path(item).is_dir() else Path(item)
        if not path.is_file():
            raise EvaluationError(f"summary not found: {path}")
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise EvaluationError(f"{path} is not valid JSON ({error.msg}).") from None
        if not isinstance(summary, dict) or summary.get("format") != SUMMARY_FORMAT:
            raise EvaluationError(f"{path} is not an editseg eval summary ({SUMMARY_FORMAT}).")
        summaries.append(summary)
    text = markdown_table(summaries)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        print(f"editseg: table written to {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


run_eval = _converted(_eval)
run_eval_merge = _converted(_eval_merge)

run_eval_table = _converted(_eval_table)


def _eval_sweep(args: argparse.Namespace) -> int:
    """``editseg eval-sweep``."""
    from ..evaluation.sweep_run import run_sweep
    from ..evaluation.sweeps import parse_sweep_names
    from ..evaluation.runner import select_samples
    from .writers import check_output_dir

    names = parse_sweep_names(args.sweep)
    timesteps = _int_list(args.timesteps, "--timesteps")
    blocks = _int_list(args.blocks, "--blocks")
    taus = _float_list(args.taus, "--taus")
    ids = [i.strip() for i in args.ids.split(",") if i.strip()] if args.ids else None
    base = options.config_from_args(args)
    dataset = build_dataset(args)
    _check_images(select_samples(dataset, ids=ids, limit=args.limit))
    check_output_dir(args.out)
    segmenter = options.segmenter_from_args(_shapes_only_hint(args))
    results = run_sweep(
        segmenter, dataset, names, args.out, limit=args.limit, ids=ids, base=base, timesteps=timesteps or (),
        num_steps=args.num_steps, blocks=blocks, block_stride=args.block_stride, taus=taus,
        plots=not args.no_plots, progress=not args.no_progress,
    )  # fmt: skip
    for result in results.values():
        print(result.table_path.read_text(encoding="utf-8") if result.table_path else "")
    print(f"editseg: sweep tables, plots and per-setting records in {args.out}", file=sys.stderr)
    return 0


def _eval_separability(args: argparse.Namespace) -> int:
    """``editseg eval-separability``."""
    from ..evaluation.separability import separability_study
    from ..evaluation.runner import select_samples
    from .writers import check_output_dir

    timesteps = _int_list(args.timesteps, "--timesteps") or []
    blocks = _int_list(args.blocks, "--blocks")
    ids = [i.strip() for i in args.ids.split(",") if i.strip()] if args.ids else None
    options.config_from_args(args)
    dataset = build_dataset(args)
    _check_images(select_samples(dataset, ids=ids, limit=args.limit))
    check_output_dir(args.out)
    segmenter = options.segmenter_from_args(_shapes_only_hint(args))
    summary = separability_study(
        segmenter, dataset, timesteps, blocks, args.site, num_steps=args.num_steps, limit=args.limit, ids=ids,
        out_dir=args.out, plot_block=args.plot_block, progress=not args.no_progress,
    )  # fmt: skip
    block = summary["plot_block"]
    print(f"separability J ({args.site} features, block {block}): {summary['num_samples']} samples, {len(summary['skipped'])} skipped")
    for t in timesteps:
        cell = summary["stats"][str(t)][str(block)]
        if cell["n"]:
            print(f"  t={t}: median {cell['median']:.4f}  IQR {cell['q1']:.4f}-{cell['q3']:.4f}  n={cell['n']}")
    print(f"editseg: separability.json, separability.jsonl and separability.png in {args.out}", file=sys.stderr)
    return 0


run_eval_sweep = _converted(_eval_sweep)
run_eval_separability = _converted(_eval_separability)

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "eval": run_eval,
    "eval-merge": run_eval_merge,
    "eval-table": run_eval_table,
    "eval-sweep": run_eval_sweep,
    "eval-separability": run_eval_separability,
}
