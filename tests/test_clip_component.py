"""CLIP component on a tiny random CLIPConfig of the real transformers classes (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from editseg.components.clip import ClipComponent, crop_to_mask, mask_token_attention, patch_coverage
from editseg.components.tiny import TINY_CLIP
from editseg.errors import ConfigError, ModelNotFoundError


@pytest.fixture(scope="module")
def clip():
    return ClipComponent.from_pretrained(TINY_CLIP, device="cpu")


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(2).random((40, 56, 3)) * 255).astype(np.uint8)


def test_text_and_image_features_match_clipmodel(clip, image):
    texts = ["the man in a red shirt", "dog"]
    inputs = clip.processor(text=texts, images=[image], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = clip.model(**inputs)
    np.testing.assert_allclose(clip.encode_text(texts).numpy(), F.normalize(out.text_embeds, dim=-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(clip.encode_images([image]).numpy(), F.normalize(out.image_embeds, dim=-1).numpy(), atol=1e-5)


def test_crop_to_mask_naive():
    img = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:7] = True
    mask[2, 2] = False
    out = crop_to_mask(img, mask)
    assert out.shape == (5, 5, 3)
    # the 2x5 box sits centred vertically: top offset (5 - 2) // 2 = 1
    expected = img[1:3, 2:7] * mask[1:3, 2:7, None]
    assert (out[1:3] == expected).all() and (out[0] == 0).all() and (out[3:] == 0).all()
    assert (crop_to_mask(img, np.zeros((6, 8), bool)) == img).all()


def test_patch_coverage_naive():
    mask = np.zeros((1, 8, 12), bool)
    mask[0, :4, :3] = True
    cov = patch_coverage(torch.from_numpy(mask), (2, 3)).numpy()
    np.testing.assert_allclose(cov[0], [0.75, 0, 0, 0, 0, 0])


def test_attention_pattern():
    inside = torch.tensor([[True, False, True], [False, False, False]])
    allowed = mask_token_attention(inside)
    assert allowed.shape == (6, 6)
    assert allowed[:4, :4].all() and not allowed[:4, 4:].any()
    assert allowed[4].tolist() == [False, True, False, True, True, False]
    assert allowed[5].tolist() == [False, False, False, False, False, True]


def _naive_masked_cls(clip, pixels, inside_row, layer):
    """One mask at a time: vanilla sequence [CLS | patches], CLS row may not see outside patches."""
    vision = clip.vision
    hidden = vision.pre_layrnorm(vision.embeddings(pixels, interpolate_pos_encoding=True))
    size = hidden.shape[1]
    bias = torch.zeros((size, size))
    bias[0, 1:][~inside_row] = float("-inf")
    layers = vision.encoder.layers
    for block in layers[: len(layers) + layer + 1]:
        hidden = block(hidden, bias[None, None])
    return F.normalize(clip.model.visual_projection(vision.post_layernorm(hidden[:, 0])), dim=-1)


def test_masked_attention_against_naive(clip, image):
    masks = np.zeros((3, 40, 56), bool)
    masks[0, 4:30, 3:20] = True
    masks[1, 20:, 30:] = True
    masks[2] = True
    got = clip.encode_masked_attention(image, masks, layer=-2)
    pixels, grid = clip.masked_attention_inputs(image)
    assert grid == (4, 6)  # shorter side 40 -> 32 px = 4 patches; 56 * 0.8 = 44.8 -> 6 patches
    inside = patch_coverage(torch.from_numpy(masks), grid) >= 0.5
    with torch.no_grad():
        for i in range(3):
            naive = _naive_masked_cls(clip, pixels, inside[i], layer=-2)
            np.testing.assert_allclose(got[i].numpy(), naive[0].numpy(), atol=1e-5)
        # full mask = the vanilla class token at the penultimate layer
        vanilla = _naive_masked_cls(clip, pixels, torch.ones(24, dtype=torch.bool), layer=-2)
    np.testing.assert_allclose(got[2].numpy(), vanilla[0].numpy(), atol=1e-5)
    assert not np.allclose(got[0].numpy(), got[1].numpy())


def test_tiny_mask_keeps_one_patch(clip, image):
    masks = np.zeros((1, 40, 56), bool)
    masks[0, 0, 0] = True
    out = clip.encode_masked_attention(image, masks)
    assert torch.isfinite(out).all()


def test_errors(clip, image, tmp_path):
    with pytest.raises(ConfigError):
        clip.encode_images([image], layer=-10)
    with pytest.raises(ModelNotFoundError, match="CLIP"):
        ClipComponent.from_pretrained(str(tmp_path / "nope"), device="cpu")


def test_loads_a_saved_folder(tmp_path, clip, image):
    clip.model.save_pretrained(tmp_path)
    clip.processor.save_pretrained(tmp_path)
    loaded = ClipComponent.from_pretrained(str(tmp_path), device="cpu")
    torch.testing.assert_close(loaded.encode_images([image]), clip.encode_images([image]))
    torch.testing.assert_close(loaded.encode_text(["a dog"]), clip.encode_text(["a dog"]))
