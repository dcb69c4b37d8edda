"""The paper's analyses on the toy editor: tables (Markdown) and one figure per analysis (PNG).

Everything goes through the real API (``Segmenter`` → ``Flux2KleinBackbone`` → probes → method);
the analyses live in ``editseg.toy.paper_analyses`` (what is measured), ``editseg.toy.probe_grid``
(one probe per sample and timestep, J(t, l), attention mass), ``editseg.toy.paper_report``
(Markdown) and ``editseg.toy.paper_figures`` (matplotlib; ``pip install 'editseg[figures]'``).
Per tier: Table 2 with baselines and ceilings, Fig. 3 timesteps, the J(t, l) box plot, Fig. 4
feature blocks (and the t' x l' heatmap), Fig. 5 tau, prompt-token sets, per-block attention mass.

    python bench/toy_paper_analyses.py --n 16 --tiers basic --world-seed 271828 \\
        --figures docs/images/toy --markdown docs/toy-paper-analyses.md
    python bench/toy_paper_analyses.py --model DIR --n 1000 --sweep-n 200 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-shapes", help="model name or pipeline folder")
    parser.add_argument("--n", type=int, default=200, help="samples per tier for the headline table")
    parser.add_argument("--sweep-n", type=int, default=None, help="samples for the sweeps (default: --n)")
    parser.add_argument("--world-seed", type=int, default=None, help="benchmark world seed (default 314159)")
    parser.add_argument("--tiers", "--tier", default="basic,full")
    parser.add_argument("--steps", type=int, default=4, help="schedule length of the timestep sweep")
    parser.add_argument("--timesteps", default=None, help="comma-separated steps to probe (default: all of --steps)")
    parser.add_argument("--grid-rule", default="nearest", choices=("nearest", "coverage"),
                        help="ground truth to the token grid for J and the attention mass")
    parser.add_argument("--raw-features", action="store_true", help="J on raw features (the paper L2-normalises)")
    parser.add_argument("--fsl-attention", default="method", choices=("method", "same"),
                        help="Fig. 4: RAM from the first probed step (method) or from the feature step (same)")
    parser.add_argument("--no-sweeps", action="store_true", help="headline tables only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write every number to this JSON file")
    parser.add_argument("--figures", help="write one PNG per analysis and tier into this folder")
    parser.add_argument("--markdown", help="write the tables (with links to the figures) to this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from editseg.data.shapes import BENCHMARK_SEED, GENERATOR_VERSION, shapes_benchmark
    from editseg.toy.evaluate import load_segmenter
    from editseg.toy.paper_analyses import analyse_tier
    from editseg.toy.paper_report import report_markdown, tier_markdown

    seed = BENCHMARK_SEED if args.world_seed is None else args.world_seed
    start = time.perf_counter()
    segmenter = load_segmenter(args.model)
    backbone = segmenter.backbone
    architecture = (f"{backbone.num_double_blocks} double + {backbone.num_single_blocks} single blocks, "
                    f"default feature block {backbone.default_feature_block}")
    result: dict = {"model": args.model, "generator_version": GENERATOR_VERSION, "world_seed": seed,
                    "architecture": architecture, "tiers": {}}
    timesteps = None if args.timesteps is None else [int(t) for t in args.timesteps.split(",")]
    figures: dict[str, dict] = {}
    for tier in args.tiers.split(","):
        samples = shapes_benchmark(args.n, tier=tier, world_seed=seed)
        result["tiers"][tier] = analyse_tier(
            segmenter, samples, samples[: args.sweep_n or args.n], num_steps=args.steps, timesteps=timesteps,
            sweeps=not args.no_sweeps, grid_rule=args.grid_rule, normalize=not args.raw_features,
            fsl_attention=args.fsl_attention)
        if args.figures:
            from editseg.toy.paper_figures import write_figures

            figures[tier] = write_figures(result["tiers"][tier], args.figures, prefix=f"{tier}-",
                                          caption=f"{args.model}, {tier} tier, world seed {seed}")
        print(tier_markdown(tier, result["tiers"][tier], figures.get(tier)), flush=True)
        print(f"({tier}: {time.perf_counter() - start:.0f} s so far)", file=sys.stderr, flush=True)
    command = "python bench/toy_paper_analyses.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(report_markdown(result, figures, args.markdown, command))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1, default=float)
    print(f"\n(total {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
