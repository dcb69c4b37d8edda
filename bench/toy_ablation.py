"""Ablation table of the early-grounding method on the trained toy editor (shapes benchmark, CPU).

Every number goes through the real API (``editseg.Segmenter`` → ``Flux2KleinBackbone`` → probes →
method) with the shipped ``toy-shapes`` weights: the full method at the paper's defaults on
``--main-n`` samples (with a per-expression-kind breakdown and the model's own edit
localisation), then one row per ablation (CAM-only / RAM-only / full; tau 0.5 vs 0.8; prompt
token sets; every feature block) and the deliberately broken token layouts on the first ``--n``
samples. Prints Markdown.

    python bench/toy_ablation.py                     # main n=1000, ablation n=200 (~10 min, 1 core)
    python bench/toy_ablation.py --main-n 0 --n 50   # quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-shapes", help="model name or pipeline folder")
    parser.add_argument("--main-n", type=int, default=1000, help="samples for the headline full-method row (0: skip)")
    parser.add_argument("--n", type=int, default=200, help="samples per ablation row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write all rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from editseg.config import MethodConfig
    from editseg.data.shapes import GENERATOR_VERSION, shapes_benchmark
    from editseg.toy.evaluate import (
        ablation_configs, broken_variant_scores, edit_localisation, load_segmenter, markdown_table, score,
    )

    start = time.perf_counter()
    segmenter = load_segmenter(args.model)
    backbone = segmenter.backbone
    out: dict = {"model": args.model, "generator_version": GENERATOR_VERSION,
                 "default_block": backbone.default_feature_block}
    if args.main_n:
        main_row = score(segmenter, shapes_benchmark(args.main_n), MethodConfig(), "full method, paper defaults")
        out["main"] = main_row.__dict__
        print(f"## Full method on {args.main_n} shapes-benchmark samples (generator v{GENERATOR_VERSION})\n")
        print(markdown_table([main_row]))
        pr = ", ".join(f"{k} {v:.3f}" for k, v in main_row.extra.items() if k.startswith("Pr@"))
        print(f"\n{pr}; {main_row.seconds / main_row.n * 1000:.0f} ms per sample.\n")
        print("| expression kind | n | mIoU | RAM PA |\n|---|---|---|---|")
        for kind, row in main_row.extra["by_kind"].items():
            print(f"| {kind} | {row['n']} | {row['mIoU']:.3f} | {row['ram_point_accuracy']:.3f} |")
        edits = edit_localisation(backbone, shapes_benchmark(min(args.main_n, 200)))
        out["edit_localisation"] = edits
        print(f"\nThe model's own first-step edit ({min(args.main_n, 200)} samples): most-changed token inside the "
              f"target {edits['point_accuracy']:.3f}; referred object changed most {edits['object_accuracy']:.3f} "
              f"(chance {edits['object_chance']:.3f}).\n")
    if args.n:
        samples = shapes_benchmark(args.n)
        rows = [score(segmenter, samples, config, label)
                for label, config in ablation_configs(backbone.num_blocks, backbone.default_feature_block)]
        out["ablation"] = [r.__dict__ for r in rows]
        print(f"## Ablation ({backbone.num_double_blocks} double + {backbone.num_single_blocks} single blocks; "
              f"default feature block {backbone.default_feature_block})\n")
        print(markdown_table(rows))
        broken = broken_variant_scores(segmenter, samples)
        out["broken"] = [r.__dict__ for r in broken]
        print("\n## Deliberately broken token layouts\n")
        print(markdown_table(broken))
    print(f"\n(total {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
