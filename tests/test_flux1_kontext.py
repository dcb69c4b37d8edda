"""FLUX.1 Kontext backbone on a tiny random ``FluxKontextPipeline`` built in-process (no downloads).

The tiny pipeline uses the real classes: ``T5EncoderModel`` + ``T5TokenizerFast`` (a unigram
vocabulary trained here), ``CLIPTextModel`` + ``CLIPTokenizer`` (a BPE trained here), an
``AutoencoderKL`` with 8x downsampling (16 px per token, as the real VAE) and a
``FluxTransformer2DModel`` with guidance embedding, 2 double + 3 single blocks.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import diffusers.models.transformers.transformer_flux as flux_module
from editseg.backbones.flux1_kontext import FEATURE_BLOCK, FluxKontextBackbone
from editseg.backbones.tiny_flux1 import tiny_flux1_components
from editseg.images import load_image
from reference import attention_output, block_io_captures, capture_dispatch, expression_plan, naive_maps, transformer_calls

def build_tiny_kontext_pipeline(seed: int = 0):
    from diffusers import FluxKontextPipeline

    pipeline = FluxKontextPipeline(**tiny_flux1_components(seed))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


SMALL_AREA = 64 * 64  # the "pipeline" canvas of the small backbone: 64x64 px, 16 noisy tokens


@pytest.fixture(scope="module")
def kontext_pipeline():
    return build_tiny_kontext_pipeline()


@pytest.fixture(scope="module")
def small(kontext_pipeline):
    """No preferred-resolution snapping and a small default canvas, so that noisy != clean lengths."""
    return FluxKontextBackbone(
        kontext_pipeline, name="tiny-kontext", is_random=True, auto_resize=False, noisy_canvas="pipeline",
        max_area=SMALL_AREA,
    )


@pytest.fixture()
def image_96x64():
    rng = np.random.default_rng(1)
    return Image.fromarray((rng.random((64, 96, 3)) * 255).astype(np.uint8))


def pipeline_transformer_inputs(pipeline, image, prompt, seed, num_inference_steps=1, **kwargs):
    """Run the real pipeline and capture the keyword arguments of its last transformer call.

    With one step the transformer itself is skipped (its output only feeds the scheduler)."""
    skip = (lambda kw: (torch.zeros_like(kw["hidden_states"]),)) if num_inference_steps == 1 else None
    with transformer_calls(pipeline.transformer, answer=skip) as calls:
        pipeline(
            image=image,
            prompt=prompt,
            num_inference_steps=num_inference_steps,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="latent",
            **kwargs,
        )
    return calls[-1]


TENSOR_INPUTS = ("hidden_states", "timestep", "guidance", "pooled_projections", "encoder_hidden_states", "txt_ids", "img_ids")


def _assert_same_inputs(ours, reference):
    for name in TENSOR_INPUTS:
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("size", [(64, 64), (83, 70)])
def test_inputs_equal_the_pipelines_with_reference_canvas(kontext_pipeline, size):
    """No snapping: the pipeline floors the size to multiples of 16 and resizes; canvas = reference."""
    backbone = FluxKontextBackbone(kontext_pipeline, name="t", auto_resize=False)
    rng = np.random.default_rng(size[0])
    image = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    width, height = size[0] // 16 * 16, size[1] // 16 * 16
    expression = "the small red circle left of the star"
    instruction = f"remove {expression}"
    reference = pipeline_transformer_inputs(
        kontext_pipeline, image, instruction, 7, height=height, width=width, max_area=height * width, _auto_resize=False
    )
    prepared = backbone.prepare_image(load_image(image))
    text = backbone.encode_text([expression], [instruction])
    ours = backbone.first_step_inputs(prepared, text, seed=7)
    _assert_same_inputs(ours, reference)
    assert float(ours["timestep"][0]) == 1.0 and float(ours["guidance"][0]) == 3.5
    assert prepared.geometry.resized_size == (width, height) and prepared.geometry.grid == (height // 16, width // 16)

    layout = backbone.layout_for(prepared, text)
    assert layout.text_len == reference["encoder_hidden_states"].shape[1] == 512
    assert layout.noisy_len == layout.clean_len == reference["hidden_states"].shape[1] // 2
    torch.testing.assert_close(reference["hidden_states"][:, layout.clean_in_image_stream], prepared.tensors["latents"])
    ids = reference["img_ids"]
    assert (ids[: layout.noisy_len, 0] == 0).all() and (ids[layout.noisy_len :, 0] == 1).all()
    assert ids[layout.noisy_len :, 1].max() == layout.grid[0] - 1 and ids[layout.noisy_len :, 2].max() == layout.grid[1] - 1


def test_inputs_equal_the_pipelines_with_preferred_resolution_snapping(kontext_pipeline):
    """The default path: an 83x70 image is resized (not cropped) to the nearest Kontext bucket (~1 MP)."""
    backbone = FluxKontextBackbone(kontext_pipeline, name="t")
    rng = np.random.default_rng(3)
    image = Image.fromarray((rng.random((70, 83, 3)) * 255).astype(np.uint8))
    # 83x70 floors to 80x64 (aspect 1.25); the nearest bucket is 1104x944 (1.169; 1184x880 is 1.345).
    expected = (1104, 944)
    geometry = backbone.preprocess_geometry(image.size)
    assert geometry.resized_size == expected and geometry.crop == (0, 0, *expected)
    reference = pipeline_transformer_inputs(
        kontext_pipeline, image, "remove the dog", 0, height=expected[1], width=expected[0], max_area=expected[0] * expected[1]
    )
    prepared = backbone.prepare_image(load_image(image))
    ours = backbone.first_step_inputs(prepared, backbone.encode_text(["the dog"], ["remove the dog"]), seed=0)
    _assert_same_inputs(ours, reference)


def test_pipeline_canvas_mode_equals_a_bare_pipeline_call(small, kontext_pipeline, image_96x64):
    """``noisy_canvas="pipeline"``: the canvas the pipeline builds when no size is given."""
    reference = pipeline_transformer_inputs(
        kontext_pipeline, image_96x64, "remove the cat", 2, max_area=SMALL_AREA, _auto_resize=False
    )
    prepared = small.prepare_image(load_image(image_96x64))
    text = small.encode_text(["the cat"], ["remove the cat"])
    _assert_same_inputs(small.first_step_inputs(prepared, text, seed=2), reference)
    layout = small.layout_for(prepared, text)
    assert (layout.noisy_len, layout.clean_len, layout.grid) == (16, 24, (4, 6))


def test_later_step_inputs_follow_the_pipelines_sampler(small, kontext_pipeline, image_96x64):
    """step_index > 0 (paper Figs. 3-4): the pipeline's own schedule and Euler steps before the probe."""
    reference = pipeline_transformer_inputs(
        kontext_pipeline, image_96x64, "remove the cat", 4, num_inference_steps=3, max_area=SMALL_AREA, _auto_resize=False
    )
    prepared = small.prepare_image(load_image(image_96x64))
    ours = small.step_inputs(prepared, small.encode_text(["the cat"], ["remove the cat"]), 4, step_index=2, num_steps=3)
    for name in TENSOR_INPUTS:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-6, atol=1e-6, msg=name)
    assert float(ours["timestep"][0]) < 1.0


def test_preferred_resolutions_follow_the_aspect_ratio(kontext_pipeline):
    backbone = FluxKontextBackbone(kontext_pipeline, name="t")
    assert backbone.preprocess_geometry((1000, 1000)).resized_size == (1024, 1024)
    assert backbone.preprocess_geometry((3000, 2000)).resized_size == (1248, 832)
    assert backbone.preprocess_geometry((500, 1200)).resized_size == (672, 1568)
    shrunk = backbone.preprocess_geometry((3000, 2000), max_side=200)  # ours: bucket, then longer side <= 200
    assert shrunk.resized_size == (192, 128) and shrunk.grid == (8, 12)


def test_batch_shares_one_noise_draw(small, image_96x64):
    prepared = small.prepare_image(load_image(image_96x64))
    exprs = ["the dog", "a cat on the left"]
    both = small.first_step_inputs(prepared, small.encode_text(exprs, [f"remove {e}" for e in exprs]), 5)
    alone = small.first_step_inputs(prepared, small.encode_text(exprs[1:], [f"remove {exprs[1]}"]), 5)
    for name in ("hidden_states", "encoder_hidden_states", "pooled_projections", "guidance", "timestep"):
        torch.testing.assert_close(both[name][1:], alone[name], msg=name)


def test_expression_tokens_decode_to_the_expression(small):
    tokenizer = small.pipeline.tokenizer_2
    exprs = ["the small red circle left of the star", "zebra", "man in the blue shirt"]
    text = small.encode_text(exprs, [f"remove {e}" for e in exprs])
    for expression, prompt in zip(exprs, text.prompts):
        indices = prompt.indices("expression")
        assert tokenizer.decode([prompt.input_ids[i] for i in indices]) == expression
        for word in prompt.words:  # each word's own tokens decode to the word (a lone "▁" starts a word)
            assert tokenizer.decode([prompt.input_ids[i] for i in word.token_indices]) == word.text
        assert indices == list(range(indices[0], indices[-1] + 1))
        eos = prompt.input_ids.index(tokenizer.eos_token_id)
        assert indices[-1] < eos == prompt.num_real_tokens - 1  # </s> and padding excluded
        assert not set(prompt.indices("expression")) & set(range(prompt.num_real_tokens, 512))
        assert "remove" not in tokenizer.decode([prompt.input_ids[i] for i in indices])
        instruction = prompt.indices("instruction")
        assert tokenizer.decode([prompt.input_ids[i] for i in instruction]) == f"remove {expression}"


# -- probes ---------------------------------------------------------------------------------------
def capture_reference_qkv(store: list):
    """q, k, v as diffusers' own FluxAttnProcessor hands them to the attention kernel."""
    return capture_dispatch(flux_module, store)


def _inputs(backbone, expressions, image):
    prepared = backbone.prepare_image(load_image(image))
    return prepared, backbone.encode_text(expressions, [f"remove {e}" for e in expressions])


_plan = expression_plan


@pytest.mark.parametrize("route", ["lse", "fused", "separate"])
def test_probes_equal_naive_full_attention_on_every_block(small, image_96x64, route):
    image, text = _inputs(small, ["the red circle", "a big zebra on the left"], image_96x64)
    plan = _plan(small, image, text, route=route)
    assert plan.layout.noisy_len != plan.layout.clean_len
    inputs = small.first_step_inputs(image, text, seed=3)
    captured: list = []
    with torch.no_grad(), capture_reference_qkv(captured):
        small.pipeline.transformer(**inputs, return_dict=False)
    assert len(captured) == small.num_blocks == 5
    assert all(mask is None for *_, mask in captured)  # FLUX.1 Kontext attends without a mask

    recorder = small.probe_forward(image, text, plan, seed=3)
    assert sorted(recorder.cam) == list(range(small.num_blocks))
    for block, (q, k, _, _) in enumerate(captured):
        assert q.shape[1] == plan.layout.total_len
        cam_ref, ram_ref = naive_maps(q, k, plan.layout, plan.prompt_mask)
        torch.testing.assert_close(recorder.cam[block].double(), cam_ref, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(recorder.ram[block].double(), ram_ref, rtol=1e-5, atol=1e-7)


def test_feature_sites_match_independent_captures(small, image_96x64):
    image, text = _inputs(small, ["the red circle"], image_96x64)
    blocks = frozenset(range(small.num_blocks))
    plan = _plan(small, image, text, {"attn": blocks, "adaln": blocks, "block": blocks})
    layout = plan.layout
    inputs = small.first_step_inputs(image, text, seed=0)
    transformer = small.pipeline.transformer
    all_blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
    captured = []
    with torch.no_grad(), capture_reference_qkv(captured), block_io_captures(all_blocks) as io:
        transformer(**inputs, return_dict=False)
    attn_inputs, block_outputs = io

    recorder = small.probe_forward(image, text, plan, seed=0)
    for index in range(small.num_blocks):
        is_double = index < small.num_double_blocks
        av = attention_output(*captured[index][:3])[:, layout.clean]
        torch.testing.assert_close(recorder.features[("attn", index)].double(), av, rtol=1e-4, atol=1e-5)
        rows = layout.clean_in_image_stream if is_double else layout.clean
        torch.testing.assert_close(recorder.features[("adaln", index)], attn_inputs[index][:, rows])
        torch.testing.assert_close(recorder.features[("block", index)], block_outputs[index][1][:, layout.clean_in_image_stream])


def test_other_attention_processors_are_refused(small, image_96x64):
    from editseg.errors import UnsupportedModelError

    class CustomProcessor(flux_module.FluxAttnProcessor):
        pass

    attn = small.pipeline.transformer.single_transformer_blocks[0].attn
    original = attn.processor
    attn.processor = CustomProcessor()
    try:
        image, text = _inputs(small, ["cat"], image_96x64)
        with pytest.raises(UnsupportedModelError, match="FluxAttnProcessor"):
            small.probe_forward(image, text, _plan(small, image, text))
    finally:
        attn.processor = original
    assert all(type(b.attn.processor) is flux_module.FluxAttnProcessor for b in small.pipeline.transformer.transformer_blocks)


# -- API, defaults, registry ------------------------------------------------------------------------
def test_segmenter_end_to_end(kontext_pipeline):
    from editseg import MethodConfig, Segmenter

    # Default resize rule (96x64 snaps to the 1248x832 bucket), then our max_side shrinks it to 96x64.
    backbone = FluxKontextBackbone(kontext_pipeline, name="tiny-kontext", is_random=True, default_max_side=96)
    rng = np.random.default_rng(0)
    image = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batched = Segmenter(backbone, batch_size=2)
        one = Segmenter(backbone, batch_size=1)
    exprs = ["the red circle", "zebra"]
    results = batched.segment(image, exprs)
    alone = one.segment(image, exprs)
    for result, single in zip(results, alone):
        assert result.mask.shape == result.cam.shape == result.ram.shape == (64, 96)
        assert result.cam_tokens.shape == (4, 6)  # 1248x832 bucket shrunk to 96x64, 16 px per token
        assert result.ram_tokens.max() == pytest.approx(1.0) and result.ram_tokens.min() == 0.0
        np.testing.assert_allclose(result.ram_tokens, single.ram_tokens, atol=1e-5)
    assert results[0].instruction == "remove the red circle"
    assert "".join(results[0].prompt_tokens) == "theredcircle"  # offsets of T5 tokens carry no spaces
    assert results[0].config["feature_block"] == backbone.default_feature_block == 4  # 40/57 of 5 blocks
    batched.set_image(image)
    ram = batched.predict("the dog", MethodConfig(mode="ram"))[0]
    np.testing.assert_array_equal(ram.mask, ram.ram > 0.5)
    single = batched.predict("the dog", MethodConfig(mode="ram", attention_blocks="single"))[0]
    assert not np.allclose(single.ram_tokens, ram.ram_tokens)
    later = batched.predict("the dog", MethodConfig(mode="ram", timestep_index=1, num_inference_steps=2))[0]
    assert later.ram_tokens.shape == (4, 6) and not np.allclose(later.ram_tokens, ram.ram_tokens)


def test_default_feature_block_is_40_on_the_real_layout(small):
    real_layout = object.__new__(FluxKontextBackbone)
    real_layout.num_double_blocks, real_layout.num_single_blocks = 19, 38
    assert real_layout.default_feature_block == FEATURE_BLOCK == 40


def test_registry_knows_flux1_kontext(monkeypatch, tmp_path, kontext_pipeline):
    from editseg.backbones import aliases, known_models, load_backbone
    from editseg.errors import ModelNotFoundError

    assert aliases()["flux1-kontext"] == "black-forest-labs/FLUX.1-Kontext-dev"
    assert "planned" not in known_models()["flux1-kontext"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        load_backbone("flux1-kontext", device="cpu")
    assert "black-forest-labs/FLUX.1-Kontext-dev" in str(info.value) and "FLUX.1 Kontext" in str(info.value)

    folder = tmp_path / "FLUX.1-Kontext-tiny"
    kontext_pipeline.save_pretrained(folder)
    loaded = load_backbone(str(folder), device="cpu", dtype=torch.float32)
    assert isinstance(loaded, FluxKontextBackbone) and loaded.num_blocks == 5
    ours = loaded.encode_text(["the dog"], ["remove the dog"])
    expected = FluxKontextBackbone(kontext_pipeline, name="t").encode_text(["the dog"], ["remove the dog"])
    for name in ("embeds", "pooled", "ids"):
        torch.testing.assert_close(ours.tensors[name], expected.tensors[name])
