"""Eqs. 3-6 against naive transcriptions, and the geometry that maps token grids to pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from editseg.config import MethodConfig
from editseg.geometry import ImageGeometry
from editseg.methods.early_grounding import aggregate_attention, foreground_score, ground, masks_at_input, minmax, prototypes


def naive_minmax(x: np.ndarray) -> np.ndarray:
    low, high = x.min(), x.max()
    return np.zeros_like(x) if high == low else (x - low) / (high - low)


def test_eq3_eq4_aggregation_is_minmax_of_block_sum():
    rng = np.random.default_rng(0)
    terms = rng.random((4, 2, 6))  # blocks, batch, tokens
    maps = aggregate_attention(torch.tensor(terms), grid=(2, 3)).numpy()
    for b in range(2):
        summed = np.zeros((2, 3))
        for l in range(4):
            summed += terms[l, b].reshape(2, 3)  # 𝓕⁻¹: row-major reshape to the token grid
        np.testing.assert_allclose(maps[b], naive_minmax(summed), rtol=1e-12)


def test_minmax_constant_map_is_zero_not_nan():
    out = minmax(torch.full((1, 2, 2), 3.0))
    assert torch.equal(out, torch.zeros(1, 2, 2))


def test_eq5_prototypes_are_masked_means():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(1, 6, 4))
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    region = np.array([[1, 0, 1, 0, 0, 1]], dtype=bool)
    fg, bg = prototypes(torch.tensor(feats), torch.tensor(region))
    fg_ref = sum(feats[0, i] for i in range(6) if region[0, i]) / region.sum()
    bg_ref = sum(feats[0, i] for i in range(6) if not region[0, i]) / (~region).sum()
    np.testing.assert_allclose(fg[0].numpy(), fg_ref)
    np.testing.assert_allclose(bg[0].numpy(), bg_ref)


def eq6_naive(features_grid: torch.Tensor, fg, bg, size, similarity):
    """Upsample the (D, h, w) unit features to (H, W), score each pixel against each prototype, argmax."""
    up = F.interpolate(features_grid[None], size=size, mode="bilinear", align_corners=False)[0]
    height, width = size
    out = np.zeros(size, dtype=bool)
    for y in range(height):
        for x in range(width):
            f = up[:, y, x]
            if similarity == "cosine":
                s_fg = F.cosine_similarity(fg, f, dim=0)
                s_bg = F.cosine_similarity(bg, f, dim=0)
            else:
                s_fg, s_bg = fg @ f, bg @ f
            out[y, x] = bool(s_fg > s_bg)  # argmax over {fg, bg}
    return out


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_full_method_equals_naive_eqs_3_to_6(similarity):
    torch.manual_seed(0)
    grid = (3, 4)
    blocks, dim, patch = 3, 5, 4
    cam_terms = torch.rand(blocks, 1, 12, dtype=torch.float64)
    ram_terms = torch.rand(blocks, 1, 12, dtype=torch.float64)
    features = torch.randn(1, 12, dim, dtype=torch.float64)
    config = MethodConfig(tau=0.6, similarity=similarity)
    maps = ground(cam_terms, ram_terms, features, grid, config)
    geometry = ImageGeometry(input_size=(16, 12), resized_size=(16, 12), crop=(0, 0, 16, 12), patch=patch)
    mask = masks_at_input(maps, geometry, config)[0].numpy()

    ram = naive_minmax(ram_terms[:, 0].sum(0).numpy().reshape(grid))
    region = ram > 0.6  # M = 1[RAM > tau]
    unit = (features[0] / features[0].norm(dim=-1, keepdim=True)).numpy()
    fg = torch.tensor(unit[region.flatten()].mean(0))
    bg = torch.tensor(unit[~region.flatten()].mean(0))
    grid_features = torch.tensor(unit.T.reshape(dim, *grid))
    expected = eq6_naive(grid_features, fg, bg, (12, 16), similarity)
    np.testing.assert_array_equal(maps.region[0].numpy(), region)
    np.testing.assert_array_equal(mask, expected)
    assert 0 < mask.sum() < mask.size


def test_cosine_and_dot_differ_when_prototype_norms_differ():
    # fg prototype averages two orthogonal unit vectors (norm 0.71), bg is one unit vector.
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])
    region = torch.tensor([[True, True, False]])
    fg, bg = prototypes(features, region)
    probe = torch.tensor([[[0.8, 0.6]]])
    assert foreground_score(probe, fg, bg, "dot").item() < 0 < foreground_score(probe, fg, bg, "cosine").item()


@pytest.mark.parametrize("mode", ["cam", "ram"])
def test_attention_only_modes_threshold_the_upsampled_map(mode):
    torch.manual_seed(2)
    terms = torch.rand(2, 1, 6)
    config = MethodConfig(mode=mode, map_threshold=0.5)
    maps = ground(terms, terms.flip(-1), None, (2, 3), config)
    geometry = ImageGeometry((12, 8), (12, 8), (0, 0, 12, 8), 4)
    chosen = maps.cam if mode == "cam" else maps.ram
    expected = F.interpolate(chosen[None].float(), size=(8, 12), mode="bilinear", align_corners=False)[0] > 0.5
    torch.testing.assert_close(masks_at_input(maps, geometry, config), expected)
    assert maps.score is None


def test_region_covering_everything_labels_everything_foreground():
    ram_terms = torch.ones(1, 1, 4)  # constant → minmax 0 everywhere → region empty at tau 0.8
    config = MethodConfig(tau=0.0)
    maps = ground(torch.rand(1, 1, 4), torch.rand(1, 1, 4) + 1, torch.randn(1, 4, 3), (2, 2), config)
    # at tau 0 every token but the minimum is in the region; the minimum alone forms the background
    assert maps.region.sum() == 3
    maps = ground(torch.rand(1, 1, 4), ram_terms, torch.randn(1, 4, 3), (2, 2), MethodConfig())
    assert maps.region.sum() == 0 and torch.isfinite(maps.score).all()


def test_identity_geometry_equals_bilinear_interpolate():
    maps = torch.rand(2, 3, 5)
    geometry = ImageGeometry((40, 24), (40, 24), (0, 0, 40, 24), 8)
    expected = F.interpolate(maps[:, None], size=(24, 40), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(geometry.to_input(maps), expected)


def test_geometry_with_crop_and_resize_puts_tokens_where_the_pixels_were():
    # Input 100x60 resized to 50x30, cropped to the centre 48x28 (left 1, top 1), 4 px per token.
    geometry = ImageGeometry(input_size=(100, 60), resized_size=(50, 30), crop=(1, 1, 48, 28), patch=4)
    assert geometry.grid == (7, 12)
    step = torch.zeros(1, 7, 12)
    step[..., 6:] = 1.0  # right half of the token grid
    out = geometry.to_input(step)[0]
    # The token edge sits at crop x = 24 → resized x = 25 → input x = 50.
    assert torch.allclose(out[:, :44], torch.tensor(0.0)) and torch.allclose(out[:, 56:], torch.tensor(1.0))
    transition = out[30].numpy()
    assert abs(np.interp(0.5, transition, np.arange(100)) - 50) < 1.0
    with pytest.raises(ValueError):
        geometry.to_input(torch.zeros(1, 3, 3))
