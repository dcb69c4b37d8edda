"""``editseg toy train|eval``: train the toy shapes editor and score it on the shapes benchmark."""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

__all__ = ["HANDLERS", "register", "run_toy"]


def register(subparsers: Any) -> None:
    """Add the ``toy`` command (with ``train`` and ``eval`` sub-commands)."""
    from ..toy.config import ToyConfig, TrainConfig

    toy = subparsers.add_parser("toy", help="train or evaluate the tiny shapes-world editing model")
    actions = toy.add_subparsers(dest="toy_command")

    train = actions.add_parser("train", help="train a toy FLUX.2-klein editor on the shapes world (CPU)")
    train.add_argument("--out", required=True, help="output folder (checkpoint, log, pipeline/)")
    defaults = TrainConfig()
    train.add_argument("--minutes", type=float, default=defaults.minutes, help=f"wall-clock budget (default {defaults.minutes:g})")
    train.add_argument("--steps", type=int, default=defaults.steps, help=f"optimizer steps (default {defaults.steps}; the budget usually binds first)")
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--pool-size", type=int, default=defaults.pool_size, help=f"distinct training scenes (default {defaults.pool_size})")
    train.add_argument("--curriculum-steps", type=int, default=defaults.curriculum_steps,
                       help=f"first steps with attribute-only expressions (default {defaults.curriculum_steps})")
    sizes = ToyConfig()
    train.add_argument("--double-blocks", type=int, default=sizes.double_blocks, help=f"double-stream blocks (default {sizes.double_blocks})")
    train.add_argument("--single-blocks", type=int, default=sizes.single_blocks, help=f"single-stream blocks (default {sizes.single_blocks})")
    train.add_argument("--threads", type=int, default=defaults.threads, help="torch threads (1 under CPU contention; 2 on an idle 2-core machine)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = actions.add_parser("eval", help="score a model on the shapes benchmark through the Segmenter API")
    evaluate.add_argument("--model", default="toy-shapes", help="model name or pipeline folder (default toy-shapes)")
    evaluate.add_argument("--n", type=int, default=200, help="benchmark samples (default 200)")
    evaluate.add_argument("--ablation", action="store_true", help="also print the ablation table")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of Markdown")


def run_toy(args: argparse.Namespace) -> int:
    if args.toy_command == "train":
        return _train(args)
    if args.toy_command == "eval":
        return _eval(args)
    print("usage: editseg toy {train,eval} ...")
    return 2


def _train(args: argparse.Namespace) -> int:
    from ..toy.config import ToyConfig, TrainConfig
    from ..toy.train import train

    config = TrainConfig(
        steps=args.steps,
        minutes=args.minutes,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        pool_size=args.pool_size,
        curriculum_steps=args.curriculum_steps,
        model=ToyConfig(double_blocks=args.double_blocks, single_blocks=args.single_blocks),
        threads=args.threads,
    )
    final = train(args.out, config, progress=not args.no_progress)
    print(f"saved {final}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from ..config import MethodConfig
    from ..toy.evaluate import ablation_configs, edit_localisation, load_segmenter, markdown_table, score

    torch.set_num_threads(1)
    from ..data.shapes import shapes_benchmark

    segmenter = load_segmenter(args.model)
    samples = shapes_benchmark(args.n)
    backbone = segmenter.backbone
    rows = ablation_configs(backbone.num_blocks, backbone.default_feature_block) if args.ablation else [
        (f"full (tau 0.8, block {backbone.default_feature_block}, expression tokens)", MethodConfig())
    ]
    results = [score(segmenter, samples, config, label) for label, config in rows]
    edits = edit_localisation(backbone, samples)
    if args.json:
        print(json.dumps({"rows": [r.__dict__ for r in results], "edit_localisation": edits}, indent=2))
    else:
        print(markdown_table(results))
        print("\n| expression kind (first row) | n | mIoU | RAM PA |\n|---|---|---|---|")
        for kind, row in results[0].extra["by_kind"].items():
            print(f"| {kind} | {row['n']} | {row['mIoU']:.3f} | {row['ram_point_accuracy']:.3f} |")
        print(
            f"\nThe model's own edit at the first step: most-changed token inside the target "
            f"{edits['point_accuracy']:.3f}; referred object changed most {edits['object_accuracy']:.3f} "
            f"(chance {edits['object_chance']:.3f})."
        )
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"toy": run_toy}
