"""CPU time of the log-sum-exp route's probe work for one block (klein-4B width), against the
previous implementation (step 2 as one flash call with a value tensor padded to the head width).

Both get the same random q, k (B, S, H, D) and the row log-sum-exp of the model's own attention
call, at the token counts of a 512² or 1024² input (512 text + 2 × image tokens). Prints, per
size: the model's attention call, old and new probe CPU seconds (min over interleaved repeats)
and new/old, plus the largest relative difference of the results (they must agree to rounding).

    OMP_NUM_THREADS=1 python bench/probe_step2.py --sizes 512 --repeats 12
"""

from __future__ import annotations

import argparse
import time

import torch

from editseg.probing import recorder
from editseg.probing.recorder import TokenLayout, attention_with_lse, statistics_from_lse


def padded_flash(query, key, lse, layout: TokenLayout, prompt_mask):
    """The previous ``statistics_from_lse``: prompt mass from a logsumexp over the prompt columns,
    step 2 as a flash call over the clean keys with ``c̄`` in channel 0 of a 128-wide value."""
    q = query[:, layout.clean].transpose(1, 2)
    k = key.transpose(1, 2)
    row_lse = lse[:, :, layout.clean]
    batch, heads, clean_len, width = q.shape
    scale = width**-0.5
    columns = prompt_mask.sum(0).nonzero()[:, 0]
    scores = torch.matmul(q, k[:, :, columns].transpose(-1, -2)) * scale + prompt_mask[:, None, None, columns].log()
    prompt_mass = torch.exp(torch.logsumexp(scores, dim=-1) - row_lse).mean(1)
    values = q.new_zeros((batch, 1, clean_len, width))
    values[:, 0, :, 0] = prompt_mass
    within, clean_lse = attention_with_lse(q, k[:, :, layout.clean], values.expand(batch, heads, clean_len, width), None, scale)
    clean_mass_h = torch.exp(clean_lse - row_lse)
    propagated = (clean_mass_h * within[..., 0]).mean(1)
    return prompt_mass, propagated / clean_mass_h.mean(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--rows", type=int, default=0, help="override recorder.PROPAGATION_ROWS (query rows per block on CPU)")
    args = parser.parse_args()
    if args.rows:
        recorder.PROPAGATION_ROWS = args.rows
    for side in (int(s) for s in args.sizes.split(",")):
        torch.manual_seed(0)
        grid = side // 16
        n, text = grid * grid, 512
        layout = TokenLayout(text, n, n, (grid, grid))
        seq = text + 2 * n
        q, k, v = (torch.randn(1, seq, args.heads, 128) for _ in range(3))
        prompt = torch.zeros(1, text)
        prompt[0, 7:12] = 1
        start = time.process_time()
        _, lse = attention_with_lse(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        model_s = time.process_time() - start
        variants = {"old": lambda: padded_flash(q, k, lse, layout, prompt), "new": lambda: statistics_from_lse(q, k, lse, layout, prompt)}
        (c0, r0), (c1, r1) = variants["old"](), variants["new"]()
        diff = max(float((c1 - c0).abs().max() / c0.abs().max()), float((r1 - r0).abs().max() / r0.abs().max()))
        times = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, run in variants.items():
                start = time.process_time()
                run()
                times[name].append(time.process_time() - start)
        old, new = min(times["old"]), min(times["new"])
        print(f"{side}²: Nv {n}, model attention call {model_s:.3f} s, probe old {old:.3f} s, new {new:.3f} s, "
              f"new/old {new / old:.3f} (CPU time, min of {args.repeats}); max relative difference {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
