"""Ref-Diff end to end on tiny random SD 1.5 / SAM / CLIP of the real classes (no downloads)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.errors import ConfigError, ExpressionError
from editseg.methods import ref_diff_scores as eq
from editseg.methods.ref_diff import RefDiff
from editseg.methods.ref_diff_config import RefDiffConfig

SAM_LOW = dict(sam_pred_iou_thresh=-1.0, sam_stability_thresh=0.2, sam_points_per_side=4, attention_levels=(0, 1))


@pytest.fixture(scope="module")
def loaded():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RefDiff.from_pretrained("tiny-random-sd15", device="cpu", config=RefDiffConfig(**SAM_LOW))


@pytest.fixture(scope="module")
def image():
    return Image.fromarray((np.random.default_rng(5).random((40, 56, 3)) * 255).astype(np.uint8))


def test_full_method_follows_the_equations(loaded, image):
    loaded.set_image(image)
    results = loaded.predict(["the man on the left", "a red car"])
    assert [r.expression for r in results] == ["the man on the left", "a red car"]
    for r in results:
        c = r.maps["generative"]
        assert r.method == "ref-diff" and r.mask.shape == (40, 56) and r.mask.dtype == bool
        assert c.shape == (40, 56) and c.min() >= -1e-6 and c.max() <= 1 + 1e-6
        assert set(r.maps) == {"generative", "discriminative", "proposal_scores"}
        assert all(m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1 for m in r.maps.values())
        assert r.token_maps["generative"].shape == (32, 32)  # level 0 of a 64 px square through a 2x VAE
        masks = np.stack([p["mask"] for p in r.proposals])
        assert all(p["source"] == "sam" for p in r.proposals)
        naive_g = eq.generative_scores(c, masks)
        np.testing.assert_allclose([p["generative"] for p in r.proposals], naive_g, rtol=1e-6)
        total = [0.1 * p["generative"] + 0.9 * p["discriminative"] for p in r.proposals]
        np.testing.assert_allclose([p["score"] for p in r.proposals], total, rtol=1e-6)
        assert (r.mask == masks[int(np.argmax(total))]).all()
        ys, xs = np.nonzero(r.mask)
        assert r.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert results[0].config["root_word"] == "man" and results[0].config["direction"] == "left"
    assert results[1].config["root_word"] == "car" and results[1].config["direction"] is None


def test_discriminative_scores_recomputed(loaded, image):
    loaded.set_image(image)
    (r,) = loaded.predict(["the man on the left"])
    masks = np.stack([p["mask"] for p in r.proposals])
    rgb = np.asarray(image)
    p = np.ones((40, 56)) - np.arange(56)[None, :] / 55.0  # left: 1 -> 0 across the width
    biased = np.rint(rgb * p[..., None]).astype(np.uint8)
    clip = loaded.clip
    f_m = clip.encode_masked_attention(biased, masks, layer=-2)  # eq. 7: P on the masked-attention branch
    f_c = clip.encode_crops(rgb, masks, layer=-1)
    text = clip.encode_text(["the man on the left", "man"])
    naive = ((0.3 * f_m + 0.7 * f_c) @ ((text[0] + text[1]) / 2)).numpy()
    np.testing.assert_allclose([q["discriminative"] for q in r.proposals], naive, rtol=1e-5, atol=1e-6)


def test_batching_does_not_change_maps(loaded, image):
    loaded.set_image(image)
    together = loaded.predict(["a red car", "the dog behind the bus"])
    alone = loaded.predict(["the dog behind the bus"])
    np.testing.assert_allclose(together[1].maps["generative"], alone[0].maps["generative"], atol=1e-5)


def test_token_choice(loaded):
    chosen, tokens, root = loaded.token_selection("the man on the left")
    assert root == "man" and len(chosen) == 1 and "".join(tokens).replace("</w>", "") in "man"
    everything = RefDiff(loaded.unet, loaded.sam, loaded.clip, RefDiffConfig(token="all"))
    chosen_all, tokens_all, _ = everything.token_selection("the man on the left")
    assert "".join(tokens_all).replace("</w>", "") == "themanontheleft" and chosen_all[0] == 1


def test_generative_only_variant(loaded, image):
    g = RefDiff(loaded.unet, None, None, RefDiffConfig.preset("G", attention_levels=(1,)))
    g.set_image(image)
    (r,) = g.predict(["the man on the left"])
    c = r.maps["generative"]
    assert all(p["source"] == "generative" for p in r.proposals)
    thresholds = [p["threshold"] for p in r.proposals]
    for p in r.proposals:
        np.testing.assert_array_equal(p["mask"], c >= p["threshold"])
        assert p["score"] == pytest.approx(p["generative"])
    best = int(np.argmax(eq.generative_scores(c, np.stack([c >= t for t in thresholds]))))
    assert (r.mask == (c >= thresholds[best])).all()


def test_logits_mode_and_official_preset_run(loaded, image):
    code = RefDiff(loaded.unet, loaded.sam, loaded.clip, RefDiffConfig.preset("official-code", **{**SAM_LOW, "sam_min_area": 0}))
    code.set_image(image)
    (r,) = code.predict(["the man on the left"])
    assert r.mask.shape == (40, 56) and r.config["attention_mode"] == "logits-cfg"


def test_errors(loaded, image):
    fresh = RefDiff(loaded.unet, loaded.sam, loaded.clip, RefDiffConfig(**SAM_LOW))
    with pytest.raises(ConfigError):
        fresh.predict(["x"])
    fresh.set_image(image)
    with pytest.raises(ExpressionError):
        fresh.predict(["  "])
    with pytest.raises(ConfigError, match="SAM"):
        RefDiff(loaded.unet, None, loaded.clip, RefDiffConfig())
    with pytest.raises(ConfigError, match="CLIP"):
        RefDiff(loaded.unet, loaded.sam, None, RefDiffConfig())


def test_options_build_the_config():
    from editseg.methods.ref_diff import _config_from_options

    opts = {"preset": "GS", "alpha": 0.7, "batch_size": 2}
    cfg = _config_from_options(None, opts)
    assert cfg.alpha == 0.7 and cfg.proposals == "sam" and opts == {"batch_size": 2}
    assert _config_from_options(RefDiffConfig(beta=0.5), {"steps": 3}).replace() == RefDiffConfig(beta=0.5, steps=3)
    with pytest.raises(ConfigError):
        _config_from_options(RefDiffConfig(), {"preset": "G"})
    with pytest.raises(ConfigError, match="Unknown"):
        RefDiff.from_pretrained("tiny-random-sd15", device="cpu", nonsense=1)
