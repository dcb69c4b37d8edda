"""RefAM-style per-token maps read through the toy-shapes editor's attention: point accuracy.

What is measured: for each shapes-benchmark sample, the editor (toy-shapes, a tiny FLUX.2 [klein]
trained on the shapes world) runs its first denoising step on ``remove <ê>`` where ê is the
expression with or without RefAM's attention magnets; per-token image→token maps are read on the
clean-image rows of every block (:class:`editseg.probing.token_attention.EditorTokenProbe`), and
RefAM's aggregation (softmax over ê's tokens, stop-word / magnet / GAS filtering, NP, SB) gives a
heatmap whose argmax is scored as point accuracy (PA: inside the ground-truth mask). Chance is the
mean mask area fraction.

What is NOT measured here (not meaningful on the toy): SAM masks (no SAM knows the shapes world;
the tiny SAM is random), the FLUX.1 text-to-image path, timestep 750 and inversion (the toy model
is an editor trained at the first step, not a text-to-image model), captions.

    PYTHONPATH=src python bench/refam_toy.py --n 200
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--model", default="toy-shapes")
    args = parser.parse_args(argv)

    from editseg.backbones import load_backbone
    from editseg.backbones.flux2 import probes_installed
    from editseg.data.shapes import shapes_benchmark
    from editseg.evaluation.metrics import argmax_in_mask
    from editseg.methods import refam_maps as maps
    from editseg.methods.refam_text import parse_rules
    from editseg.probing.token_attention import EditorTokenProbe, T2ILayout, TokenAttentionRecorder, TokenProbePlan

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = load_backbone(args.model, device="cpu")
    samples = shapes_benchmark(args.n)
    variants = {
        "with magnets": maps.MAGNETS + maps.COLOR_MAGNETS,
        "no magnets": (),
    }
    configs = {
        # label: (variant, token_softmax, filter_stop, suppress_gas, noun_phrase, spatial_bias)
        "RefAM: AM + filter + softmax + GAS": ("with magnets", True, True, True, False, False),
        "RefAM + NP": ("with magnets", True, True, True, True, False),
        "RefAM + NP + SB": ("with magnets", True, True, True, True, True),
        "RefAM + SB": ("with magnets", True, True, True, False, True),
        "no magnets (filter + softmax)": ("no magnets", True, True, True, False, False),
        "magnets, raw attention (no softmax)": ("with magnets", False, True, True, False, False),
        "no magnets, no filter, raw (= CAM argmax over expression tokens)": ("no magnets", False, False, False, False, False),
        "no magnets, no filter, softmax": ("no magnets", True, False, False, False, False),
    }
    hits = {label: [] for label in configs}
    gas_counts = {name: 0 for name in variants}
    start = time.perf_counter()
    skipped, scored = 0, []
    for sample in samples:
        from PIL import Image

        from editseg.errors import ExpressionError

        image = backbone.prepare_image(Image.fromarray(sample.image))
        parsed = parse_rules(sample.expression)
        recorded = {}
        try:
            texts = {
                name: backbone.encode_text([e], [f"remove {e}"], image=image)
                for name, e in ((n, maps.expanded_expression(sample.expression, m)[0]) for n, m in variants.items())
            }
        except ExpressionError:  # the toy reads at most 32 text tokens: magnets push long expressions over
            skipped += 1
            continue
        scored.append(sample)
        for name, magnets in variants.items():
            text_e, span = maps.expanded_expression(sample.expression, magnets)
            text = texts[name]
            prompt = text.prompts[0]
            start_char = prompt.expression_span[0]
            positions = prompt.indices("expression")  # tokens of ê inside the chat text
            tokens = maps.classify_tokens(
                prompt.text,
                prompt.offsets,
                positions,
                (start_char, start_char + span[1]),
                (start_char + parsed.span[0], start_char + parsed.span[1]),
            )
            layout = backbone.layout_for(image, text)
            t2i = T2ILayout(layout.text_len, layout.clean_len, layout.grid, image_offset=layout.noisy_len)
            plan = TokenProbePlan(t2i, torch.tensor([positions]), torch.ones(1, len(positions), dtype=torch.bool))
            recorder = TokenAttentionRecorder(plan)
            inputs = backbone.step_inputs(image, text, 0)
            with torch.inference_mode(), probes_installed(backbone.pipeline.transformer, EditorTokenProbe(layout, recorder)):
                backbone.pipeline.transformer(**inputs, return_dict=False)
            blocks = range(backbone.num_blocks)
            gas = maps.detect_gas(recorder.stacked("text_mass", blocks), plan.valid)[0].tolist()
            gas_counts[name] += sum(gas)
            recorded[name] = (tokens, gas, recorder, layout.grid)
        for label, (name, softmax, filter_stop, suppress_gas, noun_phrase, spatial) in configs.items():
            tokens, gas, recorder, grid = recorded[name]
            which = "image_maps_softmax" if softmax else "image_maps"
            token_maps = maps.per_token_maps(recorder.stacked(which, range(backbone.num_blocks)))
            keep = maps.keep_mask(tokens, gas, filter_stop, True, True, noun_phrase, suppress_gas)
            heat = maps.minmax(maps.aggregate(token_maps, torch.tensor([keep])))[0]
            if spatial:
                heat = heat * maps.spatial_prior(grid, parsed.terms)
            hits[label].append(argmax_in_mask(heat.view(grid).numpy(), sample.mask))
    seconds = time.perf_counter() - start
    chance = float(np.mean([s.mask.mean() for s in scored]))
    print(f"model={args.model} n={len(scored)} (skipped {skipped}: over 32 tokens with magnets) chance={chance:.3f} seconds={seconds:.1f}")
    print(f"GAS tokens flagged (10x rule): {gas_counts}")
    print("| configuration | point accuracy |\n|---|---|")
    for label, values in hits.items():
        print(f"| {label} | {np.mean(values):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
