"""What the text-encoding cache saves per `editseg serve` request, in process, cache off vs on.

One request of the server's worker is ``Segmenter.set_image(scene)`` + ``Segmenter.predict([expr])``
(editseg.serve.engine). This loads the default model (toy-shapes) once, builds two segmenters on
that one backbone (``text_cache_size=0`` and the default), warms both on every example scene and
suggested expression (as bench/serve_load.py's warm-up does), then sends the same stream of
requests (the built-in example scenes in turn, one suggested expression each, the order of
``editseg.serve.loadtest.example_requests``) to both, alternating request by request so that
both see the same machine load. Prints per-variant medians and p95 of wall and thread-CPU time
and the on/off ratios (the ratio of medians; CPU time is the less load-sensitive figure). Also
checks that every cached result equals the uncached one bit for bit.

    OMP_NUM_THREADS=1 python bench/text_cache.py --requests 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per variant (default: 40)")
    args = parser.parse_args()

    from editseg import Segmenter
    from editseg.serve.examples import load_examples

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cached = Segmenter.from_pretrained()
        plain = Segmenter(cached.backbone, text_cache_size=0, max_side=cached.max_side)
    examples = list(load_examples(64).values())
    longest = max(len(e.expressions) for e in examples)
    pairs = [(e, e.expressions[j]) for j in range(longest) for e in examples if j < len(e.expressions)]
    variants = {"off": plain, "on": cached}
    for seg in variants.values():  # warm-up: every scene and expression once
        for example, expression in pairs:
            seg.set_image(example.image)
            seg.predict([expression])
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    stream = [pairs[n % len(pairs)] for n in range(args.requests)]
    for number, (example, expression) in enumerate(stream):
        order = ("off", "on") if number % 2 == 0 else ("on", "off")
        results = {}
        for name in order:
            seg = variants[name]
            w0, c0 = time.perf_counter(), time.thread_time()
            seg.set_image(example.image)
            results[name] = seg.predict([expression])[0]
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.thread_time() - c0)
        a, b = results["off"], results["on"]
        assert np.array_equal(a.mask, b.mask) and all(np.array_equal(a.maps[k], b.maps[k]) for k in a.maps), expression
    cache = cached.method.text_cache
    print(f"{len(pairs)} distinct (scene, expression) pairs; cache: {len(cache)} entries, {cache.hits} hits, {cache.misses} misses")
    print("| cache | requests | wall p50 ms | wall p95 ms | CPU p50 ms | CPU p95 ms |")
    print("|---|---|---|---|---|---|")
    for name in variants:
        print(
            f"| {name} | {len(wall[name])} | {1000 * statistics.median(wall[name]):.0f} | {1000 * p95(wall[name]):.0f} | "
            f"{1000 * statistics.median(cpu[name]):.0f} | {1000 * p95(cpu[name]):.0f} |"
        )
    for label, data in (("wall", wall), ("CPU", cpu)):
        per_pair = [on / off for on, off in zip(data["on"], data["off"]) if off > 0]
        print(
            f"on/off {label}: ratio of medians {statistics.median(data['on']) / statistics.median(data['off']):.3f}, "
            f"ratio of p95 {p95(data['on']) / p95(data['off']):.3f}, median of per-request ratios {statistics.median(per_pair):.3f}"
        )


if __name__ == "__main__":
    main()
