"""Streaming attention probes: what the method needs from each block, without any N x N matrix.

The joint sequence of every backbone is ``[text | noisy image | clean (reference) image]``.
For the clean-image query rows ``v`` of block ``l`` the paper needs (head mean ``Ā = mean_h A_h``):

- ``c_l = Ā[v, p] · 1``              image→prompt mass over the chosen prompt tokens (eq. 3)
- ``r_l = D(Ā[v,v]·1)^-1 Ā[v,v] c_l`` random-walk propagation of ``c_l`` (eq. 4)

``A[v, S] · x`` for a key subset ``S`` and per-key vector ``x`` is an attention call whose value
tensor holds ``x`` on ``S`` and 0 elsewhere, so both are computed with fused attention
(``scaled_dot_product_attention``) on the clean query rows only:

1. one call over all keys with two value channels (prompt indicator, clean indicator) gives, per
   head, ``c_h = A_h[v,p]·1`` and ``d_h = A_h[v,v]·1``;
2. one call over the clean keys only with value ``c̄ = mean_h c_h`` gives ``T_h c̄``, where
   ``T_h`` is A_h[v,v] renormalised within the clean keys. Since the softmax over a key subset
   differs from the full softmax only by the row factor ``d_h``,
   ``A_h[v,v] c̄ = d_h ⊙ (T_h c̄)``, and ``r = mean_h(d_h ⊙ T_h c̄) / mean_h d_h`` exactly.

With ``ProbePlan.fused`` (default) step 1 rides along the model's own attention call: q and k
get 8 zero channels (scores unchanged; the softmax scale stays 1/sqrt(head_dim)) and v gets the
two indicator channels, so the extra cost of step 1 is 8 channels of one attention call instead
of a second pass over all keys. The model output then equals the bare output up to float
rounding (the kernel reduces over a wider head); ``fused=False`` keeps it bit-identical.

Memory is O(N) per block. Probe maths runs in float32 (``probe_dtype``) whatever the model dtype.
Value tensors are zero-padded to the head dimension: fused kernels (flash on CPU and GPU) need
value and query widths to match, and the math fallback they would otherwise take materialises
the attention matrix (measured on CPU: 15x slower, quadratic memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F

FEATURE_SITES = ("attn", "adaln", "block")
"""Where clean-token features are read in a block (paper Table 3):

- ``attn``: the MMSA output ``A·V`` (heads concatenated, before the output projection) — eq. 1;
- ``adaln``: the block's post-AdaLN (normalised and modulated) input to attention;
- ``block``: the block's output hidden states.
"""


@dataclass(frozen=True)
class TokenLayout:
    """Where each token type sits in the joint sequence ``[text | noisy | clean]``."""

    text_len: int
    noisy_len: int
    clean_len: int
    grid: tuple[int, int]  # (rows, cols) of the clean-token grid

    def __post_init__(self) -> None:
        if self.grid[0] * self.grid[1] != self.clean_len:
            raise ValueError(f"grid {self.grid} does not hold {self.clean_len} clean tokens")

    @property
    def total_len(self) -> int:
        return self.text_len + self.noisy_len + self.clean_len

    @property
    def text(self) -> slice:
        return slice(0, self.text_len)

    @property
    def noisy(self) -> slice:
        return slice(self.text_len, self.text_len + self.noisy_len)

    @property
    def clean(self) -> slice:
        return slice(self.text_len + self.noisy_len, self.total_len)

    @property
    def clean_in_image_stream(self) -> slice:
        """The clean slice within the image stream ``[noisy | clean]`` of a double-stream block."""
        return slice(self.noisy_len, self.noisy_len + self.clean_len)


@dataclass
class ProbePlan:
    """What to record during one forward pass.

    ``prompt_mask`` is (batch, text_len), 1 on the prompt tokens of each batch element.
    ``attention_blocks=None`` records every block. ``features`` maps a site to block indices.
    Block indices are global: double-stream blocks first, then single-stream blocks, from 0.
    """

    layout: TokenLayout
    prompt_mask: torch.Tensor
    attention_blocks: frozenset[int] | None = None
    features: dict[str, frozenset[int]] = field(default_factory=dict)
    probe_dtype: torch.dtype = torch.float32
    fused: bool = True

    def __post_init__(self) -> None:
        if self.prompt_mask.ndim != 2 or self.prompt_mask.shape[1] != self.layout.text_len:
            raise ValueError(
                f"prompt_mask must be (batch, {self.layout.text_len}), got {tuple(self.prompt_mask.shape)}"
            )
        for site in self.features:
            if site not in FEATURE_SITES:
                raise ValueError(f"unknown feature site {site!r}; choose from {FEATURE_SITES}")


def clean_token_attention_statistics(
    query: torch.Tensor,
    key: torch.Tensor,
    layout: TokenLayout,
    prompt_mask: torch.Tensor,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
    probe_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block CAM and RAM terms for the clean-token rows (two probe attention calls).

    ``query`` and ``key`` are (batch, seq, heads, head_dim) exactly as the block's attention uses
    them (after QK-norm and RoPE). Returns ``(c, r)``, each (batch, clean_len):
    ``c = Ā[v,p]·1`` and ``r = D(Ā[v,v]·1)^-1 Ā[v,v] c``.
    """
    batch, seq, heads, _ = query.shape
    if seq != layout.total_len:
        raise ValueError(f"sequence length {seq} does not match the token layout ({layout.total_len})")
    q = query[:, layout.clean].transpose(1, 2).to(probe_dtype)  # B, H, Nv, D
    k = key.transpose(1, 2).to(probe_dtype)  # B, H, S, D
    width = q.shape[-1]
    indicators = query.new_zeros((batch, 1, seq, width), dtype=probe_dtype)
    indicators[:, 0, :, :2] = indicator_channels(layout, prompt_mask, probe_dtype)
    mask_rows = None if attn_mask is None else _rows(attn_mask, layout.clean)
    per_head = F.scaled_dot_product_attention(
        q, k, indicators.expand(batch, heads, seq, width), attn_mask=mask_rows, scale=scale
    )
    return propagate(q, k, per_head[..., 0], per_head[..., 1], layout, scale, mask_rows)


def indicator_channels(layout: TokenLayout, prompt_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, seq, 2): channel 0 = 1 on the prompt tokens, channel 1 = 1 on the clean tokens."""
    channels = prompt_mask.new_zeros((prompt_mask.shape[0], layout.total_len, 2), dtype=dtype)
    channels[:, layout.text, 0] = prompt_mask.to(dtype)
    channels[:, layout.clean, 1] = 1.0
    return channels


def propagate(
    q_clean: torch.Tensor,
    key: torch.Tensor,
    prompt_mass_h: torch.Tensor,
    clean_mass_h: torch.Tensor,
    layout: TokenLayout,
    scale: float | None = None,
    mask_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: from per-head masses (batch, heads, Nv) to ``(c, r)``.

    ``q_clean`` is (B, H, Nv, D) and ``key`` (B, H, S, D), both in the probe dtype.
    """
    batch, heads, clean_len, width = q_clean.shape
    prompt_mass_h, clean_mass_h = prompt_mass_h.to(q_clean.dtype), clean_mass_h.to(q_clean.dtype)
    prompt_mass = prompt_mass_h.mean(dim=1)  # c = Ā[v,p]·1
    values = q_clean.new_zeros((batch, 1, clean_len, width))
    values[:, 0, :, 0] = prompt_mass
    mask_clean = None if mask_rows is None else mask_rows[..., layout.clean]
    within_clean_h = F.scaled_dot_product_attention(
        q_clean, key[:, :, layout.clean], values.expand(batch, heads, clean_len, width), attn_mask=mask_clean, scale=scale
    )
    propagated = (clean_mass_h * within_clean_h[..., 0]).mean(dim=1)  # Ā[v,v]·c
    degree = clean_mass_h.mean(dim=1)  # Ā[v,v]·1
    return prompt_mass, propagated / degree.clamp_min(torch.finfo(q_clean.dtype).tiny)


FUSED_PAD = 8


def widen_for_fused_probe(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: TokenLayout, prompt_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """q, k, v widened by ``FUSED_PAD`` channels (zeros; indicators in v) and the original scale."""
    batch, seq, heads, width = query.shape
    pad = (0, FUSED_PAD)
    extra = value.new_zeros((batch, seq, 1, FUSED_PAD))
    extra[..., 0, :2] = indicator_channels(layout, prompt_mask.to(value.device), value.dtype)
    wide_value = torch.cat([value, extra.expand(batch, seq, heads, FUSED_PAD)], dim=-1)
    return F.pad(query, pad), F.pad(key, pad), wide_value, width**-0.5


def _rows(attn_mask: torch.Tensor, rows: slice) -> torch.Tensor:
    """Restrict a (…, queries, keys) attention mask to some query rows (broadcast masks pass through)."""
    if attn_mask.ndim >= 2 and attn_mask.shape[-2] > 1:
        return attn_mask[..., rows, :]
    return attn_mask


class ProbeRecorder:
    """Collects per-block probe results during one forward pass of a backbone.

    Backbone attention processors call :meth:`record_attention` and :meth:`record_feature`; the
    method code reads :attr:`cam`, :attr:`ram` and :attr:`features` afterwards.
    """

    def __init__(self, plan: ProbePlan):
        self.plan = plan
        self.cam: dict[int, torch.Tensor] = {}
        self.ram: dict[int, torch.Tensor] = {}
        self.features: dict[tuple[str, int], torch.Tensor] = {}

    @property
    def layout(self) -> TokenLayout:
        return self.plan.layout

    def wants_attention(self, block: int) -> bool:
        blocks = self.plan.attention_blocks
        return blocks is None or block in blocks

    def wants_feature(self, site: str, block: int) -> bool:
        return block in self.plan.features.get(site, ())

    def record_attention(
        self,
        block: int,
        query: torch.Tensor,
        key: torch.Tensor,
        scale: float | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> None:
        if not self.wants_attention(block):
            return
        with torch.no_grad():
            cam, ram = clean_token_attention_statistics(
                query, key, self.layout, self.plan.prompt_mask, scale, attn_mask, self.plan.probe_dtype
            )
        self.cam[block] = cam
        self.ram[block] = ram

    def attend(self, block: int, query, key, value, attend, attn_mask=None) -> torch.Tensor:
        """Run the block's attention through ``attend(q, k, v, scale)`` and record this block's terms.

        ``attend`` is the model's own attention function (so user-chosen kernels stay in use);
        with ``plan.fused`` the probe's first step rides along inside that call.
        """
        if not self.wants_attention(block):
            return attend(query, key, value, None)
        if not self.plan.fused:
            self.record_attention(block, query, key, attn_mask=attn_mask)
            return attend(query, key, value, None)
        width = query.shape[-1]
        wide = widen_for_fused_probe(query, key, value, self.layout, self.plan.prompt_mask)
        out = attend(*wide)
        clean = out[:, self.layout.clean, :, width : width + 2].transpose(1, 2)  # B, H, Nv, 2
        with torch.no_grad():
            q_clean = query[:, self.layout.clean].transpose(1, 2).to(self.plan.probe_dtype)
            k = key.transpose(1, 2).to(self.plan.probe_dtype)
            mask_rows = None if attn_mask is None else _rows(attn_mask, self.layout.clean)
            cam, ram = propagate(q_clean, k, clean[..., 0], clean[..., 1], self.layout, None, mask_rows)
        self.cam[block] = cam
        self.ram[block] = ram
        return out[..., :width]

    def record_feature(self, site: str, block: int, clean_tokens: torch.Tensor) -> None:
        """Store (batch, clean_len, dim) features of the clean tokens."""
        if self.wants_feature(site, block):
            self.features[(site, block)] = clean_tokens.detach().to(self.plan.probe_dtype).clone()

    def stacked(self, which: str, blocks: Iterable[int]) -> torch.Tensor:
        """(len(blocks), batch, clean_len) of recorded ``cam`` or ``ram`` terms."""
        store = self.cam if which == "cam" else self.ram
        blocks = list(blocks)
        missing = [b for b in blocks if b not in store]
        if missing:
            raise KeyError(f"no {which} recorded for blocks {missing}")
        return torch.stack([store[b] for b in blocks])
