"""RefAM end to end on tiny random models (FLUX.1 FluxPipeline + SAM, no downloads): the heatmap,
point and mask equal a naive recomputation from q/k captured inside the model's own processors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import diffusers.models.transformers.transformer_flux as flux_module
from editseg.methods import refam_maps as maps
from editseg.methods.refam import RefAM, RefAMConfig
from editseg.methods.refam_text import ExpressionParser
from reference import capture_dispatch


@pytest.fixture(scope="module")
def method():
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        return RefAM.from_pretrained("tiny-random-flux1", device="cpu", parser="rules")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(7)
    return Image.fromarray((rng.random((64, 96, 3)) * 255).astype(np.uint8))


def naive_heat(method, expression, config):
    """H_e from scratch: ê, full softmax over ê's real tokens per head/block of captured q/k, mean, filter,
    mean over kept tokens, min-max, spatial prior."""
    state, backbone = method._state, method.backbone
    parsed = ExpressionParser("rules")(expression)
    text_str = " ".join([expression, *config.appended])
    text = backbone.encode_text([text_str])
    n = text.num_real[0]
    captured = []
    with capture_dispatch(flux_module, captured), torch.inference_mode():
        backbone.velocity(state.latents, state.timestep, text, state.image)
    per_block, masses = [], []
    for q, k, _, _ in captured:
        logits = q[0].double().transpose(0, 1) @ k[0].double().transpose(0, 1).transpose(-1, -2) / q.shape[-1] ** 0.5
        A = torch.softmax(logits, -1)  # H, S, S
        img = A[:, text.text_len :, :n]
        per_block.append((img / img.sum(-1, keepdim=True) if config.token_softmax else img).mean(0))
        masses.append(A[:, :n, :n].mean(0).mean(0))
    M = torch.stack(per_block).mean(0)  # N, n
    mass = torch.stack(masses).mean(0)
    gas = mass > config.gas_ratio * mass.mean()
    tokens = maps.classify_tokens(
        text_str, text.offsets[0], list(range(n)), (0, len(expression)), parsed.span if config.noun_phrase else None, n - 1
    )
    keep = []
    for t, g in zip(tokens, gas.tolist()):
        ok = t.role == "content" or (t.role in ("stop", "symbol") and not config.filter_stop_words)
        ok = ok and not (config.noun_phrase and not t.in_noun_phrase) and not (config.suppress_gas and g)
        keep.append(ok)
    H = M[:, torch.tensor(keep)].mean(1)
    H = (H - H.min()) / (H.max() - H.min())
    if config.spatial_bias:
        grid = state.image.geometry.grid
        ys = (torch.arange(grid[0]) + 0.5) / grid[0]
        xs = (torch.arange(grid[1]) + 0.5) / grid[1]
        prior = torch.ones(grid, dtype=torch.float64)
        for term in parsed.terms:
            if term == "left":
                prior = prior * (1 - xs[None, :]).double()
        H = H * prior.flatten()
    return H, keep


@pytest.mark.parametrize(
    "overrides",
    [{}, {"token_softmax": False, "noun_phrase": False, "spatial_bias": False, "filter_stop_words": False}],
)
def test_heatmap_point_and_mask_match_naive(method, image, overrides):
    method.config = RefAMConfig(parser="rules", **overrides)
    method.set_image(image)
    expression = "the red dog on the left"
    [result] = method.predict([expression])
    H, keep = naive_heat(method, expression, method.config)
    grid = method._state.image.geometry.grid
    expected = (H - H.min()) / (H.max() - H.min())
    np.testing.assert_allclose(result.token_maps["attention"].ravel(), expected.numpy(), rtol=1e-4, atol=1e-5)
    cell = divmod(int(torch.argmax(H)), grid[1])
    assert result.point == maps.cell_to_pixel(cell, grid, image.size)
    masks, scores = method.sam.predict_points([result.point])
    np.testing.assert_array_equal(result.mask, masks[int(np.argmax(scores))])
    assert result.mask.shape == (64, 96) and result.maps["attention"].shape == (64, 96)
    assert result.method == "refam" and result.instruction == "the red dog on the left _ with to and pink"
    assert len(result.prompt_token_indices) == sum(keep)
    assert result.config["collected_timestep"] == pytest.approx(float(method._state.timestep))


def test_collection_timestep_and_inversion(method, image):
    method.config = RefAMConfig(parser="rules")
    method.set_image(image)
    noised = method._state.latents
    timesteps, _ = method.backbone.schedule(method._state.image.latents.shape[1], 28)
    assert float(method._state.timestep) == pytest.approx(float(timesteps[torch.argmin((timesteps - 750).abs())]))
    assert abs(float(method._state.timestep) - 750) < 25
    method.config = RefAMConfig(parser="rules", inversion=True, inversion_gamma=0.0)
    method.set_image(image)
    assert not torch.allclose(method._state.latents, noised)
    [result] = method.predict(["dog"])
    assert result.config["inversion"] is True


def test_switches_change_the_input(method, image):
    method.config = RefAMConfig(parser="rules", attention_magnets=False)
    method.set_image(image)
    [plain] = method.predict(["the red dog"])
    assert plain.instruction == "the red dog"
    method.config = RefAMConfig(parser="rules", color_magnets=())
    [stop_only] = method.predict(["the red dog"])
    assert stop_only.instruction == "the red dog _ with to and"
    method.config = RefAMConfig(parser="rules", attention_magnets=False, random_vector_magnets=5)
    [vectors] = method.predict(["the red dog"])
    assert vectors.instruction == "the red dog"
    assert not np.allclose(vectors.token_maps["attention"], plain.token_maps["attention"])
    with pytest.raises(Exception, match="mask_choice"):
        RefAMConfig(mask_choice="biggest")
    with pytest.raises(Exception, match="No image"):
        RefAM(method.backbone, method.sam, RefAMConfig(parser="rules")).predict(["x"])


def test_unknown_option_is_a_config_error():
    from editseg.errors import ConfigError

    with pytest.raises(ConfigError, match="Unknown RefAM option"):
        RefAM.from_pretrained("tiny-random-flux1", device="cpu", magnet="pink")


def test_skip_blocks_fraction(method):
    method.config = RefAMConfig(parser="rules", skip_blocks_fraction=0.6)
    assert method.blocks() == [3, 4]
    method.config = RefAMConfig(parser="rules")
    assert method.blocks() == [0, 1, 2, 3, 4]
