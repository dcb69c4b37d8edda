"""Where the toy editor's clean image tokens send their attention, block by block.

For each block of the shapes-trained ``toy-shapes`` model (or a pipeline folder), at the first
denoising step (the method's exact inputs), this prints the head-mean attention mass that clean
tokens put on the expression's tokens, separately for tokens on the referred object and on the
background, and where the background tokens' mass goes (template, padding, clean, noisy tokens).
It explains the ablation rows by module (double- vs single-stream blocks): CAM is the sum of the
per-block expression mass, so blocks that favour the background cancel those that favour the
target. The attention is recomputed literally (softmax(QKᵀ/√d)) from the q/k that diffusers' own
processors pass to ``dispatch_attention_fn``.

    python bench/toy_attention_mass.py --n 32 --tier basic

"Template" is every real text token outside the expression (with the minimal template: "remove").
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def captured_attention_inputs(store: list):
    """Record (query, key) of every attention call of FLUX.2 transformer blocks."""
    import diffusers.models.transformers.transformer_flux2 as module

    original = module.dispatch_attention_fn

    def recording(query, key, value, *args, **kwargs):
        store.append((query.detach(), key.detach()))
        return original(query, key, value, *args, **kwargs)

    module.dispatch_attention_fn = recording
    try:
        yield
    finally:
        module.dispatch_attention_fn = original


def head_mean_attention(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """(S, S) softmax(QKᵀ/√d) averaged over heads; inputs (1, S, H, D) as diffusers passes them."""
    q, k = query[0].transpose(0, 1).double(), key[0].transpose(0, 1).double()
    scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
    return scores.softmax(dim=-1).mean(dim=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-shapes", help="model name or pipeline folder")
    parser.add_argument("--n", type=int, default=32, help="benchmark samples")
    parser.add_argument("--tier", default="basic", choices=("basic", "full"), help="benchmark tier (default basic)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from PIL import Image

    from editseg.data.shapes import shapes_benchmark
    from editseg.toy.evaluate import load_segmenter

    backbone = load_segmenter(args.model).backbone
    blocks = backbone.num_blocks
    sums = {key: np.zeros(blocks) for key in ("target", "background", "template", "padding", "clean", "noisy")}
    samples = shapes_benchmark(args.n, tier=args.tier)
    for sample in samples:
        image = backbone.prepare_image(Image.fromarray(sample.image))
        text = backbone.encode_text([sample.expression], [sample.instruction])
        layout = backbone.layout_for(image, text)
        store: list = []
        with captured_attention_inputs(store), torch.inference_mode():
            backbone.pipeline.transformer(**backbone.first_step_inputs(image, text, 0), return_dict=False)
        prompt = text.prompts[0]
        expression, real = prompt.indices("expression"), prompt.num_real_tokens
        rows, cols = image.geometry.grid
        side = sample.mask.shape[0] // rows
        on_target = torch.from_numpy(sample.mask.reshape(rows, side, cols, side).mean(axis=(1, 3)) >= 0.5).flatten()
        if not on_target.any():
            continue
        for block, (query, key) in enumerate(store):
            clean_rows = head_mean_attention(query, key)[layout.clean]
            expression_mass = clean_rows[:, expression].sum(dim=1)
            background = clean_rows[~on_target]
            sums["target"][block] += expression_mass[on_target].mean().item()
            sums["background"][block] += expression_mass[~on_target].mean().item()
            sums["template"][block] += background[:, :real].sum(dim=1).mean().item() - expression_mass[~on_target].mean().item()
            sums["padding"][block] += background[:, real : layout.text_len].sum(dim=1).mean().item()
            sums["clean"][block] += background[:, layout.clean].sum(dim=1).mean().item()
            sums["noisy"][block] += background[:, layout.noisy].sum(dim=1).mean().item()
    n = len(samples)
    double = backbone.num_double_blocks
    print(f"Clean-token attention mass, head mean, first step, {n} shapes-benchmark samples ({args.model})\n")
    print("| block | kind | expression mass: target tokens | background tokens | ratio | background → template | → padding | → clean | → noisy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for b in range(blocks):
        t, g = sums["target"][b] / n, sums["background"][b] / n
        print(f"| {b} | {'double' if b < double else 'single'} | {t:.3f} | {g:.3f} | {t / max(g, 1e-9):.2f} | "
              f"{sums['template'][b] / n:.3f} | {sums['padding'][b] / n:.3f} | {sums['clean'][b] / n:.3f} | {sums['noisy'][b] / n:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
