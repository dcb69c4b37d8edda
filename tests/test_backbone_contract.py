"""One contract suite for every backbone family (in the spirit of diffusers' tester mixins).

Each family — tiny random FLUX.2 klein, the shipped toy-shapes editor, FLUX.1 Kontext, Qwen-Image-Edit
and Step1X-Edit, all tiny and offline — must honour :class:`editseg.backbones.base.Backbone`:
declared block counts, step-0 inputs equal to the first-step inputs, a token layout that matches
the prepared image and text, probes that leave the model's output unchanged (bit-identical
unfused; rounding only fused) and restore the original processors, only the requested blocks and
feature sites recorded with the layout's shapes, batch-independent probe results, the decoding
capability it declares, and the Segmenter end to end. Family-specific parity with the official
pipelines and the naive-attention references stay in the per-family test files.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.backbones.base import Backbone
from editseg.errors import ConfigError, UnsupportedModelError
from editseg.probing.recorder import ProbePlan, ProbeRecorder
from reference import ROUTES

FAMILIES = ("tiny-random-flux2", "toy-shapes", "flux1-kontext", "qwen-image-edit", "step1x-edit")
# fused probes widen the attention call by 8 zero channels: the output moves by rounding only
FUSED_ATOL = {"tiny-random-flux2": 1e-6, "toy-shapes": 1e-5, "flux1-kontext": 1e-5, "qwen-image-edit": 1e-5, "step1x-edit": 1e-5}


def _build(family: str, tiny_backbone) -> Backbone:
    if family == "tiny-random-flux2":
        return tiny_backbone
    if family == "toy-shapes":
        from editseg.backbones import load_backbone

        return load_backbone("toy-shapes", device="cpu")
    if family == "flux1-kontext":
        from editseg.backbones.flux1_kontext import FluxKontextBackbone
        from test_flux1_kontext import SMALL_AREA, build_tiny_kontext_pipeline

        return FluxKontextBackbone(
            build_tiny_kontext_pipeline(), name="tiny-kontext", is_random=True, auto_resize=False,
            noisy_canvas="pipeline", max_area=SMALL_AREA,
        )  # fmt: skip
    if family == "qwen-image-edit":
        from test_qwen_image_edit import _backbone, build_tiny_qwen_edit_pipeline

        return _backbone(build_tiny_qwen_edit_pipeline(plus=False))
    if family == "step1x-edit":
        from editseg.backbones.step1x import Step1XEditBackbone
        from editseg.backbones.step1x.tiny import build_tiny_step1x_pipeline

        return Step1XEditBackbone(build_tiny_step1x_pipeline(seed=0), name="tiny-step1x", is_random=True)
    raise ValueError(family)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tiny_backbone):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return request.param, _build(request.param, tiny_backbone)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((64, 96, 3)) * 255).astype(np.uint8))


def _encode(backbone, expressions, image):
    prepared = backbone.prepare_image(image)
    return prepared, backbone.encode_text(expressions, [f"remove {e}" for e in expressions], image=prepared)


def _plan(backbone, prepared, text, attention=None, features=None, route="lse") -> ProbePlan:
    mask = torch.zeros(len(text.prompts), text.text_len)
    for row, prompt in enumerate(text.prompts):
        mask[row, prompt.indices("expression")] = 1
    return ProbePlan(backbone.layout_for(prepared, text), mask, attention, features or {}, **ROUTES[route])


def _output(result):
    return result[0] if isinstance(result, (tuple, list)) else result


def _processors(transformer) -> list:
    return [module.processor for module in transformer.modules() if hasattr(module, "processor")]


def test_the_contract_is_declared(family):
    name, backbone = family
    assert isinstance(backbone, Backbone)
    assert backbone.num_blocks == backbone.num_double_blocks + backbone.num_single_blocks > 0
    assert 0 <= backbone.default_feature_block < backbone.num_blocks
    assert backbone.resolve_blocks("all") == frozenset(range(backbone.num_blocks))
    assert backbone.resolve_blocks("double") == frozenset(range(backbone.num_double_blocks))
    if backbone.num_single_blocks:
        assert backbone.resolve_blocks("double") | backbone.resolve_blocks("single") == backbone.resolve_blocks("all")
    else:  # Qwen-Image has double-stream blocks only: asking for single ones is a clear error
        with pytest.raises(ConfigError, match="single"):
            backbone.resolve_blocks("single")
    assert isinstance(backbone.device, torch.device)


def test_step_zero_inputs_are_the_first_step_inputs(family, image):
    _, backbone = family
    prepared, text = _encode(backbone, ["the red circle"], image)
    first = backbone.first_step_inputs(prepared, text, seed=5)
    step0 = backbone.step_inputs(prepared, text, seed=5, step_index=0, num_steps=4)
    assert first.keys() == step0.keys()
    for key, value in first.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, step0[key]), key
        else:
            assert value == step0[key], key


def test_the_layout_matches_the_prepared_image_and_text(family, image):
    _, backbone = family
    prepared, text = _encode(backbone, ["the red circle", "a big zebra on the left"], image)
    layout = backbone.layout_for(prepared, text)
    rows, cols = prepared.geometry.grid
    assert layout.text_len == text.text_len and layout.grid == (rows, cols)
    assert layout.clean_len == rows * cols == prepared.tensors["latents"].shape[1]
    assert layout.total_len == layout.text_len + layout.noisy_len + layout.clean_len
    assert layout.clean.stop - layout.clean.start == layout.clean_len


@pytest.mark.parametrize("route", ["lse", "fused", "separate"])
def test_probes_leave_the_output_unchanged_and_restore_the_processors(family, image, route):
    name, backbone = family
    prepared, text = _encode(backbone, ["the dog", "a cat near the car"], image)
    last = backbone.num_blocks - 1
    features = {"attn": frozenset({1}), "adaln": frozenset({last}), "block": frozenset({0, last})}
    plan = _plan(backbone, prepared, text, features=features, route=route)
    inputs = backbone.first_step_inputs(prepared, text, seed=0)
    transformer = backbone.pipeline.transformer
    before = _processors(transformer)
    with torch.no_grad():
        bare = _output(backbone.run_transformer(inputs))
        recorder = ProbeRecorder(plan)
        with backbone.probes_installed(recorder):
            probed = _output(backbone.run_transformer(inputs))
        again = _output(backbone.run_transformer(inputs))
    if route == "fused":
        torch.testing.assert_close(probed, bare, rtol=1e-5, atol=FUSED_ATOL[name])
    else:
        assert torch.equal(bare, probed)
    assert torch.equal(bare, again)  # original processors restored
    assert all(a is b for a, b in zip(before, _processors(transformer))) and len(before) == len(_processors(transformer))
    assert sorted(recorder.cam) == sorted(recorder.ram) == list(range(backbone.num_blocks))
    assert set(recorder.features) == {(site, b) for site, blocks in features.items() for b in blocks}


def test_only_requested_blocks_are_recorded_with_the_layouts_shapes(family, image):
    _, backbone = family
    prepared, text = _encode(backbone, ["the dog", "a cat"], image)
    last = backbone.num_blocks - 1
    plan = _plan(backbone, prepared, text, attention=frozenset({0, last}), features={"attn": frozenset({1})})
    recorder = backbone.probe_forward(prepared, text, plan, seed=0)
    assert sorted(recorder.cam) == sorted(recorder.ram) == [0, last]
    assert list(recorder.features) == [("attn", 1)]
    clean = plan.layout.clean_len
    assert recorder.stacked("cam", [0, last]).shape == (2, 2, clean)
    assert recorder.features[("attn", 1)].shape[:2] == (2, clean)
    assert all(torch.isfinite(t).all() for t in (*recorder.cam.values(), *recorder.ram.values()))
    assert backbone.num_blocks > 2  # every tiny family has an unrequested block 1
    with pytest.raises(KeyError):
        recorder.stacked("ram", [1])


def test_probe_results_do_not_depend_on_the_batch(family, image):
    _, backbone = family
    expressions = ["the red circle", "a big zebra on the left"]
    prepared, text = _encode(backbone, expressions, image)
    together = backbone.probe_forward(prepared, text, _plan(backbone, prepared, text), seed=2)
    for row, expression in enumerate(expressions):
        alone_text = backbone.encode_text([expression], [f"remove {expression}"], image=prepared)
        alone = backbone.probe_forward(prepared, alone_text, _plan(backbone, prepared, alone_text), seed=2)
        for block in range(backbone.num_blocks):
            torch.testing.assert_close(together.ram[block][row], alone.ram[block][0], rtol=1e-4, atol=1e-6)


def test_text_sees_image_is_declared_truly_and_the_text_cache_follows_it(family, image):
    """Where the text encoder ignores the image, another image gives the same encoding bit for bit
    and the text cache serves it; where it sees the image, the encoding changes and nothing is cached."""
    from editseg.backbones.text_cache import TextEncodingCache

    _, backbone = family
    expressions = ["the red circle", "a big zebra on the left"]
    instructions = [f"remove {e}" for e in expressions]
    prepared, text = _encode(backbone, expressions, image)
    other = backbone.prepare_image(Image.fromarray(255 - np.asarray(image)))
    other_text = backbone.encode_text(expressions, instructions, image=other)
    same = all(torch.equal(v, other_text.tensors[k]) for k, v in text.tensors.items() if isinstance(v, torch.Tensor))
    assert same is not backbone.text_sees_image
    cache = TextEncodingCache(8)
    first = cache.encode(backbone, expressions, instructions, image=prepared)
    again = cache.encode(backbone, expressions[::-1], instructions[::-1], image=other)
    if backbone.text_sees_image:
        assert len(cache) == 0 and cache.hits == 0
        return
    assert set(backbone.text_row_tensors) <= set(text.tensors) and len(cache) == 2 and cache.hits == 2
    assert [p.instruction for p in again.prompts] == instructions[::-1]
    for key, value in text.tensors.items():
        assert torch.equal(first.tensors[key], value), key
        flipped = value.flip(0) if key in backbone.text_row_tensors else value
        assert torch.equal(again.tensors[key], flipped), key


def test_decoding_is_what_the_backbone_declares(family, image):
    _, backbone = family
    prepared, text = _encode(backbone, ["the red circle"], image)
    if not backbone.decodes_edits:
        with pytest.raises(UnsupportedModelError):
            backbone.first_step_clean_estimate(prepared, text)
        return
    tokens = backbone.first_step_clean_estimate(prepared, text)
    assert tokens.shape[:2] == (1, prepared.tensors["latents"].shape[1])
    (edit,) = backbone.decode_tokens(tokens, prepared)
    assert edit.size == (prepared.geometry.crop[2], prepared.geometry.crop[3])


def test_segmenter_end_to_end(family, image):
    from editseg import Segmenter

    _, backbone = family
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = Segmenter(backbone, batch_size=2).segment(image, ["the red circle", "the dog", "a zebra"])
    for result in results:
        assert result.mask.shape == (64, 96) and result.mask.dtype == bool
        assert result.ram.shape == (64, 96) and 0 <= result.ram.min() and result.ram.max() <= 1
        assert result.model == backbone.name and result.config["feature_block"] == backbone.default_feature_block


def test_switches_are_declared_attributes_at_their_defaults(family, image):
    """Every declared switch is an attribute holding its default on a fresh backbone, and setting
    each one to another value shows in ``changed_switches`` (what eval records are tied to)."""
    _, backbone = family
    assert backbone.changed_switches() == {}
    for name, switch in type(backbone).switches.items():
        assert getattr(backbone, name) == switch.default and isinstance(switch.default, switch.kind)
        if switch.kind is bool:
            other = not switch.default
        elif switch.kind is int:
            other = switch.default + 1
        else:
            other = next(c for c in switch.choices if c != switch.default)
        backbone.set_switches({name: other})
        try:
            assert backbone.changed_switches() == {name: other}
        finally:
            backbone.set_switches({name: switch.default})
    assert backbone.changed_switches() == {}
