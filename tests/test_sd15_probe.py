"""SD 1.5 backbone and its cross-attention probes on a tiny random pipeline of the real classes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.backbones.sd15 import (
    TINY_SD15,
    SquareFrame,
    StableDiffusion15,
    chars_to_tokens,
    map_to_input,
    pad_to_square,
    token_ids,
)
from editseg.errors import UnsupportedModelError
from editseg.probing.cross_attention import CrossAttentionRecorder, probing_cross_attention, token_attention


@pytest.fixture(scope="module")
def sd():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return StableDiffusion15.from_pretrained(TINY_SD15, device="cpu")


@pytest.fixture(scope="module")
def square(sd):
    image = Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8))
    return sd.prepare_image(image)[0]


class ReferenceProcessor:
    """Full-softmax reference inside the UNet's own attention: diffusers' ``AttnProcessor`` path
    (``attn.get_attention_scores``, the explicit (pixels x tokens) probabilities), recording column k."""

    def __init__(self, store, token_index, logits=False):
        from diffusers.models.attention_processor import AttnProcessor

        self.inner, self.store, self.token_index, self.logits = AttnProcessor(), store, token_index, logits

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        if self.logits:
            probs = (q @ k.transpose(-1, -2)) * attn.scale
        else:
            probs = attn.get_attention_scores(q, k, None)  # (B*H, N, L)
        probs = probs.reshape(-1, attn.heads, *probs.shape[1:]).mean(1)  # (B, N, L)
        cols = torch.stack([probs[b, :, self.token_index[b]] for b in range(probs.shape[0])])  # (B, N, T)
        self.store.setdefault(probs.shape[1], []).append(cols.transpose(1, 2))
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def _reference_run(unet, sample, t, context, token_index, logits=False):
    store: dict = {}
    originals = {}
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            originals[name] = module.processor
            module.processor = ReferenceProcessor(store, token_index, logits)
    try:
        out = unet(sample, t, encoder_hidden_states=context).sample
    finally:
        for name, module in unet.named_modules():
            if name in originals:
                module.processor = originals[name]
    return out, store


@pytest.mark.parametrize("mode", ["softmax", "logits"])
def test_probe_matches_full_softmax_reference(sd, mode):
    unet = sd.pipeline.unet
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 16, 12)
    context = torch.randn(2, 77, 32)
    token_index = torch.tensor([[3, 5], [1, 1]])
    t = torch.tensor(51)
    with torch.no_grad():
        plain = unet(sample, t, encoder_hidden_states=context).sample
        ref_out, store = _reference_run(unet, sample, t, context, token_index, logits=mode == "logits")
        recorder = CrossAttentionRecorder(token_index=token_index, latent_size=(16, 12), mode=mode)
        with probing_cross_attention(unet, recorder):
            probed = unet(sample, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(probed, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref_out, plain, atol=1e-5, rtol=1e-5)
    sizes = {0: (16, 12), 1: (8, 6), 2: (4, 3)}
    assert sorted(recorder.counts) == [0, 1, 2]
    for level, (rows, cols) in sizes.items():
        expected = torch.stack(store[rows * cols]).mean(0).reshape(2, 2, rows, cols)
        torch.testing.assert_close(recorder.mean(level), expected, atol=1e-5, rtol=1e-4)
    # the original processors are back
    from diffusers.models.attention_processor import AttnProcessor2_0

    assert all(type(m.processor) is AttnProcessor2_0 for n, m in unet.named_modules() if n.endswith("attn2"))


def test_token_attention_wide_token_sets():
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 9, 4)
    index = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]])  # more tokens than head channels
    probs = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1).mean(1)  # (1, 5, 9)
    torch.testing.assert_close(token_attention(q, k, index), probs[:, :, :8].transpose(1, 2), atol=1e-6, rtol=1e-5)


def test_levels_filter_and_errors(sd):
    recorder = CrossAttentionRecorder(token_index=torch.tensor([[1]]), latent_size=(8, 8), levels=frozenset({1}))
    assert recorder.grid_for(64) == (0, (8, 8)) and recorder.grid_for(16) == (1, (4, 4)) and recorder.grid_for(7) is None
    with pytest.raises(KeyError):
        recorder.mean(0)
    with pytest.raises(ValueError):
        CrossAttentionRecorder(token_index=torch.tensor([[1]]), latent_size=(8, 8), mode="nope")
    from diffusers.models.attention_processor import AttnProcessor

    unet = sd.pipeline.unet
    name, module = next((n, m) for n, m in unet.named_modules() if n.endswith("attn2"))
    original = module.processor
    module.processor = AttnProcessor()
    try:
        with pytest.raises(UnsupportedModelError):
            with probing_cross_attention(unet, recorder):
                pass
    finally:
        module.processor = original


def test_img2img_parity(sd, square):
    """Same generator: the probed loop's latents equal StableDiffusionImg2ImgPipeline's (strength t/steps)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    p = sd.pipeline
    generator = torch.Generator().manual_seed(7)
    latents = sd.encode_image(square, generator)
    prompt, negative = sd.encode_prompts(["the black horse"], True)
    recorder = CrossAttentionRecorder(token_index=torch.tensor([[2], [2]]), latent_size=tuple(latents.shape[-2:]))
    ours = sd.probe(latents, prompt, negative, recorder, steps=2, num_inference_steps=20, guidance_scale=9.0, generator=generator)
    img2img = StableDiffusionImg2ImgPipeline(
        vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
        scheduler=type(sd.scheduler).from_config(p.scheduler.config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    img2img.set_progress_bar_config(disable=True)
    ref = img2img("the black horse", image=square, strength=0.1, num_inference_steps=20, guidance_scale=9.0,
                  generator=torch.Generator().manual_seed(7), output_type="latent", eta=0.0).images
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert recorder.counts[0] == 2 * 3  # 2 steps x (1 down + 2 up cross-attention layers at level 0)


def test_text_latents_and_timesteps_parity(sd, square):
    p = sd.pipeline
    prompt, negative = sd.encode_prompts(["a red car"], True)
    ids = p.tokenizer(["a red car"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        manual = p.text_encoder(ids).last_hidden_state
        empty = p.text_encoder(p.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids).last_hidden_state
    torch.testing.assert_close(prompt, manual)
    torch.testing.assert_close(negative, empty)
    # latent scaling: posterior sample times the VAE scaling factor, img2img's retrieve_latents order
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    pixels = p.image_processor.preprocess(square)
    with torch.no_grad():
        expected = p.vae.encode(pixels).latent_dist.sample(g2) * p.vae.config.scaling_factor
    torch.testing.assert_close(sd.encode_image(square, g1), expected)
    # DDIM 'leading' spacing with steps_offset 1 (SD 1.5's scheduler config): t=2 of 20 -> 51, 1
    assert sd.timesteps(20, 2).tolist() == [51, 1]
    assert sd.timesteps(50, 3).tolist() == [41, 21, 1]


def test_square_frame_and_map_to_input():
    image = Image.fromarray(np.full((30, 50, 3), 200, np.uint8))
    square, frame = pad_to_square(image)
    assert square.size == (50, 50) and frame == SquareFrame(50, 30, 50, 0, 10)
    arr = np.asarray(square)
    assert (arr[:10] == 0).all() and (arr[10:40] == 200).all() and (arr[40:] == 0).all()
    token_map = torch.rand(5, 5)
    full = torch.nn.functional.interpolate(token_map[None, None], size=(50, 50), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(map_to_input(token_map, frame), full[10:40])


def test_token_spans(sd):
    ids, offsets = token_ids(sd.tokenizer, "the man on the left")
    assert ids[0] == sd.tokenizer.bos_token_id and ids[-1] == sd.tokenizer.eos_token_id
    tokens = sd.tokenizer.convert_ids_to_tokens(ids)
    man = chars_to_tokens(offsets, 4, 7)
    assert "".join(tokens[i] for i in man).replace("</w>", "") == "man"
    assert 0 not in man and len(ids) - 1 not in man


@pytest.mark.parametrize("mode", ["softmax", "logits"])
def test_guidance_combines_halves_before_normalising(mode):
    torch.manual_seed(2)
    q, k = torch.randn(4, 2, 16, 8), torch.randn(4, 2, 7, 8)
    index = torch.tensor([[3], [4], [3], [4]])
    plain = CrossAttentionRecorder(token_index=index, latent_size=(4, 4), mode=mode)
    plain.record(q, k)
    guided = CrossAttentionRecorder(token_index=index, latent_size=(4, 4), mode=mode, guidance=9.0, normalize_each=True)
    guided.record(q, k)
    u, c = plain.mean(0).chunk(2)
    expected = u + 9.0 * (c - u) if mode == "logits" else c
    flat = expected.flatten(2)
    expected = ((flat - flat.amin(-1, keepdim=True)) / (flat.amax(-1, keepdim=True) - flat.amin(-1, keepdim=True))).reshape(expected.shape)
    torch.testing.assert_close(guided.mean(0), expected, atol=1e-5, rtol=1e-5)


def test_loads_a_saved_folder(tmp_path, sd, square):
    sd.pipeline.save_pretrained(tmp_path)
    loaded = StableDiffusion15.from_pretrained(str(tmp_path), device="cpu")
    assert loaded.image_side == 1024 and not loaded.is_random
    prompt, _ = loaded.encode_prompts(["a red car"], False)
    torch.testing.assert_close(prompt, sd.encode_prompts(["a red car"], False)[0])
    from editseg.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="Stable Diffusion"):
        StableDiffusion15.from_pretrained(str(tmp_path / "missing"), device="cpu")
