"""Ref-Diff's equations against naive transcriptions; its text analysis; its config."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from editseg.errors import ConfigError
from editseg.methods import ref_diff_scores as eq
from editseg.methods.ref_diff_config import RefDiffConfig
from editseg.methods.ref_diff_text import direction_clue, root_by_rules, root_from_doc, root_word

rng = np.random.default_rng(0)


def test_eq1_eq2_combination_and_argmax():
    g, d = rng.normal(size=7), rng.normal(size=7)
    for alpha in (0.0, 0.1, 1.0):
        naive = [alpha * g[i] + (1 - alpha) * d[i] for i in range(7)]
        np.testing.assert_allclose(eq.combine(g, d, alpha), naive)
    s = np.array([0.1, 0.5, 0.5, -1])
    assert eq.select(s) == 1


def test_eq5_normalisation():
    a = torch.tensor(rng.normal(size=(4, 6)), dtype=torch.float64)
    eps = 1e-8
    naive = (a - a.min()) / (a.max() - a.min() + eps)
    torch.testing.assert_close(eq.normalize_attention(a, eps), naive)
    assert float(eq.normalize_attention(a).max()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("direction", ["left", "right", "top", "bottom"])
def test_eq6_positional_bias(direction):
    h, w = 5, 9
    p = eq.positional_bias(h, w, direction, extent=1.0)
    naive = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            pos = {"left": x / (w - 1), "right": 1 - x / (w - 1), "top": y / (h - 1), "bottom": 1 - y / (h - 1)}[direction]
            naive[y, x] = 1 - pos
    np.testing.assert_allclose(p, naive, atol=1e-6)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    np.testing.assert_array_equal(eq.apply_bias(image, p), np.rint(image * p[..., None]).astype(np.uint8))


def test_eq6_extent_and_no_clue():
    p = eq.positional_bias(2, 9, "left", extent=2 / 3)
    np.testing.assert_allclose(p[0, :6], np.linspace(1, 0, 6), atol=1e-6)
    assert (p[:, 6:] == 0).all()
    q = eq.positional_bias(2, 9, "right", extent=2 / 3)
    np.testing.assert_allclose(q[0], p[0, ::-1])
    assert (eq.positional_bias(3, 4, None) == 1).all()


def test_eq7_eq10_discriminative():
    fm = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    fc = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    t_global = torch.nn.functional.normalize(torch.randn(8), dim=0)
    t_subject = torch.nn.functional.normalize(torch.randn(8), dim=0)
    v = eq.region_embedding(fm, fc, 0.3)
    r = eq.text_representation(t_global, t_subject)
    naive = [sum((0.3 * fm[i, j] + 0.7 * fc[i, j]) * (t_global[j] + t_subject[j]) / 2 for j in range(8)) for i in range(4)]
    np.testing.assert_allclose(eq.discriminative_scores(v, r), [float(x) for x in naive], rtol=1e-5)


def test_eq8_weight_free_proposals():
    c = rng.random((6, 7))
    masks = eq.weight_free_proposals(c)
    assert masks.shape == (19, 6, 7)
    for i, mu in enumerate([0.05 * k for k in range(1, 20)]):
        np.testing.assert_array_equal(masks[i], c >= round(mu, 2))


def test_eq9_generative_scores():
    c = rng.random((5, 6))
    masks = rng.random((4, 5, 6)) > 0.5
    masks[2] = True  # no outside pixels
    masks[3] = False  # no inside pixels
    got = eq.generative_scores(c, masks)
    for i, m in enumerate(masks):
        inside = c[m].sum() / m.sum() if m.any() else 0.0
        outside = c[~m].sum() / (~m).sum() if (~m).any() else 0.0
        assert got[i] == pytest.approx(inside - outside)


def test_root_rules_and_directions():
    assert root_by_rules("the man in the red shirt").text == "man"
    assert root_by_rules("left zebra").text == "zebra"
    assert root_by_rules("zebra on the left").text == "zebra"
    assert root_by_rules("black horse jumping").text == "horse"
    assert root_by_rules("tall building behind the car").text == "building"
    r = root_by_rules("a big red car near the bus")
    assert r.text == "car" and "a big red car near the bus"[slice(*r.span)] == "car"
    assert direction_clue("the leftmost girl") == "left"
    assert direction_clue("top right corner") == "top"
    assert direction_clue("top right corner", ("left", "right")) == "right"
    assert direction_clue("a dog") is None
    assert root_word("the man", parser="rules").parser == "rules"
    with pytest.raises(ValueError):
        root_word("x", parser="nope")


def test_root_from_parse_uses_first_root_or_subject():
    tok = lambda text, dep, idx: SimpleNamespace(text=text, dep_=dep, idx=idx)  # noqa: E731
    doc = [tok("the", "det", 0), tok("horse", "ROOT", 4), tok("jumping", "acl", 10)]
    assert root_from_doc(doc, "the horse jumping").text == "horse"
    doc = [tok("man", "nsubj", 0), tok("holding", "ROOT", 4), tok("cup", "dobj", 12)]
    r = root_from_doc(doc, "man holding cup")
    assert r.text == "man" and r.span == (0, 3) and r.parser == "spacy"


def test_config_presets_and_validation():
    assert RefDiffConfig().alpha == 0.1 and RefDiffConfig().beta == 0.3 and RefDiffConfig().steps == 2
    g = RefDiffConfig.preset("G")
    assert g.proposals == "generative" and g.alpha == 1.0 and not g.uses_clip and not g.uses_sam
    assert RefDiffConfig.preset("DS").alpha == 0.0 and RefDiffConfig.preset("GS").uses_sam
    code = RefDiffConfig.preset("official-code")
    assert code.bias_target == "crop" and code.sam_top_k == 10
    for bad in ({"alpha": 1.5}, {"proposals": "x"}, {"steps": 0}, {"attention_levels": ()}, {"positional_extent": 0}):
        with pytest.raises(ConfigError):
            RefDiffConfig(**bad)
    with pytest.raises(ConfigError):
        RefDiffConfig.preset("nope")
    assert RefDiffConfig().to_dict()["thresholds"][0] == 0.05


def test_proposal_score_map_naive():
    masks = rng.random((3, 4, 5)) > 0.5
    scores = np.array([0.2, -1.0, 3.0])
    got = eq.proposal_score_map(masks, scores)
    norm = (scores + 1.0) / 4.0
    for y in range(4):
        for x in range(5):
            covering = [norm[i] for i in range(3) if masks[i, y, x]]
            assert got[y, x] == pytest.approx(max(covering) if covering else 0.0)
