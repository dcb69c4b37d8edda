"""RefAM's equations as pure functions of recorded per-token attention (Kukleva et al. 2025, §3.2-3.5, App. B).

No model code here: inputs are the per-block, per-token image→token maps and text→text masses a
:class:`~editseg.probing.token_attention.TokenAttentionRecorder` collected; outputs are token-grid
heatmaps, the argmax point and the mask choice.

- ``ê = e ⊕ magnets``: the expression with attention magnets appended (§4: "_", "with", "to",
  "and" and the colour "pink");
- ``M^(k)``: the map of token ``k``, the mean over heads and blocks of ``softmax_k`` over ê's
  tokens (App. B) — or of the raw joint-softmax attention (``token_softmax=False``);
- ``H_e = mean{M^(k) | t_k ∈ ê, t_k ∉ S_stop}`` with S_stop = NLTK stop words + "_", ";", ".",
  "-", the magnets (by position) and ``</s>`` (§3.2, §4), GAS tokens (§3.3) and, with the
  noun-phrase switch, everything outside the expression's noun phrase (Table 6 "NP");
- GAS: tokens whose text→text mass, averaged over blocks and queries, exceeds 10× the mean over
  tokens (§3.3);
- ``p_ref = argmax H_e`` (after the optional spatial prior, Table 6 "SB").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# RefAM appendix B: NLTK's English stop words, extended by the tokenizer symbols "_", ";", ".", "-".
NLTK_STOP_WORDS = frozenset(
    """i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
    herself it its itself they them their theirs themselves what which who whom this that these those am is are
    was were be been being have has had having do does did doing a an the and but if or because as until while
    of at by for with about against between into through during before after above below to from up down in out
    on off over under again further then once here there when where why how all any both each few more most
    other some such no nor not only own same so than too very s t can will just don should now""".split()
)
SYMBOLS = frozenset({"_", ";", ".", "-", "▁", ""})
STOP_SET = NLTK_STOP_WORDS | SYMBOLS
MAGNETS = ("_", "with", "to", "and")  # §4 Implementation details
COLOR_MAGNETS = ("pink",)  # §4: the auxiliary colour magnet

ROLES = ("content", "stop", "magnet", "eos", "symbol")


@dataclass(frozen=True)
class TrackedToken:
    """One real token of ê: its position in the text stream, its text and role.

    ``role``: ``content`` (a non-stop word of the expression), ``stop`` (a stop word of the
    expression), ``magnet`` (an appended magnet), ``eos`` (``</s>``), ``symbol`` (punctuation or a
    bare word-start piece); ``in_noun_phrase``: inside the expression's noun phrase span."""

    position: int
    text: str
    role: str
    in_noun_phrase: bool = True


def expanded_expression(expression: str, magnets: tuple[str, ...]) -> tuple[str, tuple[int, int]]:
    """``ê`` and the character span of ``e`` inside it (magnets appended, space-separated)."""
    text = " ".join([expression, *magnets]) if magnets else expression
    return text, (0, len(expression))


def classify_tokens(
    text: str,
    offsets: list[tuple[int, int]],
    positions: list[int],
    expression_span: tuple[int, int],
    noun_phrase_span: tuple[int, int] | None = None,
    eos_position: int | None = None,
) -> list[TrackedToken]:
    """Roles of the tracked tokens ``positions`` of the encoder ``text`` (``offsets`` are every
    token's character span in ``text``; spans are absolute). ``eos_position`` is the end-of-sequence
    token (``</s>`` for T5; the turn's closing ``<|im_end|>`` for chat-templated encoders).

    A token's word is the maximal run of word characters around it, so sub-word pieces of a stop
    word are stop tokens and pieces of a content word are content tokens. Tokens outside the
    expression span are magnets (they were appended after it)."""
    tokens = []
    start, end = expression_span
    for position in positions:
        a, b = offsets[position]
        piece = text[a:b]
        while a < b and not text[a].isalnum() and text[a] not in "_;.-":  # byte-level BPE spans carry the leading space
            a += 1
        if position == eos_position:
            tokens.append(TrackedToken(position, piece or "</s>", "eos", False))
            continue
        word = _word_around(text, a, b)
        inside = b > a and a >= start and b <= end
        np_inside = noun_phrase_span is None or (b > a and a >= noun_phrase_span[0] and b <= noun_phrase_span[1])
        stripped = piece.strip().strip("▁")
        if not inside:
            role = "magnet"
        elif not stripped or not any(ch.isalnum() for ch in stripped):
            role = "symbol"
        elif word.lower() in STOP_SET:
            role = "stop"
        else:
            role = "content"
        tokens.append(TrackedToken(position, piece, role, inside and np_inside))
    return tokens


def append_random_vector_magnets(
    embeds: torch.Tensor, tokens: list[list[TrackedToken]], num_real: list[int], count: int, seed: int = 0
) -> list[list[TrackedToken]]:
    """Write ``count`` random-vector magnets into each row's first padding slots (in place) and
    track them as magnets (RefAM Table 5 "random vectors"): Gaussian vectors rescaled to the mean
    L2 norm of that row's real token embeddings. Returns the extended token lists."""
    generator = torch.Generator("cpu").manual_seed(seed)
    extended = []
    for row, (row_tokens, real) in enumerate(zip(tokens, num_real)):
        if real + count > embeds.shape[1]:
            raise ValueError(f"no room for {count} random-vector magnets after {real} tokens")
        norm = embeds[row, :real].float().norm(dim=-1).mean()
        vectors = torch.randn(count, embeds.shape[-1], generator=generator)
        vectors = vectors / vectors.norm(dim=-1, keepdim=True) * norm
        embeds[row, real : real + count] = vectors.to(embeds.device, embeds.dtype)
        extended.append(row_tokens + [TrackedToken(real + i, "<random>", "magnet", False) for i in range(count)])
    return extended


def _word_around(text: str, a: int, b: int) -> str:
    while a > 0 and (text[a - 1].isalnum() or text[a - 1] == "'"):
        a -= 1
    while b < len(text) and (text[b].isalnum() or text[b] == "'"):
        b += 1
    return text[a:b]


def per_token_maps(stacked: torch.Tensor) -> torch.Tensor:
    """``M^(k)``: the mean over blocks of (blocks, B, K, N) head-mean maps → (B, K, N)."""
    return stacked.mean(dim=0)


def detect_gas(text_mass: torch.Tensor, valid: torch.Tensor, ratio: float = 10.0) -> torch.Tensor:
    """(B, K) bool: token ``k`` is a global attention sink when its text→text mass averaged over
    blocks (``text_mass`` is (blocks, B, K)) exceeds ``ratio`` × the mean over the valid tokens."""
    mass = text_mass.mean(dim=0) * valid
    mean = mass.sum(dim=1, keepdim=True) / valid.sum(dim=1, keepdim=True).clamp_min(1)
    return (mass > ratio * mean) & valid


def keep_mask(
    tokens: list[TrackedToken],
    gas: list[bool] | None = None,
    filter_stop_words: bool = True,
    filter_magnets: bool = True,
    filter_eos: bool = True,
    noun_phrase: bool = False,
    suppress_gas: bool = True,
) -> list[bool]:
    """Which tokens enter ``H_e``; never empty (falls back, in order, to: content tokens, expression
    tokens, all tokens)."""
    keep = []
    for index, token in enumerate(tokens):
        ok = True
        if token.role == "magnet" and filter_magnets:
            ok = False
        if token.role in ("stop", "symbol") and filter_stop_words:
            ok = False
        if token.role == "eos" and filter_eos:
            ok = False
        if noun_phrase and not token.in_noun_phrase and token.role != "magnet" and token.role != "eos":
            ok = False
        if suppress_gas and gas is not None and gas[index]:
            ok = False
        keep.append(ok)
    if any(keep):
        return keep
    for fallback in (lambda t: t.role == "content", lambda t: t.role not in ("magnet", "eos"), lambda t: True):
        keep = [fallback(t) for t in tokens]
        if any(keep):
            return keep
    return keep


def aggregate(maps: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``H_e``: mean of (B, K, N) maps over the kept tokens (``keep`` (B, K) bool) → (B, N)."""
    weights = keep.to(maps.dtype)
    return (maps * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)


def minmax(heat: torch.Tensor) -> torch.Tensor:
    """Per-row min-max normalisation of (B, N) (constant rows → 0)."""
    low = heat.min(dim=1, keepdim=True).values
    span = heat.max(dim=1, keepdim=True).values - low
    return (heat - low) / torch.where(span > 0, span, torch.ones_like(span)) * (span > 0)


SPATIAL_TERMS = ("left", "right", "top", "bottom", "middle")


def spatial_prior(grid: tuple[int, int], terms: list[str]) -> torch.Tensor:
    """(rows·cols,) positional weights for absolute terms, multiplied together (1 when none).

    Cell centres ``x̂, ŷ ∈ (0, 1)``: left ``1 − x̂``, right ``x̂``, top ``1 − ŷ``, bottom ``ŷ``,
    middle ``1 − |2x̂ − 1|`` — linear ramps over the normalised grid (our reading of HybridGL's
    "normalised positional masks"; see README)."""
    rows, cols = grid
    y = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows
    x = (torch.arange(cols, dtype=torch.float32) + 0.5) / cols
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    prior = torch.ones(rows, cols)
    for term in terms:
        if term == "left":
            prior = prior * (1 - xx)
        elif term == "right":
            prior = prior * xx
        elif term == "top":
            prior = prior * (1 - yy)
        elif term == "bottom":
            prior = prior * yy
        elif term == "middle":
            prior = prior * (1 - (2 * xx - 1).abs())
        else:
            raise ValueError(f"unknown spatial term {term!r}; choose from {SPATIAL_TERMS}")
    return prior.flatten()


def argmax_cell(heat: torch.Tensor, grid: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the maximum of one (N,) heatmap (first in raster order on ties)."""
    index = int(torch.argmax(heat))
    return divmod(index, grid[1])


def cell_to_pixel(cell: tuple[int, int], grid: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int]:
    """The input pixel (x, y) at the centre of grid cell (row, col) (the image was resized, not cropped)."""
    row, col = cell
    width, height = input_size
    x = int((col + 0.5) / grid[1] * width)
    y = int((row + 0.5) / grid[0] * height)
    return min(x, width - 1), min(y, height - 1)


MASK_CHOICES = ("best-score", "largest", "smallest", "first")


def choose_mask(masks: np.ndarray, scores: np.ndarray, rule: str = "best-score") -> int:
    """Index of the SAM multimask output to keep: highest predicted IoU (``best-score``, SAM's own
    single-output rule and our reading of "the final segmentation mask produced by SAM"), the
    largest or smallest mask, or the first."""
    if rule == "best-score":
        return int(np.argmax(scores))
    areas = masks.reshape(len(masks), -1).sum(1)
    if rule == "largest":
        return int(np.argmax(areas))
    if rule == "smallest":
        return int(np.argmin(areas))
    if rule == "first":
        return 0
    raise ValueError(f"unknown mask choice {rule!r}; choose from {MASK_CHOICES}")
