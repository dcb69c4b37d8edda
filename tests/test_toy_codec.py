"""The toy model's pixel codec: exact, local, and loadable by diffusers as klein's VAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.backbones.flux2 import MAX_SEQUENCE_LENGTH, Flux2KleinBackbone
from editseg.backbones.pixel_codec import PixelCodec
from editseg.toy.model import ToyConfig, build_toy_pipeline

TINY = ToyConfig(heads=2, head_dim=16, double_blocks=1, single_blocks=1, codec_downscale=2)  # 4 px tokens


@pytest.fixture(scope="module")
def pipeline():
    pipe = build_toy_pipeline(TINY, seed=0)
    generator = torch.Generator().manual_seed(1)
    pipe.vae.bn.running_mean.copy_(torch.randn(48, generator=generator))
    pipe.vae.bn.running_var.copy_(torch.rand(48, generator=generator) + 0.5)
    return pipe


def naive_tokens(pixels: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float) -> torch.Tensor:
    """Token (r, c) = its 4x4 pixel patch, channels ordered (latent channel = colour x 2x2 sub-pixel,
    then the pipeline's 2x2 patch), standardised with the BatchNorm statistics."""
    _, _, height, width = pixels.shape
    rows, cols = height // 4, width // 4
    out = torch.empty(rows * cols, 48, dtype=torch.float64)
    for r in range(rows):
        for c in range(cols):
            values = []
            for channel in range(3):
                for dy in range(2):
                    for dx in range(2):
                        for py in range(2):
                            for px in range(2):
                                values.append((channel * 4 + dy * 2 + dx, py * 2 + px,
                                               pixels[0, channel, 4 * r + 2 * py + dy, 4 * c + 2 * px + dx]))
            for latent_channel, patch_position, value in values:
                index = latent_channel * 4 + patch_position
                out[r * cols + c, index] = (value - mean[index]) / torch.sqrt(var[index] + eps)
    return out


def test_encode_decode_is_exact():
    codec = PixelCodec(downscale=2)
    x = torch.rand(2, 3, 8, 12) * 2 - 1
    latents = codec.encode(x).latent_dist.mode()
    assert latents.shape == (2, 12, 4, 6)
    assert torch.equal(codec.decode(latents, return_dict=False)[0], x)
    assert torch.equal(codec.decode(latents).sample, x)


def test_pipeline_tokens_equal_the_naive_patch_layout(pipeline):
    backbone = Flux2KleinBackbone(pipeline, name="toy-test")
    assert backbone.patch == 4
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8))
    prepared = backbone.prepare_image(image)
    pixels = prepared.tensors["pixels"].double()
    bn = pipeline.vae.bn
    expected = naive_tokens(pixels, bn.running_mean.double(), bn.running_var.double(), pipeline.vae.config.batch_norm_eps)
    torch.testing.assert_close(prepared.tensors["latents"][0].double(), expected, rtol=1e-5, atol=1e-5)


def test_a_local_change_changes_only_its_tokens(pipeline):
    backbone = Flux2KleinBackbone(pipeline, name="toy-test")
    array = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    edited = array.copy()
    edited[9:14, 17:19] = 0  # rows 2-3, column 4 of the 16x16 token grid
    before = backbone.prepare_image(Image.fromarray(array)).tensors["latents"][0]
    after = backbone.prepare_image(Image.fromarray(edited)).tensors["latents"][0]
    changed = (before != after).any(dim=-1).view(16, 16).nonzero().tolist()
    assert changed == [[2, 4], [3, 4]]


def test_saved_pipeline_loads_with_the_codec_and_text_length(pipeline, tmp_path):
    from diffusers import Flux2KleinPipeline

    pipeline.save_pretrained(tmp_path / "toy")
    loaded = Flux2KleinPipeline.from_pretrained(tmp_path / "toy")
    assert isinstance(loaded.vae, PixelCodec) and loaded.vae_scale_factor == 2
    assert torch.equal(loaded.vae.bn.running_mean, pipeline.vae.bn.running_mean)
    backbone = Flux2KleinBackbone(loaded, name="toy-test")
    assert backbone.max_sequence_length == TINY.text_length
    encoded = backbone.encode_text(["the red circle"], ["remove the red circle"])
    assert encoded.tensors["embeds"].shape[1] == TINY.text_length


def test_text_length_defaults_to_klein_512_without_a_declared_maximum(tiny_pipeline):
    assert Flux2KleinBackbone(tiny_pipeline, name="tiny").max_sequence_length == MAX_SEQUENCE_LENGTH


def test_codec_rejects_bad_settings():
    with pytest.raises(ValueError, match="power of two"):
        PixelCodec(downscale=3)
    with pytest.raises(ValueError, match="block_out_channels"):
        PixelCodec(downscale=2, block_out_channels=(8, 8, 8))


def test_decode_tokens_inverts_prepare_image(pipeline):
    """The pipeline's own decoding steps turn the clean tokens back into the input image."""
    backbone = Flux2KleinBackbone(pipeline, name="toy-test")
    array = np.random.default_rng(2).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    prepared = backbone.prepare_image(Image.fromarray(array))
    decoded = backbone.decode_tokens(prepared.tensors["latents"], prepared)
    assert len(decoded) == 1 and decoded[0].size == (96, 64)
    assert np.abs(np.asarray(decoded[0]).astype(int) - array).max() <= 1  # uint8 rounding only


def test_first_step_clean_estimate_is_noise_minus_velocity(pipeline):
    backbone = Flux2KleinBackbone(pipeline, name="toy-test")
    prepared = backbone.prepare_image(Image.new("RGB", (64, 64), (90, 20, 200)))
    text = backbone.encode_text(["the circle"], ["remove the circle"])
    estimate = backbone.first_step_clean_estimate(prepared, text, seed=3)
    inputs = backbone.first_step_inputs(prepared, text, seed=3)
    with torch.no_grad():
        velocity = pipeline.transformer(**inputs, return_dict=False)[0]
    noisy = inputs["hidden_states"][:, :256]
    torch.testing.assert_close(estimate, noisy - velocity[:, :256])
    assert estimate.shape == prepared.tensors["latents"].shape


def test_a_saved_toy_folder_loads_through_the_registry_in_a_fresh_process(pipeline, tmp_path):
    """diffusers imports a component's module only if it is already imported: the loader must do it."""
    import subprocess
    import sys

    pipeline.save_pretrained(tmp_path / "toy")
    code = (
        "import sys; from editseg.backbones import load_backbone; "
        f"b = load_backbone({str(tmp_path / 'toy')!r}, device='cpu'); "
        "assert 'editseg.backbones.pixel_codec' in sys.modules; print(type(b.pipeline.vae).__name__, b.max_sequence_length)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["PixelCodec", str(TINY.text_length)]
