"""editseg builds the transformer inputs exactly as diffusers' Flux2KleinPipeline does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.images import load_image
from reference import transformer_calls


def pipeline_transformer_inputs(pipeline, image, prompt, seed):
    """Run the real pipeline for one step and capture the keyword arguments of its transformer call."""
    with transformer_calls(pipeline.transformer, clone=False) as calls:
        pipeline(
            image=image,
            prompt=prompt,
            num_inference_steps=1,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="latent",
        )
    return calls[-1]


@pytest.mark.parametrize("size", [(64, 64), (83, 70), (150, 97)])
def test_transformer_inputs_equal_the_pipelines(tiny_backbone, size):
    rng = np.random.default_rng(size[0])
    image = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    expression = "the small red circle left of the star"
    instruction = f"remove {expression}"
    reference = pipeline_transformer_inputs(tiny_backbone.pipeline, image, instruction, seed=7)

    prepared = tiny_backbone.prepare_image(load_image(image))
    text = tiny_backbone.encode_text([expression], [instruction])
    ours = tiny_backbone.first_step_inputs(prepared, text, seed=7)

    for name in ("hidden_states", "encoder_hidden_states", "timestep", "img_ids", "txt_ids"):
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=0, msg=name)
    assert reference["guidance"] is None and ours["guidance"] is None
    assert float(ours["timestep"][0]) == 1.0  # sigma 1: the first denoising step, t = 1000

    # Layout: [text | noisy | clean], the clean part being the VAE-encoded reference image.
    layout = tiny_backbone.layout_for(prepared, text)
    assert layout.text_len == reference["encoder_hidden_states"].shape[1] == 512
    clean = reference["hidden_states"][:, layout.clean_in_image_stream]
    torch.testing.assert_close(clean, prepared.tensors["latents"])
    rows, cols = prepared.geometry.grid
    assert reference["img_ids"][0, layout.noisy_len :, 1].max() == rows - 1
    assert reference["img_ids"][0, layout.noisy_len :, 2].max() == cols - 1
    assert prepared.geometry.crop[2:] == (size[0] // 4 * 4, size[1] // 4 * 4)


def test_batch_shares_one_noise_draw_and_matches_single_inputs(tiny_backbone, random_image):
    prepared = tiny_backbone.prepare_image(load_image(random_image))
    exprs = ["the dog", "a cat on the sofa"]
    both = tiny_backbone.first_step_inputs(prepared, tiny_backbone.encode_text(exprs, [f"remove {e}" for e in exprs]), 5)
    alone = tiny_backbone.first_step_inputs(prepared, tiny_backbone.encode_text(exprs[1:], [f"remove {exprs[1]}"]), 5)
    torch.testing.assert_close(both["hidden_states"][1:], alone["hidden_states"])
    torch.testing.assert_close(both["encoder_hidden_states"][1:], alone["encoder_hidden_states"])


def test_large_images_follow_the_pipeline_resize_rule(tiny_backbone):
    """Above 1 MP the pipeline resizes to 1 MP (aspect kept) and crops to multiples of its patch."""
    pipe = tiny_backbone.pipeline
    image = Image.new("RGB", (1500, 1000), (10, 20, 30))
    expected = pipe.image_processor._resize_to_target_area(image, 1024 * 1024)
    geometry = tiny_backbone.preprocess_geometry(image.size)
    assert geometry.resized_size == expected.size
    patch = tiny_backbone.patch
    assert geometry.crop[2] == expected.size[0] // patch * patch
    assert geometry.crop[3] == expected.size[1] // patch * patch


def _all_transformer_calls(pipeline, image, prompt, seed, steps):
    with transformer_calls(pipeline.transformer) as calls:
        pipeline(image=image, prompt=prompt, num_inference_steps=steps,
                 generator=torch.Generator("cpu").manual_seed(seed), output_type="latent")
    return calls


@pytest.mark.parametrize("distilled", [True, False])
def test_later_timesteps_follow_the_pipelines_own_denoising(tiny_backbone, distilled):
    """Probing at step k sees the same noisy tokens and timestep as the pipeline's k-th step."""
    pipeline = tiny_backbone.pipeline
    previous = pipeline.config.is_distilled
    pipeline.register_to_config(is_distilled=distilled)
    try:
        image = Image.fromarray((np.random.default_rng(1).random((64, 72, 3)) * 255).astype(np.uint8))
        instruction = "remove the blue star"
        calls = _all_transformer_calls(pipeline, image, instruction, seed=4, steps=5)
        per_step = 1 if distilled else 2  # undistilled: conditional then unconditional pass
        assert len(calls) == 5 * per_step
        prepared = tiny_backbone.prepare_image(load_image(image))
        text = tiny_backbone.encode_text(["the blue star"], [instruction])
        for step in (0, 3):
            ours = tiny_backbone.step_inputs(prepared, text, seed=4, step_index=step, num_steps=5)
            reference = calls[step * per_step]
            torch.testing.assert_close(ours["timestep"], reference["timestep"])
            torch.testing.assert_close(ours["hidden_states"], reference["hidden_states"], rtol=1e-5, atol=1e-5)
        assert float(calls[0]["timestep"][0]) == 1.0 and float(calls[3 * per_step]["timestep"][0]) < 1.0
    finally:
        pipeline.register_to_config(is_distilled=previous)
