"""The shapes comparison table (README "Methods"): run every row's `editseg eval` on both tiers, then
assemble one Markdown table with the geometry ceilings (a)/(b).

    OMP_NUM_THREADS=1 python bench/shapes_comparison.py --out runs/shapes-compare --readme README.md

Evaluations are ordinary resumable `editseg eval` runs in <out>/<row>-<tier>: rerunning the command
redoes nothing that is complete and only reassembles the table. `--table-only` never evaluates
(missing runs show "not run"). After the toy-shapes weights or the toy LoRA change, pass `--fresh`
(the old early-grounding records would otherwise resume: they record the model's name, not its
weights; old rlfseg records are refused by their LoRA fingerprint). Rows needing real weights
(refam, ref-diff) are listed with their command, not run. `--readme FILE` replaces the block between
the `<!-- shapes-comparison:begin -->` / `<!-- shapes-comparison:end -->` markers of FILE.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np

from editseg.evaluation.shapes_table import SHAPES_ROWS, TIERS, comparison_table, eval_argv, read_summary

BEGIN, END = "<!-- shapes-comparison:begin -->", "<!-- shapes-comparison:end -->"


def ceilings(n: int, world_seed: int) -> tuple[dict, dict]:
    """Geometry ceilings (a)/(b) per tier on the same samples, and the mean target area (PA chance)."""
    from editseg.api import Segmenter
    from editseg.data.shapes import shapes_benchmark
    from editseg.toy.analysis import geometry_ceilings

    patch = Segmenter.from_pretrained("toy-shapes", device="cpu").backbone.patch
    found, chance = {}, {}
    for tier in TIERS:
        samples = shapes_benchmark(n, tier=tier, world_seed=world_seed)
        found[tier] = [(c.label, c.mIoU) for c in geometry_ceilings(samples, patch)]
        chance[tier] = float(np.mean([s.mask.mean() for s in samples]))
    return found, chance


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/shapes-compare", help="folder of the eval runs (default runs/shapes-compare)")
    parser.add_argument("--limit", type=int, default=1000, help="samples per tier (default 1000)")
    parser.add_argument("--world-seed", type=int, default=271828, help="shapes world seed (default 271828, unseen in training)")
    parser.add_argument("--rows", default=",".join(r.key for r in SHAPES_ROWS), help="rows to include (keys, comma-separated)")
    parser.add_argument("--table-only", action="store_true", help="do not evaluate; assemble the table from what is there")
    parser.add_argument("--fresh", action="store_true", help="delete the rows' old eval folders first")
    parser.add_argument("--readme", default=None, help="write the table between the shapes-comparison markers of this file")
    args = parser.parse_args()

    from editseg.cli.main import main as editseg

    by_key = {r.key: r for r in SHAPES_ROWS}
    unknown = [k for k in args.rows.split(",") if k not in by_key]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(by_key)}")
    rows = [by_key[k] for k in args.rows.split(",")]  # evaluated and shown in this order
    for row in rows:
        for tier in TIERS:
            argv = eval_argv(row, tier, args.out, args.limit, args.world_seed)
            folder = Path(argv[argv.index("--out") + 1])
            if args.fresh and folder.exists() and not row.needs_weights:
                shutil.rmtree(folder)
            if args.table_only or row.needs_weights:
                continue
            print(f"$ editseg {shlex.join(argv)}", file=sys.stderr)
            code = editseg([*argv, "--no-progress"])
            if code != 0:
                print(f"shapes_comparison: {row.key} {tier} failed (exit {code})", file=sys.stderr)
                return code
    summaries = {(r.key, t): read_summary(Path(args.out) / f"{r.key}-{t}") for r in rows for t in TIERS}
    found, chance = ceilings(args.limit, args.world_seed)
    table = comparison_table(rows, summaries, found, args.limit, args.world_seed, args.out, chance=chance)
    print(table)
    if args.readme:
        path = Path(args.readme)
        text = path.read_text(encoding="utf-8")
        if BEGIN not in text or END not in text:
            print(f"shapes_comparison: {path} has no {BEGIN} ... {END} block", file=sys.stderr)
            return 2
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{table}\n{END}", text, flags=re.S)
        path.write_text(text, encoding="utf-8")
        print(f"shapes_comparison: table written into {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
