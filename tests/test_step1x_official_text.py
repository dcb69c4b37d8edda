"""Step1X-Edit's text conditioning and VAE latent as the official v1.0 code computes them (issue 13 §4).

Three facts about the official code (stepfun-ai/Step1X-Edit, ``modules/conditioner.py``,
``modules/autoencoder.py``) under its pinned transformers 4.49, each checked here against a plain
transcription written in this file, on the tiny random pipeline:

1. its ``apply_chat_template(..., add_vision_id=True)`` keyword is dropped by transformers 4.49, so
   the chat text has no "Picture 1: " before the vision tokens;
2. Qwen2.5-VL gives the image tokens 3-D (t, h, w) positions (``reference_vlm``); transformers 5
   builds them only when given ``mm_token_type_ids``;
3. the autoencoder samples its posterior: ``mean + exp(logvar / 2) * randn_like(mean)``.
4. its VLM mask ``ids > 0`` makes "!" (Qwen token id 0) padding: under FlashAttention-2 no token
   attends to it, it takes no position and its own attention output is zero in every layer.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.backbones.step1x.backbone import Step1XEditBackbone
from editseg.errors import ConfigError
from editseg.backbones.step1x.pipeline import PREFIX, pack_latents, unit_pixels, vlm_inputs
from reference_vlm import reference_mrope_positions, rotary_positions

INSTRUCTION = 'remove the man\'s "red" hat and the dog'  # quotes after character 155: piecewise tokens


@pytest.fixture(scope="module")
def backbone():
    from editseg.backbones.step1x.tiny import build_tiny_step1x_pipeline

    return Step1XEditBackbone(build_tiny_step1x_pipeline(seed=0), name="tiny-step1x", is_random=True)


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((50, 70, 3)) * 255).astype(np.uint8))


# -- reference transcriptions -----------------------------------------------------------------------
def official_chat_text(instruction: str) -> str:
    """The official chat text under transformers 4.49: default system turn, one user turn
    [prefix, image, instruction] with no vision id, then the generation prompt."""
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        + PREFIX
        + "<|vision_start|><|image_pad|><|vision_end|>"
        + instruction
        + "<|im_end|>\n<|im_start|>assistant\n"
    )


def official_pieces(text: str) -> list[str]:
    """The embedder's inner ``split_string``: quotes normalised (curly → straight, apostrophe →
    double); from index 156 on a double quote ends the running piece when it opens a quotation,
    and each quoted character becomes its own piece wrapped in curly quotes."""
    text = text.replace("“", '"').replace("”", '"').replace("'", '"')
    out, running, inside = [], "", False
    for position, character in enumerate(text):
        if character == '"' and position > 155:
            running += character
            if not inside:
                out.append(running)
                running = ""
            inside = not inside
        elif inside:
            out.append("“" + character + "”")
        else:
            running += character
    return out + ([running] if running else [])


def official_input_ids(processor, instruction: str, view: Image.Image) -> torch.Tensor:
    """The official ids: the processor's ids up to the vision end, then the piecewise ids from the
    vision end on (a piece tokenised as “ ... ” loses both curly-quote tokens)."""
    text = official_chat_text(instruction)
    tokenizer = processor.tokenizer
    whole = processor(text=[text], images=[view], padding=True, return_tensors="pt")["input_ids"][0].tolist()
    open_quote, close_quote = tokenizer.convert_tokens_to_ids(["“", "”"])
    pieces = []
    for piece in official_pieces(text):
        ids = tokenizer(piece)["input_ids"]
        if ids[0] == open_quote and ids[-1] == close_quote:
            ids = ids[1:-1]
        pieces.extend(ids)
    vision_end = tokenizer.convert_tokens_to_ids("<|vision_end|>")
    spliced = whole[: whole.index(vision_end)] + pieces[pieces.index(vision_end) :]
    return torch.tensor([spliced])


def official_sampled_latents(vae, pixels: torch.Tensor, seed: int) -> torch.Tensor:
    """The official encode: encoder moments → mean + exp(logvar / 2) * randn_like (global RNG,
    here seeded) → (z - shift) * scale, then the 2x2 packing."""
    with torch.no_grad():
        moments = vae.encoder(pixels * 2 - 1)
        if vae.quant_conv is not None:
            moments = vae.quant_conv(moments)
    channels = moments.shape[1] // 2
    mean, logvar = moments[:, :channels], moments[:, channels:]
    torch.manual_seed(seed)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    return pack_latents((z - vae.config.shift_factor) * vae.config.scaling_factor)


# -- 1. the token sequence ----------------------------------------------------------------------------
def test_token_sequence_is_the_official_one(backbone, photo):
    pipe = backbone.pipeline
    view = backbone.prepare_image(photo).tensors["vlm_image"]
    processor = copy.deepcopy(pipe.processor)
    processor.tokenizer.add_tokens(["“", "”"])  # one token each, as in Qwen's vocab: exercises the stripping
    expected = official_input_ids(processor, INSTRUCTION, view)
    ours = vlm_inputs(processor, INSTRUCTION, view)
    assert ours.text == official_chat_text(INSTRUCTION)
    assert ours.input_ids.tolist() == expected.tolist()
    assert torch.equal(ours.attention_mask, (expected > 0).long())
    tokenizer = processor.tokenizer
    vision_start = tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert ours.input_ids[0, pipe.drop_tokens] == vision_start  # the DiT's text stream opens on the image
    # quoted characters are one piece each: "red" costs at least 3 tokens, more than unquoted
    assert ours.input_ids.shape[1] > vlm_inputs(processor, "remove the mans red hat and the dog", view).input_ids.shape[1]

    # the transformers >= 4.56 rendering differs exactly by "Picture 1: "
    with_id = vlm_inputs(processor, INSTRUCTION, view, add_vision_id=True)
    assert "User Prompt:Picture 1: <|vision_start|>" in with_id.text and "Picture" not in ours.text
    picture = tokenizer("Picture 1: ")["input_ids"]
    at = pipe.drop_tokens
    assert with_id.input_ids[0, at : at + len(picture)].tolist() == picture
    assert with_id.input_ids[0, at + len(picture) :].tolist() == ours.input_ids[0, at:].tolist()


def test_backbone_encodes_the_official_text(backbone, photo):
    pipe = backbone.pipeline
    prepared = backbone.prepare_image(photo)
    text = backbone.encode_text(["the dog"], ["remove the dog"], prepared)
    official = official_input_ids(pipe.processor, "remove the dog", prepared.tensors["vlm_image"])[0]
    stream = official[pipe.drop_tokens :]
    assert text.prompts[0].input_ids[: len(stream)] == stream.tolist()
    assert int(text.tensors["mask"][0].sum()) == len(stream)


# -- 2. the 3-D positions ---------------------------------------------------------------------------
def test_vlm_gets_3d_image_positions(backbone, photo):
    pipe = backbone.pipeline
    prepared = backbone.prepare_image(photo)
    inputs = vlm_inputs(pipe.processor, "remove the dog", prepared.tensors["vlm_image"])
    config = pipe.text_encoder.config
    grid = [tuple(int(x) for x in row) for row in inputs.image_grid_thw]
    merge = config.vision_config.spatial_merge_size
    assert grid[0][1] // merge > 1 and grid[0][2] // merge > 1  # a real 2-D image grid
    reference = reference_mrope_positions(inputs.input_ids[0].tolist(), config.image_token_id, grid, merge)

    positions, (embeds, _) = rotary_positions(pipe.text_encoder, lambda: pipe.encode_prompt(inputs))
    assert positions.shape == (3, 1, inputs.input_ids.shape[1])
    assert torch.equal(positions[:, 0].cpu(), reference)
    # the rows differ on the image tokens only; the last position is below the sequence length
    image = inputs.input_ids[0] == config.image_token_id
    assert not torch.equal(reference[1], reference[2]) and torch.equal(reference[0, ~image], reference[1, ~image])
    assert int(reference.max()) < inputs.input_ids.shape[1] - 1

    # the embeddings are those of the VLM run at exactly these positions
    with torch.no_grad():
        explicit = pipe.text_encoder(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values,
            image_grid_thw=inputs.image_grid_thw, position_ids=reference[:, None], output_hidden_states=True,
        ).hidden_states[-1][0, pipe.drop_tokens :]
    torch.testing.assert_close(embeds[: explicit.shape[0]], explicit, rtol=0, atol=0)

    # without mm_token_type_ids transformers 5 falls back to 1-D positions, and the embeddings move
    flat, (fallback, _) = rotary_positions(pipe.text_encoder, lambda: pipe.encode_prompt(inputs, mrope=False))
    assert torch.equal(flat[0, 0].cpu(), torch.arange(inputs.input_ids.shape[1]))
    assert not torch.allclose(fallback, embeds)


def test_backbone_default_uses_3d_positions(backbone, photo):
    prepared = backbone.prepare_image(photo)
    default = backbone.encode_text(["the dog"], ["remove the dog"], prepared).tensors["embeds"]
    backbone.mrope = False
    try:
        flat = backbone.encode_text(["the dog"], ["remove the dog"], prepared).tensors["embeds"]
    finally:
        backbone.mrope = True
    assert not torch.allclose(default, flat)


# -- 3. the VAE latent ------------------------------------------------------------------------------
def test_vae_latent_sampling_matches_the_official_draw(backbone, photo):
    pipe = backbone.pipeline
    pixels = unit_pixels(photo.resize((64, 48)))[None]
    sampled = pipe.encode_image(pixels, sample=True, seed=11)
    torch.testing.assert_close(sampled, official_sampled_latents(pipe.vae, pixels, seed=11), rtol=1e-6, atol=1e-6)
    assert torch.equal(pipe.encode_image(pixels, sample=True, seed=11), sampled)  # seeded: reproducible
    assert not torch.allclose(pipe.encode_image(pixels, sample=True, seed=12), sampled)
    mean = pipe.encode_image(pixels)
    with torch.no_grad():
        mode = pipe.vae.encode(pixels * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(mean, pack_latents((mode - 0.1159) * 0.3611), rtol=0, atol=0)
    assert not torch.allclose(mean, sampled)


def test_backbone_vae_latent_switch(backbone, photo):
    default = backbone.prepare_image(photo).tensors["latents"]
    backbone.vae_latent, backbone.vae_seed = "sample", 5
    try:
        sampled = backbone.prepare_image(photo).tensors["latents"]
        backbone.vae_latent = "median"
        with pytest.raises(ConfigError, match="vae_latent"):
            backbone.prepare_image(photo)
    finally:
        backbone.vae_latent, backbone.vae_seed = "mean", 0
    pixels = unit_pixels(photo.resize(backbone.prepare_image(photo).geometry.resized_size))[None]
    torch.testing.assert_close(sampled, official_sampled_latents(backbone.pipeline.vae, pixels, seed=5), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(default, sampled)


# -- 4. "!" (token id 0) ------------------------------------------------------------------------------
# The official embedder masks ``input_ids > 0`` and runs the VLM with FlashAttention-2 (transformers
# 4.49). A 0 inside that mask is padding to flash attention: the sequence is un-padded (only the
# unmasked tokens go through a causal varlen attention) and the result is padded back with zeros;
# ``get_rope_index`` numbers the unmasked tokens only and leaves the masked ones at position 1.
BANG = "remove the dog! now!"
BANG_QUOTED = 'remove the "red!" hat'  # quotes far after character 155: "!" is a piece of its own


def official_varlen_attention(keep: torch.Tensor):
    """FlashAttention-2 on an un-padded sequence, written out: causal softmax attention among the
    kept tokens only, zeros at the dropped ones. (B=1; heads of keys/values shared by groups.)"""
    index = keep[0].nonzero()[:, 0]

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        q, k, v = query[:, :, index], key[:, :, index], value[:, :, index]
        scores = (q @ k.transpose(-1, -2)) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
        causal = torch.ones(len(index), len(index), dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        out = torch.zeros_like(query)
        out[:, :, index] = scores.softmax(dim=-1) @ v
        return out.transpose(1, 2), None

    return attention


def official_embeddings(pipe, ids: torch.Tensor, pixel_values, grid_thw) -> torch.Tensor:
    """The official last hidden states from token 217 on: mask ids > 0, positions of the kept tokens
    from the M-RoPE walk (dropped ones at 1), attention as :func:`official_varlen_attention`."""
    from transformers import AttentionInterface

    encoder = pipe.text_encoder
    config = encoder.config
    keep = ids > 0
    kept = ids[0][keep[0]].tolist()
    grids = [tuple(int(x) for x in row) for row in grid_thw]
    positions = torch.ones(3, 1, ids.shape[1], dtype=torch.long)
    positions[:, 0, keep[0]] = reference_mrope_positions(kept, config.image_token_id, grids, config.vision_config.spatial_merge_size)
    AttentionInterface.register("test-official-varlen", official_varlen_attention(keep))
    text_config = encoder.config.get_text_config()
    previous = text_config._attn_implementation
    text_config._attn_implementation = "test-official-varlen"
    try:
        with torch.no_grad():
            hidden = encoder(
                input_ids=ids, attention_mask=keep.long(), pixel_values=pixel_values, image_grid_thw=grid_thw,
                position_ids=positions, output_hidden_states=True,
            ).hidden_states[-1][0, pipe.drop_tokens :]
    finally:
        text_config._attn_implementation = previous
    return hidden


@pytest.mark.parametrize("instruction", [BANG, BANG_QUOTED])
def test_exclamation_is_padding_as_in_the_official_code(backbone, photo, instruction):
    pipe = backbone.pipeline
    view = backbone.prepare_image(photo).tensors["vlm_image"]
    ids = official_input_ids(pipe.processor, instruction, view)
    assert (ids == 0).any() and pipe.processor.tokenizer.convert_ids_to_tokens(0) == "!"
    ours = vlm_inputs(pipe.processor, instruction, view)
    assert ours.input_ids.tolist() == ids.tolist()
    assert torch.equal(ours.attention_mask, (ids > 0).long())

    reference = official_embeddings(pipe, ids, ours.pixel_values, ours.image_grid_thw)
    embeds, mask = pipe.encode_prompt(ours)
    length = ids.shape[1] - pipe.drop_tokens
    assert mask.tolist() == [1] * length + [0] * (pipe.max_length - length)  # the DiT mask keeps "!"
    torch.testing.assert_close(embeds[:length], reference, rtol=1e-4, atol=1e-5)
    assert not embeds[length:].any()

    # the cause of the old one-position difference: the ids > 0 mask alone, with eager/SDPA
    # attention, lets the "!" query attend; only the "!" rows then differ from the official ones
    with torch.no_grad():
        plain = pipe.text_encoder(
            input_ids=ours.input_ids, attention_mask=ours.attention_mask, pixel_values=ours.pixel_values,
            image_grid_thw=ours.image_grid_thw, mm_token_type_ids=(ours.input_ids == pipe.text_encoder.config.image_token_id).int(),
            output_hidden_states=True,
        ).hidden_states[-1][0, pipe.drop_tokens :]
    bang = ids[0, pipe.drop_tokens :] == 0
    torch.testing.assert_close(plain[~bang], reference[~bang], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain[bang], reference[bang], atol=1e-3)

    # the switch: "!" as an ordinary token (all-ones mask) differs on the "!" rows and after them
    ordinary, ordinary_mask = pipe.encode_prompt(ours, id_zero_padding=False)
    assert torch.equal(ordinary_mask, mask)
    first = int(bang.nonzero()[0, 0])
    assert not torch.allclose(ordinary[first], reference[first], atol=1e-3)
    assert not torch.allclose(ordinary[first + 1 : length], reference[first + 1 :], atol=1e-3)
    torch.testing.assert_close(ordinary[:first], reference[:first], rtol=1e-4, atol=1e-5)


def test_exclamation_switch_on_the_backbone(backbone, photo):
    prepared = backbone.prepare_image(photo)
    default = backbone.encode_text(["the dog"], [BANG], prepared).tensors
    plain = backbone.encode_text(["the dog"], ["remove the dog"], prepared).tensors
    backbone.set_switches({"id_zero_padding": "false"})
    try:
        ordinary = backbone.encode_text(["the dog"], [BANG], prepared).tensors
        same = backbone.encode_text(["the dog"], ["remove the dog"], prepared).tensors
    finally:
        backbone.set_switches({"id_zero_padding": True})
    assert torch.equal(default["mask"], ordinary["mask"])
    assert not torch.allclose(default["embeds"], ordinary["embeds"])
    assert torch.equal(plain["embeds"], same["embeds"]) and torch.equal(plain["mask"], same["mask"])  # no "!": no change
