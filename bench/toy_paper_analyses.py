"""The paper's analyses on the toy editor, with baselines and ceilings as rows of every table.

Everything goes through the real API (``Segmenter`` → ``Flux2KleinBackbone`` → probes → method).
For each tier (basic, full) of the shapes benchmark drawn from ``--world-seed``:

1. Headline: the full method at the paper's defaults, CAM-only and RAM-only (Table 2), the model's
   own first-step edit as a segmenter (|x0 - source|) with its edit accuracy, the same statistics
   read from the noisy-token rows (diagnostic), another sample's expression (oracle), FSL with the
   true region as M (model features), and the geometry ceilings (a) and (b).
2. tau 0.5 / 0.8 (Fig. 5) and attention blocks all / double / single (Table 2 "modules").
3. Feature-block sweep (Fig. 4).
4. Timestep sweep (Fig. 3): the probe at step k of a ``--steps``-step schedule.
5. Prompt-token sets: expression / content words / instruction / all.
6. Per expression kind (full tier).

    python bench/toy_paper_analyses.py --n 200                    # both tiers, world seed 314159
    python bench/toy_paper_analyses.py --model DIR --n 1000 --world-seed 271828 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch


def fmt(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def table(title: str, rows: list[dict]) -> str:
    lines = [f"\n### {title}\n", "| configuration | mIoU | RAM PA | CAM PA | other |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['label']} | {fmt(row.get('mIoU'))} | {fmt(row.get('ram_pa'))} | {fmt(row.get('cam_pa'))} | {row.get('other', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-shapes", help="model name or pipeline folder")
    parser.add_argument("--n", type=int, default=200, help="samples per tier for the headline table")
    parser.add_argument("--sweep-n", type=int, default=None, help="samples for the sweeps (default: --n)")
    parser.add_argument("--world-seed", type=int, default=None, help="benchmark world seed (default 314159)")
    parser.add_argument("--tiers", default="basic,full")
    parser.add_argument("--steps", type=int, default=4, help="schedule length of the timestep sweep")
    parser.add_argument("--no-sweeps", action="store_true", help="headline tables only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write every row to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from editseg.config import MethodConfig
    from editseg.data.shapes import BENCHMARK_SEED, GENERATOR_VERSION, shapes_benchmark
    from editseg.toy.analysis import edit_baseline, fsl_with_true_region, geometry_ceilings, shifted_expressions
    from editseg.toy.evaluate import load_segmenter, noisy_as_clean, score_sweep

    seed = BENCHMARK_SEED if args.world_seed is None else args.world_seed
    start = time.perf_counter()
    segmenter = load_segmenter(args.model)
    backbone = segmenter.backbone
    base = MethodConfig()
    out: dict = {"model": args.model, "generator_version": GENERATOR_VERSION, "world_seed": seed, "tiers": {}}
    print(f"# Paper analyses on {args.model} (generator v{GENERATOR_VERSION}, world seed {seed}; "
          f"{backbone.num_double_blocks} double + {backbone.num_single_blocks} single blocks, "
          f"default feature block {backbone.default_feature_block})")

    def rows_of(scores) -> list[dict]:
        return [{"label": s.label, "mIoU": s.mIoU, "ram_pa": s.ram_point_accuracy, "cam_pa": s.cam_point_accuracy,
                 "other": f"oIoU {s.oIoU:.3f}"} for s in scores]

    for tier in args.tiers.split(","):
        samples = shapes_benchmark(args.n, tier=tier, world_seed=seed)
        sweep = samples[: args.sweep_n or args.n]
        chance = sum(s.mask.mean() for s in samples) / len(samples)
        ceilings = [{"label": c.label, "mIoU": c.mIoU, "other": "upper bound of any token-level answer"}
                    for c in geometry_ceilings(samples, backbone.patch)]
        chance_row = [{"label": "chance (point accuracy = mean mask area)", "ram_pa": chance, "cam_pa": chance}]
        result: dict = {}

        main_scores = score_sweep(segmenter, samples, [
            ("full method, paper defaults (tau 0.8)", base),
            ("CAM only (map > 0.5)", base.replace(mode="cam")),
            ("RAM only (map > 0.5)", base.replace(mode="ram")),
        ])
        noisy = score_sweep(noisy_as_clean(segmenter), samples, [("diagnostic: noisy-token rows read as the image", base)])
        shifted = score_sweep(segmenter, samples, [("oracle: another sample's expression", base)],
                              expressions=shifted_expressions(samples))
        edit = edit_baseline(backbone, samples)
        fsl_true = fsl_with_true_region(segmenter, samples)
        headline = rows_of(main_scores) + [
            {"label": edit.label, "mIoU": edit.mIoU, "ram_pa": edit.point_accuracy,
             "other": f"edit accuracy {edit.object_accuracy:.3f} (PA column: argmax of the edit map)"},
        ] + rows_of(noisy) + rows_of(shifted) + [
            {"label": fsl_true.label, "mIoU": fsl_true.mIoU}] + ceilings + chance_row
        result["headline"] = headline
        result["edit_accuracy"] = edit.object_accuracy
        print(table(f"{tier} tier, n = {len(samples)}: the method, baselines, diagnostics, ceilings", headline))
        pr = ", ".join(f"{k} {v:.3f}" for k, v in main_scores[0].extra.items() if k.startswith("Pr@"))
        print(f"\nFull method: {pr}.")
        if tier == "full" or len(main_scores[0].extra["by_kind"]) > 1:
            kinds = main_scores[0].extra["by_kind"]
            result["by_kind"] = kinds
            print("\n| expression kind | n | mIoU | RAM PA | CAM PA |\n|---|---|---|---|---|")
            for kind, row in kinds.items():
                print(f"| {kind} | {row['n']} | {row['mIoU']:.3f} | {row['ram_point_accuracy']:.3f} | {row['cam_point_accuracy']:.3f} |")
        if not args.no_sweeps:
            sweep_ceilings = [{"label": c.label, "mIoU": c.mIoU} for c in geometry_ceilings(sweep, backbone.patch)]
            blocks = rows_of(score_sweep(segmenter, sweep, [
                ("tau 0.8, all blocks (paper defaults)", base),
                ("tau 0.5 [Fig. 5]", base.replace(tau=0.5)),
                ("attention blocks: double-stream only", base.replace(attention_blocks="double")),
                ("attention blocks: single-stream only", base.replace(attention_blocks="single")),
            ] + [(f"attention block {b} alone", base.replace(attention_blocks=(b,))) for b in range(backbone.num_blocks)]))
            result["tau_and_blocks"] = blocks + sweep_ceilings
            print(table(f"{tier} tier, n = {len(sweep)}: tau and attention blocks", blocks + sweep_ceilings))
            features = rows_of(score_sweep(segmenter, sweep, [
                (f"feature block {b}" + (" (default)" if b == backbone.default_feature_block else ""),
                 base.replace(feature_block=b)) for b in range(backbone.num_blocks)]))
            result["feature_blocks"] = features + sweep_ceilings
            print(table(f"{tier} tier, n = {len(sweep)}: FSL feature block [Fig. 4]", features + sweep_ceilings))
            timesteps = []
            for k in range(args.steps):
                config = base.replace(timestep_index=k, num_inference_steps=args.steps)
                timesteps += rows_of(score_sweep(segmenter, sweep, [(f"probe at step {k} of {args.steps}", config)]))
            result["timesteps"] = timesteps + sweep_ceilings
            print(table(f"{tier} tier, n = {len(sweep)}: timestep [Fig. 3]", timesteps + sweep_ceilings))
            prompts = []
            for name in ("expression", "expression-content", "instruction", "all"):
                prompts += rows_of(score_sweep(segmenter, sweep, [(f"prompt tokens: {name}", base.replace(prompt_tokens=name))]))
            result["prompt_tokens"] = prompts + sweep_ceilings
            print(table(f"{tier} tier, n = {len(sweep)}: prompt-token set", prompts + sweep_ceilings))
        out["tiers"][tier] = result
    print(f"\n(total {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
