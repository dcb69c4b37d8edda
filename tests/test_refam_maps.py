"""RefAM's equations (refam_maps) and expression parsing (refam_text) against naive transcriptions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editseg.methods import refam_maps as maps
from editseg.methods.refam_text import ExpressionParser, parse_doc, parse_rules


def test_stop_list_is_the_papers():
    # App. B: NLTK's 127 English stop words (the list printed in the paper) plus "_", ";", ".", "-".
    assert len(maps.NLTK_STOP_WORDS) == 127
    assert {"_", ";", ".", "-"} <= maps.STOP_SET
    assert maps.MAGNETS == ("_", "with", "to", "and") and maps.COLOR_MAGNETS == ("pink",)
    text, span = maps.expanded_expression("the pink dog", maps.MAGNETS + maps.COLOR_MAGNETS)
    assert text == "the pink dog _ with to and pink" and text[slice(*span)] == "the pink dog"


def test_classify_tokens_by_position_and_word():
    text = "the pink dog-like cat _ with to and pink"
    words = text.split()
    # word-level "tokens" with offsets, then a trailing </s> (offset (0, 0))
    offsets, start = [], 0
    for w in words:
        a = text.index(w, start)
        offsets.append((a, a + len(w)))
        start = a + len(w)
    offsets.append((0, 0))
    tokens = maps.classify_tokens(text, offsets, list(range(len(offsets))), (0, 21), (0, 12), eos_position=len(offsets) - 1)
    roles = [t.role for t in tokens]
    assert roles == ["stop", "content", "content", "content", "magnet", "magnet", "magnet", "magnet", "magnet", "eos"]
    # the expression's own "pink" is content, the appended one a magnet (filtered by position)
    assert tokens[1].role == "content" and tokens[8].role == "magnet"
    assert [t.in_noun_phrase for t in tokens[:4]] == [True, True, False, False]


def test_gas_rule_against_loops():
    torch.manual_seed(0)
    mass = torch.rand(5, 2, 16) * 0.05
    mass[:, 0, 2] = 2.0  # a sink in row 0
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, 15] = False
    got = maps.detect_gas(mass, valid, 10.0)
    for b in range(2):
        n = int(valid[b].sum())
        avg = [float(mass[:, b, k].mean()) for k in range(n)]
        mean = sum(avg) / n
        for k in range(6):
            assert bool(got[b, k]) == (k < n and avg[k] > 10 * mean)
    assert got[0, 2] and not got[1].any()
    # The mean includes the sink itself, so with K <= 10 tokens the literal 10x rule cannot fire.
    assert not maps.detect_gas(mass[:, :, :10], valid[:, :10], 10.0).any()


def test_aggregate_is_the_mean_over_kept_tokens():
    torch.manual_seed(1)
    m = torch.rand(2, 5, 7)
    keep = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)
    got = maps.aggregate(m, keep)
    for b in range(2):
        expected = torch.stack([m[b, k] for k in range(5) if keep[b, k]]).mean(0)
        torch.testing.assert_close(got[b], expected)
    torch.testing.assert_close(maps.per_token_maps(torch.ones(3, 1, 2, 2) * torch.arange(3.0)[:, None, None, None]),
                               torch.ones(1, 2, 2))


def test_classify_tokens_with_leading_space_offsets():
    # byte-level BPE (Qwen) offsets include the space before a word: " the" is still a stop word
    text = "the red dog _ with"
    offsets = [(0, 3), (3, 7), (7, 11), (11, 13), (13, 18)]
    tokens = maps.classify_tokens(text, offsets, [0, 1, 2, 3, 4], (0, 11))
    assert [t.role for t in tokens] == ["stop", "content", "content", "magnet", "magnet"]
    tokens = maps.classify_tokens("a the", [(0, 1), (1, 5)], [0, 1], (0, 5))
    assert [t.role for t in tokens] == ["stop", "stop"]


def test_keep_mask_filters_and_falls_back():
    T = maps.TrackedToken
    row = [T(0, "the", "stop"), T(1, "red", "content"), T(2, "dog", "content", False), T(3, "with", "magnet"), T(4, "</s>", "eos", False)]
    assert maps.keep_mask(row) == [False, True, True, False, False]
    assert maps.keep_mask(row, noun_phrase=True) == [False, True, False, False, False]
    assert maps.keep_mask(row, gas=[False, True, False, False, False]) == [False, False, True, False, False]
    assert maps.keep_mask(row, gas=[False, True, False, False, False], suppress_gas=False) == [False, True, True, False, False]
    assert maps.keep_mask(row, filter_stop_words=False, filter_magnets=False, filter_eos=False) == [True] * 5
    only_stop = [T(0, "the", "stop"), T(1, "one", "stop"), T(2, "</s>", "eos", False)]
    assert maps.keep_mask(only_stop) == [True, True, False]  # never empty: falls back to the expression


def test_spatial_prior_cells():
    grid = (3, 4)
    prior = maps.spatial_prior(grid, ["left", "top"]).view(grid)
    for r in range(3):
        for c in range(4):
            x, y = (c + 0.5) / 4, (r + 0.5) / 3
            assert prior[r, c].item() == pytest.approx((1 - x) * (1 - y))
    middle = maps.spatial_prior(grid, ["middle"]).view(grid)
    assert middle[0, 1].item() == pytest.approx(1 - abs(2 * 0.375 - 1))
    assert torch.all(maps.spatial_prior(grid, []) == 1)
    with pytest.raises(ValueError):
        maps.spatial_prior(grid, ["behind"])


def test_argmax_point_and_mask_choice():
    heat = torch.zeros(12)
    heat[6] = 1.0  # row 1, col 2 of a 3x4 grid
    assert maps.argmax_cell(heat, (3, 4)) == (1, 2)
    assert maps.cell_to_pixel((1, 2), (3, 4), (80, 30)) == (50, 15)
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0, :1] = True
    masks[1, :3] = True
    masks[2, :2] = True
    scores = np.array([0.2, 0.5, 0.9])
    assert maps.choose_mask(masks, scores, "best-score") == 2
    assert maps.choose_mask(masks, scores, "largest") == 1
    assert maps.choose_mask(masks, scores, "smallest") == 0
    with pytest.raises(ValueError):
        maps.choose_mask(masks, scores, "biggest")


@pytest.mark.parametrize(
    "expression, phrase, terms, relative",
    [
        ("the man in the red shirt on the left", "the man", ["left"], []),
        ("left zebra", "left zebra", ["left"], []),
        ("dog to the left of the car", "dog", [], ["left"]),
        ("top right corner cake", "top right corner cake", ["top", "right"], []),
        ("guy holding a bat", "guy", [], []),
    ],
)
def test_rule_based_parser(expression, phrase, terms, relative):
    parsed = parse_rules(expression)
    assert parsed.noun_phrase == phrase and expression[slice(*parsed.span)] == phrase
    assert parsed.terms == terms and parsed.relative == relative and parsed.parser == "rules"


def test_parser_without_model_falls_back_to_rules():
    parser = ExpressionParser("auto", model="no_such_spacy_model_xyz")
    assert parser.name == "rules"
    assert ExpressionParser("rules").name == "rules"


def test_spacy_doc_built_in_process():
    spacy = pytest.importorskip("spacy")
    from spacy.tokens import Doc

    nlp = spacy.blank("en")
    words = ["the", "man", "in", "the", "red", "shirt", "on", "the", "left"]
    heads = [1, 1, 1, 5, 5, 2, 1, 8, 6]
    deps = ["det", "ROOT", "prep", "det", "amod", "pobj", "prep", "det", "pobj"]
    pos = ["DET", "NOUN", "ADP", "DET", "ADJ", "NOUN", "ADP", "DET", "NOUN"]
    doc = Doc(nlp.vocab, words=words, heads=heads, deps=deps, pos=pos)
    expression = " ".join(words)
    parsed = parse_doc(doc, expression)
    assert parsed.noun_phrase == "the man" and parsed.span == (0, 7)
    assert parsed.terms == ["left"] and parsed.parser == "spacy"
    # the same Doc through ExpressionParser with an injected pipeline
    parser = ExpressionParser("spacy", nlp=lambda text: doc)
    assert parser(expression).noun_phrase == "the man"


def test_random_vector_magnets():
    torch.manual_seed(0)
    embeds = torch.randn(2, 10, 8)
    before = embeds.clone()
    T = maps.TrackedToken
    tokens = [[T(0, "dog", "content"), T(1, "</s>", "eos", False)], [T(0, "a", "stop"), T(1, "b", "content"), T(2, "</s>", "eos", False)]]
    out = maps.append_random_vector_magnets(embeds, tokens, [2, 3], 3, seed=1)
    assert [t.position for t in out[0]] == [0, 1, 2, 3, 4] and [t.role for t in out[0][2:]] == ["magnet"] * 3
    assert [t.position for t in out[1][3:]] == [3, 4, 5]
    for row, real in ((0, 2), (1, 3)):
        torch.testing.assert_close(embeds[row, :real], before[row, :real])
        torch.testing.assert_close(embeds[row, real + 3 :], before[row, real + 3 :])
        target = before[row, :real].norm(dim=-1).mean()
        torch.testing.assert_close(embeds[row, real : real + 3].norm(dim=-1), target.expand(3))
    assert maps.keep_mask(out[0]) == [True, False, False, False, False]
    with pytest.raises(ValueError):
        maps.append_random_vector_magnets(embeds, tokens, [2, 3], 8)
