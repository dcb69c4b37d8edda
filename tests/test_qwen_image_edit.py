"""Qwen-Image-Edit backbone on tiny random pipelines built in-process (no downloads).

The pipelines are the real diffusers classes (``QwenImageEditPipeline``, ``QwenImageEditPlusPipeline``)
with tiny components: a ``Qwen2_5_VLForConditionalGeneration`` (2-layer vision tower and text
model), the real ``Qwen2Tokenizer`` built from a BPE vocab trained in-process, the real
``Qwen2VLProcessor`` over the PIL ``Qwen2VLImageProcessorPil``, a 2x ``AutoencoderKLQwenImage`` and
a 3-block ``QwenImageTransformer2DModel``. The pipelines' 1 MP target area is shrunk to 64² (and the
Plus pipeline's 384² VLM area to 56²) by patching the area argument of their
``calculate_dimensions``; the backbone is given the same areas.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

import diffusers.models.transformers.transformer_qwenimage as qwen_module
import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as edit_module
import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus_module
from editseg.backbones.qwen_image_edit import QwenImageEditBackbone
from editseg.errors import ConfigError
from editseg.images import load_image
from reference import attention_output, block_io_captures, capture_dispatch, expression_plan, naive_maps, transformer_calls
from reference_vlm import reference_mrope_positions, rotary_positions

TINY_AREA = 64 * 64  # stands in for 1024 * 1024
TINY_CONDITION_AREA = 56 * 56  # stands in for 384 * 384 (Plus pipeline)
SYSTEM = (
    "Describe the key features of the input image (color, shape, size, texture, objects, background), then "
    "explain how the user's text instruction should alter or modify the image. Generate a new image that meets "
    "the user's requirements while maintaining consistency with the original input where appropriate."
)
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
WORDS = """remove the man in the red shirt on the left zebra right woman with a blue umbrella small large
big circle square star dog cat car bus person near far above below behind front top bottom middle Picture
from and keep background system user assistant""".split()


def tiny_qwen_tokenizer():
    """The real ``Qwen2Tokenizer`` (Qwen2 pre-tokenizer, byte-level BPE) over an in-process vocab."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    # Role names start a line after a special token: train them so, as in Qwen's vocab (one token each).
    backend.train_from_iterator([SYSTEM, " ".join(WORDS), "system", "user", "assistant"] * 8, trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS})
    return tokenizer


def tiny_qwen_processor(tokenizer):
    """The real ``Qwen2VLProcessor``. Its constructor type-checks an (absent) video processor against
    a torchvision-only class; torchvision is not installed here, so that check alone is skipped."""
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    with mock.patch.object(Qwen2VLProcessor, "check_argument_for_proper_class", lambda self, name, arg: type(arg)):
        return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_tiny_qwen_edit_pipeline(plus: bool = False, seed: int = 0):
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = tiny_qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            bos_token_id=None,
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, window_size=56, fullatt_block_indexes=[1]
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[False],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 0.7, 1.1, 0.9],
    ).eval()
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    pipeline = cls(
        # Qwen-Image's scheduler settings: dynamic exponential shift, terminal sigma stretch.
        scheduler=FlowMatchEulerDiscreteScheduler(
            base_image_seq_len=256,
            base_shift=0.5,
            max_image_seq_len=8192,
            max_shift=0.9,
            shift_terminal=0.02,
            time_shift_type="exponential",
            use_dynamic_shifting=True,
        ),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=tiny_qwen_processor(tokenizer),
        transformer=transformer,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _backbone(pipeline) -> QwenImageEditBackbone:
    return QwenImageEditBackbone(
        pipeline, name="tiny-qwen-image-edit", is_random=True, vae_area=TINY_AREA, condition_area=TINY_CONDITION_AREA
    )


@pytest.fixture(scope="module")
def edit_backbone():
    return _backbone(build_tiny_qwen_edit_pipeline(plus=False))


@pytest.fixture(scope="module")
def plus_backbone():
    return _backbone(build_tiny_qwen_edit_pipeline(plus=True))


@contextlib.contextmanager
def tiny_pipeline_areas():
    """Make the pipelines' own ``calculate_dimensions`` target the tiny areas."""
    areas = {1024 * 1024: TINY_AREA, 384 * 384: TINY_CONDITION_AREA}
    with contextlib.ExitStack() as stack:
        for module in (edit_module, plus_module):
            original = module.calculate_dimensions
            patched = lambda area, ratio, original=original: original(areas.get(area, area), ratio)  # noqa: E731
            stack.enter_context(mock.patch.object(module, "calculate_dimensions", patched))
        stack.enter_context(mock.patch.object(plus_module, "VAE_IMAGE_SIZE", TINY_AREA))
        stack.enter_context(mock.patch.object(plus_module, "CONDITION_IMAGE_SIZE", TINY_CONDITION_AREA))
        yield


@contextlib.contextmanager
def forwarding_mm_token_type_ids(pipeline):
    """The pipeline as diffusers PR #14189 fixes it: its text encoder is also given
    ``mm_token_type_ids`` (1 on image tokens), so Qwen2.5-VL builds its 3-D image positions."""
    encoder = pipeline.text_encoder
    original = encoder.forward

    def forward(*args, **kwargs):
        kwargs.setdefault("mm_token_type_ids", (kwargs["input_ids"] == encoder.config.image_token_id).int())
        return original(*args, **kwargs)

    encoder.forward = forward
    try:
        yield
    finally:
        del encoder.forward


def pipeline_transformer_calls(pipeline, image, prompt, seed, steps=2, fixed=True):
    """Run the real pipeline (``fixed``: with the mm_token_type_ids fix) and capture the keyword
    arguments of each transformer call."""
    with transformer_calls(pipeline.transformer, clone=False) as calls:
        with tiny_pipeline_areas(), forwarding_mm_token_type_ids(pipeline) if fixed else contextlib.nullcontext():
            pipeline(
                image=image,
                prompt=prompt,
                num_inference_steps=steps,
                generator=torch.Generator("cpu").manual_seed(seed),
                output_type="latent",
            )
    return calls


def _image(size, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def _encode(backbone, expressions, image):
    prepared = backbone.prepare_image(load_image(image))
    return prepared, backbone.encode_text(expressions, [f"remove {e}" for e in expressions], prepared)


@pytest.mark.parametrize("variant", ["edit", "plus"])
@pytest.mark.parametrize("size", [(64, 64), (90, 70), (150, 97)])
def test_transformer_inputs_equal_the_pipelines(request, variant, size):
    backbone = request.getfixturevalue(f"{variant}_backbone")
    image = _image(size, seed=size[0])
    expression = "the small red circle left of the star"
    # Two steps (the real scheduler's terminal-shift stretch is 0/0 with one step): compare both calls.
    first, second = pipeline_transformer_calls(backbone.pipeline, image, f"remove {expression}", seed=7, steps=2)
    reference = first

    prepared, text = _encode(backbone, [expression], image)
    ours = backbone.first_step_inputs(prepared, text, seed=7)
    for name in ("hidden_states", "encoder_hidden_states", "timestep"):
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=0, msg=name)
    assert ours["img_shapes"] == reference["img_shapes"]
    assert reference["encoder_hidden_states_mask"] is None and ours["encoder_hidden_states_mask"] is None
    assert reference["guidance"] is None and ours["guidance"] is None
    assert ours["attention_kwargs"] == reference["attention_kwargs"] == {}
    assert float(ours["timestep"][0]) == 1.0  # sigma 1: the first denoising step, t = 1000 / 1000
    later = backbone.step_inputs(prepared, text, seed=7, step_index=1, num_steps=2)
    for name in ("hidden_states", "timestep"):
        torch.testing.assert_close(later[name], second[name], rtol=0, atol=0, msg=f"step 1 {name}")
    assert float(later["timestep"][0]) < 1.0

    # [text | noisy | clean]: the clean part is the VAE-encoded image; the grid is the pipeline's.
    layout = backbone.layout_for(prepared, text)
    assert layout.text_len == reference["encoder_hidden_states"].shape[1]
    torch.testing.assert_close(reference["hidden_states"][:, layout.clean_in_image_stream], prepared.tensors["latents"])
    width, height = edit_module.calculate_dimensions(TINY_AREA, size[0] / size[1])[:2]
    assert prepared.geometry.resized_size == (width, height) and prepared.geometry.crop == (0, 0, width, height)
    assert reference["img_shapes"][0][-1] == (1, *prepared.geometry.grid)


@pytest.mark.parametrize("variant", ["edit", "plus"])
def test_text_encoder_uses_3d_image_positions(request, variant):
    """Default: the VLM's image tokens get their 3-D positions (the fixed pipeline's); ``mrope=False``
    is today's pipeline bit for bit (1-D positions under transformers 5)."""
    backbone = request.getfixturevalue(f"{variant}_backbone")
    pipe = backbone.pipeline
    prepared = backbone.prepare_image(load_image(_image((90, 70))))
    condition = prepared.tensors["condition"]
    images = [condition] if variant == "plus" else condition
    instruction = "remove the dog"
    inputs = pipe.processor(text=[backbone.encoder_text(instruction)], images=images, padding=True, return_tensors="pt")
    config = pipe.text_encoder.config
    grid = [tuple(int(x) for x in row) for row in inputs["image_grid_thw"]]
    merge = config.vision_config.spatial_merge_size
    assert grid[0][1] // merge > 1 and grid[0][2] // merge > 1
    reference = reference_mrope_positions(inputs["input_ids"][0].tolist(), config.image_token_id, grid, merge)

    positions, text = rotary_positions(pipe.text_encoder, lambda: backbone.encode_text(["the dog"], [instruction], prepared))
    assert torch.equal(positions[:, 0].cpu(), reference)
    with torch.no_grad():
        explicit = pipe.text_encoder(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"], position_ids=reference[:, None], output_hidden_states=True,
        ).hidden_states[-1][0, pipe.prompt_template_encode_start_idx :]
    torch.testing.assert_close(text.tensors["embeds"][0], explicit, rtol=0, atol=0)

    today, _ = pipe._get_qwen_prompt_embeds([instruction], images, backbone.device)
    backbone.mrope = False
    try:
        flat, sequential = rotary_positions(pipe.text_encoder, lambda: backbone.encode_text(["the dog"], [instruction], prepared))
    finally:
        backbone.mrope = True
    assert torch.equal(flat[0, 0].cpu(), torch.arange(inputs["input_ids"].shape[1]))
    torch.testing.assert_close(sequential.tensors["embeds"], today, rtol=0, atol=0)
    assert not torch.allclose(text.tensors["embeds"], today)


def test_full_size_rule_is_one_megapixel_in_multiples_of_32():
    backbone = QwenImageEditBackbone.__new__(QwenImageEditBackbone)
    backbone.vae_area, backbone.patch, backbone.name = 1024 * 1024, 16, "qwen"
    for size in [(640, 480), (3000, 2000), (100, 700)]:
        geometry = backbone.preprocess_geometry(size)
        assert geometry.resized_size == edit_module.calculate_dimensions(1024 * 1024, size[0] / size[1])[:2]
        assert all(side % 32 == 0 for side in geometry.resized_size)
        assert abs(geometry.resized_size[0] * geometry.resized_size[1] / 1024**2 - 1) < 0.1
    capped = backbone.preprocess_geometry((3000, 2000), max_side=512)
    assert capped.resized_size == (512, 352)


@pytest.mark.parametrize("variant", ["edit", "plus"])
def test_expression_indices_point_at_the_expression_in_the_text_stream(request, variant):
    backbone = request.getfixturevalue(f"{variant}_backbone")
    tokenizer = backbone.pipeline.tokenizer
    # "the image" also occurs in the (dropped) system prompt: the instruction's own copy must be found.
    expressions = ["the man in the red shirt", "dog", "the image"]
    prefix = backbone.pipeline.prompt_template_encode.split("<|vision_start|>")[0].split("{}")[0]
    assert len(tokenizer(prefix)["input_ids"]) == backbone.pipeline.prompt_template_encode_start_idx == 64
    prepared, text = _encode(backbone, expressions, _image((90, 70)))
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for expression, prompt in zip(expressions, text.prompts):
        indices = prompt.indices("expression")
        assert tokenizer.decode([prompt.input_ids[i] for i in indices]).strip() == expression
        assert "".join(prompt.token_strings(indices)).strip() == expression
        assert all(prompt.input_ids[i] not in tokenizer.all_special_ids for i in indices)
        # The whole stream: what the pipeline keeps after dropping the system prefix (64 tokens).
        stream = tokenizer.decode(prompt.input_ids[: prompt.num_real_tokens])
        vision = "<|vision_start|>" + "<|image_pad|>" * prepared.tensors["vision_tokens"] + "<|vision_end|>"
        head = "Picture 1: " + vision if variant == "plus" else vision
        assert stream == f"{head}remove {expression}<|im_end|>\n<|im_start|>assistant\n"
        assert prompt.input_ids.count(image_pad) == prepared.tensors["vision_tokens"] > 0
        assert min(indices) > max(i for i, t in enumerate(prompt.input_ids) if t == image_pad)
    # Padding to the longest prompt, with the mask the transformer expects.
    mask = text.tensors["mask"]
    lengths = [p.num_real_tokens for p in text.prompts]
    assert mask.tolist() == [[1] * n + [0] * (text.text_len - n) for n in lengths]


def test_batched_text_equals_single_text(edit_backbone):
    image = _image((90, 70))
    exprs = ["the dog", "a big zebra on the left"]
    prepared, both = _encode(edit_backbone, exprs, image)
    alone = edit_backbone.encode_text(exprs[1:], [f"remove {exprs[1]}"], prepared)
    prepared_again = edit_backbone.prepare_image(load_image(image))
    torch.testing.assert_close(prepared_again.tensors["latents"], prepared.tensors["latents"], rtol=0, atol=0)
    n = alone.text_len
    assert both.text_len == n and both.tensors["mask"][0].sum() < n
    torch.testing.assert_close(both.tensors["embeds"][1], alone.tensors["embeds"][0], rtol=0, atol=0)
    both_inputs = edit_backbone.first_step_inputs(prepared, both, 5)
    alone_inputs = edit_backbone.first_step_inputs(prepared, alone, 5)
    torch.testing.assert_close(both_inputs["hidden_states"][1], alone_inputs["hidden_states"][0])
    with pytest.raises(ConfigError, match="another image"):
        edit_backbone.first_step_inputs(prepared_again, both, 5)


def capture_reference_qkv(store: list):
    return capture_dispatch(qwen_module, store)


_plan = expression_plan


@pytest.mark.parametrize("route", ["lse", "fused", "separate"])
def test_probes_equal_naive_full_attention_with_the_padding_mask(edit_backbone, route):
    image, text = _encode(edit_backbone, ["the red circle", "a big zebra on the left"], _image((90, 70)))
    assert text.tensors["mask"] is not None  # two lengths: the first prompt is padded
    plan = _plan(edit_backbone, image, text, route=route)
    inputs = edit_backbone.first_step_inputs(image, text, seed=3)
    captured: list = []
    with torch.no_grad(), capture_reference_qkv(captured):
        edit_backbone.pipeline.transformer(**inputs, return_dict=False)
    assert len(captured) == edit_backbone.num_blocks

    recorder = edit_backbone.probe_forward(image, text, plan, seed=3)
    assert sorted(recorder.cam) == list(range(edit_backbone.num_blocks))
    for block, (q, k, _, mask) in enumerate(captured):
        assert mask is not None and mask.shape == (2, 1, 1, plan.layout.total_len)
        cam_ref, ram_ref = naive_maps(q, k, plan.layout, plan.prompt_mask, key_mask=mask)
        torch.testing.assert_close(recorder.cam[block].double(), cam_ref, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(recorder.ram[block].double(), ram_ref, rtol=1e-5, atol=1e-7)


def test_feature_sites_match_independent_captures(edit_backbone):
    backbone = edit_backbone
    image, text = _encode(backbone, ["the red circle"], _image((64, 64)))
    blocks = frozenset(range(backbone.num_blocks))
    plan = _plan(backbone, image, text, {"attn": blocks, "adaln": blocks, "block": blocks})
    layout = plan.layout
    inputs = backbone.first_step_inputs(image, text, seed=0)
    transformer = backbone.pipeline.transformer
    captured = []
    with torch.no_grad(), capture_reference_qkv(captured), block_io_captures(transformer.transformer_blocks) as io:
        transformer(**inputs, return_dict=False)
    attn_inputs, block_outputs = io
    recorder = backbone.probe_forward(image, text, plan, seed=0)
    for index in range(backbone.num_blocks):
        av = attention_output(*captured[index][:3], key_mask=captured[index][3])[:, layout.clean]
        torch.testing.assert_close(recorder.features[("attn", index)].double(), av, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(recorder.features[("adaln", index)], attn_inputs[index][:, layout.clean_in_image_stream])
        torch.testing.assert_close(recorder.features[("block", index)], block_outputs[index][1][:, layout.clean_in_image_stream])


def test_segmenter_end_to_end(edit_backbone):
    from editseg import MethodConfig, Segmenter

    image = np.asarray(_image((80, 64), seed=1))
    exprs = ["the red circle", "the man on the left", "zebra"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batched = Segmenter(edit_backbone, batch_size=3).segment(image, exprs)
        one_by_one = Segmenter(edit_backbone, batch_size=1).segment(image, exprs)
    rows, cols = edit_backbone.preprocess_geometry((80, 64)).grid
    for expression, a, b in zip(exprs, batched, one_by_one):
        assert a.mask.shape == a.cam.shape == a.ram.shape == (64, 80) and a.mask.dtype == bool
        assert a.cam_tokens.shape == (rows, cols)
        assert "".join(a.prompt_tokens).strip() == expression
        assert a.config["feature_block"] == edit_backbone.default_feature_block == 2
        np.testing.assert_allclose(a.ram_tokens, b.ram_tokens, atol=1e-5)
        np.testing.assert_allclose(a.cam_tokens, b.cam_tokens, atol=1e-5)
        assert (a.mask != b.mask).mean() < 0.01

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenter = Segmenter(edit_backbone)
    segmenter.set_image(image)
    ram = segmenter.predict("the dog", MethodConfig(mode="ram"))[0]
    np.testing.assert_array_equal(ram.mask, ram.ram > 0.5)
    cam = segmenter.predict("the dog", MethodConfig(mode="cam"))[0]
    np.testing.assert_array_equal(cam.mask, cam.cam > 0.5)
    double = segmenter.predict("the dog", MethodConfig(attention_blocks="double"))[0]
    full = segmenter.predict("the dog", MethodConfig(attention_blocks="all"))[0]
    np.testing.assert_array_equal(double.ram_tokens, full.ram_tokens)  # every block is double-stream
    with pytest.raises(ConfigError, match="no single-stream"):
        segmenter.predict("the dog", MethodConfig(attention_blocks="single"))
    for site in ("attn", "adaln", "block"):
        segmenter.predict("the dog", MethodConfig(feature_site=site, feature_block=0))


def test_defaults_and_registry():
    from editseg.backbones import known_models, resolve_model_source

    backbone = QwenImageEditBackbone.__new__(QwenImageEditBackbone)
    backbone.num_double_blocks, backbone.num_single_blocks, backbone.name = 60, 0, "qwen-image-edit"
    assert backbone.default_feature_block == 42  # round(60 * 40 / 57), 0-based
    assert backbone.resolve_blocks("double") == backbone.resolve_blocks("all") == frozenset(range(60))
    assert resolve_model_source("qwen-image-edit") == "Qwen/Qwen-Image-Edit"
    assert resolve_model_source("qwen-image-edit-2509") == "Qwen/Qwen-Image-Edit-2509"
    assert "qwen-image-edit" in known_models() and "planned" not in known_models()["qwen-image-edit"]
