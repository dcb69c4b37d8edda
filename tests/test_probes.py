"""Probe results against a naive transcription of eqs. 3-4 on the full softmax(QKᵀ/√d) matrix.

The reference q, k, v are captured from diffusers' OWN attention processors (by wrapping the
attention dispatch they call), so they are computed after QK-norm and RoPE exactly as the model
does, independently of editseg's processors.
"""

from __future__ import annotations

import pytest
import torch

import diffusers.models.transformers.transformer_flux2 as flux2_module
from editseg.probing.recorder import TokenLayout, clean_token_attention_statistics
from reference import attention_output, block_io_captures, capture_dispatch, expression_plan, full_attention, naive_maps


def assert_equals_naive_eqs_3_4(cam, ram, q, k, keep, layout, weights):
    """CAM/RAM equal the literal eqs. 3-4 on the float64 head-mean attention (``full_attention``)."""
    A = full_attention(q, k, keep).mean(dim=1)  # head mean, float64
    v = layout.clean
    c = A[:, v, : layout.text_len] @ weights.double()[..., None]
    A_vv = A[:, v, v]
    r = (A_vv / A_vv.sum(-1, keepdim=True)) @ c
    torch.testing.assert_close(cam.double(), c[..., 0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ram.double(), r[..., 0], rtol=1e-5, atol=1e-7)


def capture_reference_qkv(store: list):
    return capture_dispatch(flux2_module, store)


def _inputs(backbone, expressions, image_array):
    from editseg.images import load_image

    image = backbone.prepare_image(load_image(image_array))
    text = backbone.encode_text(expressions, [f"remove {e}" for e in expressions])
    return image, text


_plan = expression_plan


@pytest.mark.parametrize("route", ["lse", "fused", "separate"])
def test_probes_equal_naive_full_attention_on_every_block(tiny_backbone, random_image, route):
    image, text = _inputs(tiny_backbone, ["the red circle", "a big zebra on the left"], random_image)
    plan = _plan(tiny_backbone, image, text, route=route)
    inputs = tiny_backbone.first_step_inputs(image, text, seed=3)

    captured: list = []
    with torch.no_grad(), capture_reference_qkv(captured):
        tiny_backbone.pipeline.transformer(**inputs, return_dict=False)
    assert len(captured) == tiny_backbone.num_blocks  # double and single blocks alike

    recorder = tiny_backbone.probe_forward(image, text, plan, seed=3)
    assert sorted(recorder.cam) == list(range(tiny_backbone.num_blocks))
    for block, (q, k, _, _) in enumerate(captured):
        cam_ref, ram_ref = naive_maps(q, k, plan.layout, plan.prompt_mask)
        torch.testing.assert_close(recorder.cam[block].double(), cam_ref, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(recorder.ram[block].double(), ram_ref, rtol=1e-5, atol=1e-7)


def test_feature_sites_match_independent_captures(tiny_backbone, random_image):
    backbone = tiny_backbone
    image, text = _inputs(backbone, ["the red circle"], random_image)
    blocks = frozenset(range(backbone.num_blocks))
    plan = _plan(backbone, image, text, {"attn": blocks, "adaln": blocks, "block": blocks})
    layout = plan.layout
    inputs = backbone.first_step_inputs(image, text, seed=0)
    transformer = backbone.pipeline.transformer
    all_blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)

    captured = []
    with torch.no_grad(), capture_reference_qkv(captured), block_io_captures(all_blocks) as io:
        transformer(**inputs, return_dict=False)
    attn_inputs, block_outputs = io

    recorder = backbone.probe_forward(image, text, plan, seed=0)
    for index in range(backbone.num_blocks):
        is_double = index < backbone.num_double_blocks
        rows = layout.clean_in_image_stream if is_double else layout.clean
        av = attention_output(*captured[index][:3])[:, layout.clean]  # eq. 1, heads concatenated
        torch.testing.assert_close(recorder.features[("attn", index)].double(), av, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(recorder.features[("adaln", index)], attn_inputs[index][:, rows])
        output = block_outputs[index][1] if is_double else block_outputs[index]
        torch.testing.assert_close(recorder.features[("block", index)], output[:, rows])


def test_streaming_statistics_on_random_tensors_with_key_mask():
    """The maths alone, on random q/k with a key-padding mask, against the naive matrices."""
    torch.manual_seed(1)
    layout = TokenLayout(text_len=7, noisy_len=6, clean_len=6, grid=(2, 3))
    batch, heads, dim = 2, 3, 8
    q = torch.randn(batch, layout.total_len, heads, dim)
    k = torch.randn(batch, layout.total_len, heads, dim)
    prompt = torch.zeros(batch, layout.text_len)
    prompt[0, [1, 2]] = 1
    prompt[1, [4]] = 1
    keep = torch.ones(batch, layout.total_len, dtype=torch.bool)
    keep[:, 5:7] = False  # padded text tokens, never attended
    cam, ram = clean_token_attention_statistics(q, k, layout, prompt, attn_mask=keep[:, None, None, :])

    logits = (q.double().transpose(1, 2) @ k.double().transpose(1, 2).transpose(-1, -2)) / dim**0.5
    logits = logits.masked_fill(~keep[:, None, None, :], float("-inf"))
    A = torch.softmax(logits, dim=-1).mean(1)
    v = layout.clean
    for b in range(batch):
        c = A[b, v][:, :7] @ prompt[b].double()
        A_vv = A[b, v, v]
        r = torch.linalg.solve(torch.diag(A_vv.sum(1)), A_vv) @ c
        torch.testing.assert_close(cam[b].double(), c, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ram[b].double(), r, rtol=1e-5, atol=1e-7)


def test_kv_cache_processors_are_refused(tiny_pipeline, tiny_backbone, random_image):
    from editseg.errors import UnsupportedModelError

    block = tiny_pipeline.transformer.transformer_blocks[0]
    original = block.attn.processor
    block.attn.processor = flux2_module.Flux2KVAttnProcessor()
    try:
        image, text = _inputs(tiny_backbone, ["cat"], random_image)
        with pytest.raises(UnsupportedModelError, match="KV"):
            tiny_backbone.probe_forward(image, text, _plan(tiny_backbone, image, text))
    finally:
        block.attn.processor = original


def test_lse_route_is_taken_on_cpu_and_equals_naive_with_weights_and_key_mask(tiny_backbone, random_image):
    """Default plans (lse=None) take the log-sum-exp route on CPU; its maths, with a weighted prompt
    and a key mask, against the literal eqs. 3-4 on the full attention matrix."""
    from unittest import mock

    import editseg.probing.recorder as probes

    image, text = _inputs(tiny_backbone, ["the dog"], random_image)
    plan = _plan(tiny_backbone, image, text)
    plan.lse = None
    with mock.patch.object(probes, "statistics_from_lse", wraps=probes.statistics_from_lse) as spy:
        recorder = tiny_backbone.probe_forward(image, text, plan, seed=1)
    assert spy.call_count == tiny_backbone.num_blocks == len(recorder.cam)

    g = torch.Generator().manual_seed(0)
    layout = TokenLayout(text_len=6, noisy_len=4, clean_len=6, grid=(2, 3))
    q, k = (torch.randn(2, layout.total_len, 3, 8, generator=g) for _ in range(2))
    weights = torch.tensor([[0, 0.5, 2.0, 0, 0, 0], [0, 0, 0, 0, 1.0, 0]])
    keep = torch.ones(2, 1, 1, layout.total_len, dtype=torch.bool)
    keep[1, ..., 5] = False  # a padded text key
    out, lse = probes.native_attend_lse(q, k, k, keep)
    reference_out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), k.transpose(1, 2), attn_mask=keep
    ).transpose(1, 2)
    assert torch.equal(out, reference_out)  # the kernel the bare call runs
    cam, ram = probes.statistics_from_lse(q, k, lse, layout, weights, keep)
    assert_equals_naive_eqs_3_4(cam, ram, q, k, keep, layout, weights)
    with pytest.raises(ValueError, match="non-negative"):
        probes.statistics_from_lse(q, k, lse, layout, -weights, keep)


@pytest.mark.parametrize("per_head", [True, False])
def test_lse_route_in_row_blocks_equals_naive(monkeypatch, per_head):
    """The log-sum-exp route's row blocks (a few rows per step, a ragged last block) and its
    all-heads-at-once grouping (used on accelerators) give the literal eqs. 3-4, key mask included."""
    import editseg.probing.recorder as probes

    monkeypatch.setattr(probes, "PROPAGATION_ROWS", 3)  # per head: blocks of 3, 3, 2 clean rows
    monkeypatch.setattr(probes, "PROPAGATION_CHUNK", 5 * 3 * 8)  # all heads: blocks of 5, 3 rows
    monkeypatch.setattr(probes, "PER_HEAD_DEVICES", ("cpu",) if per_head else ())
    g = torch.Generator().manual_seed(1)
    layout = TokenLayout(text_len=5, noisy_len=3, clean_len=8, grid=(2, 4))
    q, k = (torch.randn(2, layout.total_len, 3, 8, generator=g) for _ in range(2))
    weights = torch.tensor([[0, 1.0, 1.0, 0, 0], [0.25, 0, 0, 3.0, 0]])
    keep = torch.ones(2, 3, layout.total_len, layout.total_len, dtype=torch.bool)
    keep[0, 1, :, layout.text_len + layout.noisy_len + 2] = False  # one clean key hidden from one head
    _, lse = probes.native_attend_lse(q, k, k, keep)
    cam, ram = probes.statistics_from_lse(q, k, lse, layout, weights, keep)
    assert_equals_naive_eqs_3_4(cam, ram, q, k, keep, layout, weights)
