"""FLUX.2 [klein] as RefAM's text-to-image DiT (our option) on the tiny random klein: parity with
``Flux2KleinPipeline`` (text, ids, schedule, Euler loop) and RefAM end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.backbones.flux2_t2i import Flux2T2IBackbone
from editseg.backbones.tiny import build_tiny_flux2_klein_pipeline
from editseg.methods.refam import RefAM, RefAMConfig
from reference import transformer_calls


@pytest.fixture(scope="module")
def pipeline():
    return build_tiny_flux2_klein_pipeline()


@pytest.fixture(scope="module")
def backbone(pipeline):
    return Flux2T2IBackbone(pipeline, name="tiny-klein-t2i", is_random=True)


@pytest.fixture()
def image():
    rng = np.random.default_rng(5)
    return Image.fromarray((rng.random((64, 96, 3)) * 255).astype(np.uint8))


def test_pipeline_parity(backbone, pipeline, image):
    prepared = backbone.prepare_image(image)
    rows, cols = prepared.geometry.grid
    start = backbone.noise(prepared, 3)
    channels = start.shape[-1]
    unpacked = start.transpose(1, 2).reshape(1, channels, rows, cols)
    with transformer_calls(pipeline.transformer) as calls:
        final = pipeline(
            prompt="a red dog", latents=unpacked, height=rows * backbone.editor.patch, width=cols * backbone.editor.patch,
            num_inference_steps=3, output_type="latent",
        ).images
    text = backbone.encode_text(["a red dog"])
    timesteps, sigmas = backbone.schedule(prepared.latents.shape[1], 3)
    assert len(calls) == 3
    for call, t in zip(calls, timesteps):
        torch.testing.assert_close(call["timestep"], t.expand(1) / 1000)
        torch.testing.assert_close(call["encoder_hidden_states"], text.embeds)
        torch.testing.assert_close(call["txt_ids"], text.ids)
        torch.testing.assert_close(call["img_ids"], prepared.ids)
    # our Euler loop with backbone.velocity visits the pipeline's latents at every step
    x = start.clone()
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            torch.testing.assert_close(calls[i]["hidden_states"], x, rtol=1e-5, atol=1e-5)
            x = x + (sigmas[i + 1] - sigmas[i]) * backbone.velocity(x, t, text, prepared)
    assert final.numel() == x.numel()
    # tracked tokens: the prompt's own tokens, then the <|im_end|> that closes the user turn
    tokens = [text.encoder_texts[0][slice(*text.offsets[0][p])] for p in text.tracked[0]]
    assert "".join(tokens[:-1]).strip() == "a red dog" and tokens[-1] == "<|im_end|>"
    assert text.eos[0] == text.tracked[0][-1]


def test_refam_end_to_end_on_klein(image):
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        method = RefAM.from_pretrained("tiny-random-flux2-t2i", device="cpu", parser="rules")
    method.set_image(image)
    [result] = method.predict(["the red dog on the left"])
    assert result.mask.shape == (64, 96) and result.maps["attention"].shape == (64, 96)
    assert result.prompt_tokens and all(t.strip() not in ("_", "with", "to", "and", "pink", "<|im_end|>") for t in result.prompt_tokens)
    assert result.model == "tiny-random-flux2-t2i"
