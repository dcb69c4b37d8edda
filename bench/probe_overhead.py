"""Cost of editseg's streaming attention probes on a FLUX.2 transformer of realistic width (CPU).

A randomly initialised ``Flux2Transformer2DModel`` with klein-4B's width (24 heads x 128 = 3072)
and a few blocks runs at the token counts of a 512² and a 1024² input (text 512 + noisy + clean
tokens, 16 px per token). For each size it prints, measured in this one run:

- time(with probes) / time(bare forward): median of interleaved repeats after a warm-up;
- peak memory: each variant in a fresh subprocess, resident memory sampled every 2 ms during the
  forward; "extra" = peak during the forward minus the resident memory just before it
  (activations), "whole" = the whole process's peak (weights included).

Probes record CAM/RAM terms on every block and attention-output features on one block, as the
method's defaults do. Each probe route (``--routes``) is timed interleaved with the bare forward
in the same rounds. Goals (issue 13): time ratio <= 1.05 and whole-process memory ratio <= 1.02
at both sizes; probe memory linear in the number of image tokens (no N x N matrix is ever kept).

    python bench/probe_overhead.py --double 1 --single 1          # both sizes, ~15-25 min on 2 shared cores
    python bench/probe_overhead.py --quick --sizes 512            # smaller width, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

SIZES = {"512": 512, "1024": 1024}


def build(width_heads: int, double: int, single: int):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(0)
    return Flux2Transformer2DModel(
        in_channels=128,
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=128,
        num_attention_heads=width_heads,
        joint_attention_dim=3072,
        guidance_embeds=False,
    ).eval()


def inputs(model, side: int, text_len: int = 512):
    grid = side // 16
    image_tokens = grid * grid
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 2 * image_tokens, 128, generator=generator)
    text = torch.randn(1, text_len, 3072, generator=generator)
    ids = torch.zeros(2 * image_tokens, 4, dtype=torch.long)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    for part in range(2):
        chunk = slice(part * image_tokens, (part + 1) * image_tokens)
        ids[chunk, 0] = 10 * part
        ids[chunk, 1] = rows.flatten()
        ids[chunk, 2] = cols.flatten()
    txt_ids = torch.zeros(text_len, 4, dtype=torch.long)
    txt_ids[:, 3] = torch.arange(text_len)
    kwargs = dict(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.ones(1), img_ids=ids, txt_ids=txt_ids, guidance=None, return_dict=False)
    return kwargs, image_tokens, text_len


ROUTES = {"lse": {"lse": True}, "fused": {"lse": False, "fused": True}, "separate": {"lse": False, "fused": False}}


def plan_for(model, image_tokens: int, text_len: int, route: str = "lse"):
    from editseg.probing.recorder import ProbePlan, TokenLayout

    grid = int(image_tokens**0.5)
    layout = TokenLayout(text_len=text_len, noisy_len=image_tokens, clean_len=image_tokens, grid=(grid, grid))
    prompt = torch.zeros(1, text_len)
    prompt[0, 7:12] = 1  # five expression tokens
    blocks = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    return ProbePlan(layout, prompt, None, {"attn": frozenset({blocks - 1})}, **ROUTES[route])


def forward(model, kwargs, plan=None):
    from editseg.backbones.flux2 import probes_installed
    from editseg.probing.recorder import ProbeRecorder

    with torch.inference_mode():
        if plan is None:
            return model(**kwargs)
        recorder = ProbeRecorder(plan)
        with probes_installed(model, recorder):
            model(**kwargs)
        return recorder


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_memory(args) -> None:
    """Child process: one forward of one variant, printing JSON with before/peak resident memory."""
    model = build(args.heads, args.double, args.single)
    kwargs, image_tokens, text_len = inputs(model, SIZES[args.size])
    plan = plan_for(model, image_tokens, text_len, args.variant) if args.variant in ROUTES else None
    before = rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    forward(model, kwargs, plan)
    done.set()
    thread.join()
    peak[0] = max(peak[0], rss_bytes())
    print(json.dumps({"before": before, "peak": peak[0]}))


def memory_of(args, size: str, variant: str) -> dict:
    command = [sys.executable, __file__, "--child", "--size", size, "--variant", variant,
               "--heads", str(args.heads), "--double", str(args.double), "--single", str(args.single)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="width 1024 (8 heads), for a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--double", type=int, default=1)
    parser.add_argument("--single", type=int, default=2)
    parser.add_argument("--routes", default="lse,fused", help="probe routes to time against the bare forward, interleaved "
                        "(lse: log-sum-exp, the CPU default; fused: 8 extra channels in the model's call; separate)")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="512", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="bare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return measure_memory(args)
    if args.quick:
        args.heads, args.repeats = 8, 2

    routes = [r for r in args.routes.split(",") if r]
    print(f"FLUX.2 transformer: width {args.heads * 128}, {args.double} double + {args.single} single blocks, "
          f"float32 on CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, routes {routes}")
    model = build(args.heads, args.double, args.single)
    rows = []
    for size in args.sizes.split(","):
        kwargs, image_tokens, text_len = inputs(model, SIZES[size])
        plans = {route: plan_for(model, image_tokens, text_len, route) for route in routes}
        reference = forward(model, kwargs)[0]
        for plan in plans.values():
            forward(model, kwargs, plan)  # warm-up
        assert torch.equal(reference, forward(model, kwargs)[0])  # processors restored
        wall = {name: [] for name in ["bare", *routes]}
        cpu = {name: [] for name in ["bare", *routes]}
        for _ in range(args.repeats):  # interleaved: bare, route 1, route 2, ... on the same load
            for name in ["bare", *routes]:
                start, start_cpu = time.perf_counter(), time.process_time()
                forward(model, kwargs, plans.get(name))
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        memory = {name: memory_of(args, size, name) for name in ["bare", *routes]}
        for route in routes:
            extra_bare = memory["bare"]["peak"] - memory["bare"]["before"]
            extra_probe = memory[route]["peak"] - memory[route]["before"]
            rows.append({
                "size": f"{size}²", "route": route, "tokens": text_len + 2 * image_tokens,
                "bare_s": statistics.median(wall["bare"]), "probe_s": statistics.median(wall[route]),
                "wall_ratio": statistics.median([p / b for p, b in zip(wall[route], wall["bare"])]),
                "cpu_ratio": statistics.median([p / b for p, b in zip(cpu[route], cpu["bare"])]),
                "whole_ratio": memory[route]["peak"] / memory["bare"]["peak"],
                "extra_bare_mb": extra_bare / 2**20, "extra_probe_mb": extra_probe / 2**20,
                "probe_only_mb": (extra_probe - extra_bare) / 2**20,
            })
            print(f"{size}² {route}: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    print("\n| input | route | tokens | bare forward s | with probes s | time ratio (wall) | time ratio (CPU) "
          "| peak mem ratio (whole process) | forward extra MB bare → probes | probe-only MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['route']} | {r['tokens']} | {r['bare_s']:.2f} | {r['probe_s']:.2f} | {r['wall_ratio']:.3f} "
              f"| {r['cpu_ratio']:.3f} | {r['whole_ratio']:.3f} | {r['extra_bare_mb']:.0f} → {r['extra_probe_mb']:.0f} "
              f"| {r['probe_only_mb']:.0f} |")
    print("time ratios: median over repeats of (probed / bare) of the same round; CPU = process time "
          "(less sensitive to other jobs on a shared machine).")


if __name__ == "__main__":
    main()
