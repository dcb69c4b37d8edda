"""``editseg train rlfseg …`` (train a LoRA) and ``editseg train rlfseg-eval …`` (score one on the shapes world).

Every field of :class:`~editseg.train.rlfseg.config.RLFsegTrainConfig` is an option
(``--batch-size``, ``--max-steps``, ``--rds``, ``--no-reference``, …). Multi-GPU:
``accelerate launch -m editseg.cli train rlfseg …`` (or ``accelerate launch $(which editseg) train rlfseg …``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any, Callable

__all__ = ["HANDLERS", "register", "run_train"]

_HELP = {
    "model": "base model: sd15 (Stable Diffusion 1.5, the paper), a SD 1.5 folder/hub id, toy-shapes, "
             "flux2-klein-4b/9b, tiny-random-sd15, tiny-random-flux2",
    "source": "training data: phrasecut, refcoco, refcoco+, refcocog, manifest, shapes",
    "data_root": "dataset folder (PhraseCut VGPhraseCut_v0; refer data/) or manifest file",
    "rds": "refine labels with SAM and select per sample (eq. 4)",
    "reference": "klein: append the clean image tokens after z_t",
    "max_steps": "stop after this many steps (overrides --epochs)",
    "minutes": "wall-clock budget of this invocation; rerun to resume",
}


def _option_type(annotation: Any):
    """``int`` for ``int`` and ``int | None`` (likewise float); ``str`` otherwise."""
    options = typing.get_args(annotation) or (annotation,)
    for kind in (int, float):
        if kind in options:
            return kind
    return str


def register(subparsers: Any) -> None:
    """Add ``train`` with the ``rlfseg`` and ``rlfseg-eval`` sub-commands."""
    from ..train.rlfseg.config import RLFsegTrainConfig

    train = subparsers.add_parser("train", help="train a method that learns (RLFseg)")
    actions = train.add_subparsers(dest="train_command")
    rlfseg = actions.add_parser("rlfseg", help="train an RLFseg LoRA (rectified flow image → mask)",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rlfseg.add_argument("--out", required=True, help="run folder: checkpoint.pt, train_log.jsonl, lora/ (rerun to resume)")
    rlfseg.add_argument("--no-progress", action="store_true", help="no progress bar")
    hints = typing.get_type_hints(RLFsegTrainConfig)
    for field in dataclasses.fields(RLFsegTrainConfig):
        flag = "--" + field.name.replace("_", "-")
        help_text = _HELP.get(field.name, "")
        if hints[field.name] is bool:
            if field.default:
                rlfseg.add_argument("--no-" + field.name.replace("_", "-"), dest=field.name, action="store_false", help=help_text)
            else:
                rlfseg.add_argument(flag, dest=field.name, action="store_true", help=help_text)
        else:
            rlfseg.add_argument(flag, dest=field.name, type=_option_type(hints[field.name]), default=field.default,
                                help=f"{help_text} (default {field.default})".strip())

    evaluate = actions.add_parser(
        "rlfseg-eval", help="score an RLFseg LoRA per sampler (Table 5's AOS rows, Table 9), no records",
        description="A quick mIoU/oIoU per sampler. `editseg eval --method rlfseg --lora PATH --sampler S` is the "
                    "resumable path with records and the summary every method gets; both agree on the same samples.")
    evaluate.add_argument("--lora", required=True, help="LoRA folder written by `editseg train rlfseg`")
    evaluate.add_argument("--model", default=None, help="base model (default: the one in the LoRA's rlfseg_config.json)")
    evaluate.add_argument("--source", default="shapes", help="shapes (benchmark), phrasecut, refcoco, refcoco+, refcocog, manifest")
    evaluate.add_argument("--data-root", default=None, help="dataset folder or manifest file")
    evaluate.add_argument("--split", default="val", help="split (default val; PhraseCut test, RefCOCO testA/testB, ...)")
    evaluate.add_argument("--n", type=int, default=200, help="samples, 0 = all (default 200)")
    evaluate.add_argument("--tier", default="full", choices=("basic", "full"), help="shapes tier (default full)")
    evaluate.add_argument("--world-seed", type=int, default=None, help="shapes world seed (default: the benchmark seed 314159)")
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--samplers", default="one-step,aos", help="comma-separated samplers (default one-step,aos)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of Markdown")


def run_train(args: argparse.Namespace) -> int:
    if args.train_command == "rlfseg":
        return _train(args)
    if args.train_command == "rlfseg-eval":
        return _evaluate(args)
    print("usage: editseg train {rlfseg,rlfseg-eval} ...")
    return 2


def _train(args: argparse.Namespace) -> int:
    from ..train.rlfseg.config import RLFsegTrainConfig
    from ..train.rlfseg.trainer import train

    config = RLFsegTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RLFsegTrainConfig)})
    lora = train(config, args.out, progress=not args.no_progress)
    print(f"saved {lora}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..train.rlfseg.evaluate import score

    rows = [score(args.lora, args.source, args.n, sampler, data_root=args.data_root, split=args.split, device=args.device,
                  model=args.model, tier=args.tier, world_seed=args.world_seed) for sampler in args.samplers.split(",")]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print("| source | split | sampler | n | mIoU | oIoU |\n|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['source']} | {row['split']} | {row['sampler']} | {row['n']} | {row['miou']:.3f} | {row['oiou']:.3f} |")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"train": run_train}
