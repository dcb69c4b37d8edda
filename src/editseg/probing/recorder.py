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

Three routes compute the same terms (exactly, up to float rounding):

- **log-sum-exp** (``ProbePlan.lse``; the default on CPU): the model's own attention call is run
  through a kernel that also returns each row's log-sum-exp ``L_h(v) = log Σ_all exp(s_vj)`` (the
  CPU flash kernel computes it anyway), so the model output is bit-identical to a bare forward and
  no tensor is widened. Then ``c_h = exp(logsumexp_{j∈p}(s_vj + log x_j) - L_h)`` from the few
  prompt keys, and step 2 below also returns its log-sum-exp over the clean keys ``L^v_h``, which
  gives ``d_h = exp(L^v_h - L_h)`` without a step-1 call. Extra work: one clean×clean attention
  call per block (plus the prompt columns), nothing on the model's own call.
- **fused** (``ProbePlan.fused``, the default where no log-sum-exp kernel is at hand): q and k
get 8 zero channels (scores unchanged; the softmax scale stays 1/sqrt(head_dim)) and v gets the
  two indicator channels, so the extra cost of step 1 is 8 channels of one attention call instead
  of a second pass over all keys. The model output then equals the bare output up to float
  rounding (the kernel reduces over a wider head). On GPU the 136-channel head leaves the
  kernels' 128-channel fast paths (docs/benchmarks.md).
- **separate** (``fused=False``): step 1 as its own call; model output bit-identical.

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

from ..config import FEATURE_SITES  # defined with the settings that choose among them


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
    lse: bool | None = None  # the log-sum-exp route; None: on CPU only (where CI checks it)

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


def attention_with_lse(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Fused attention on (B, H, L, D) tensors that also returns the row log-sum-exp of the scaled
    scores: ``(out (B, H, L, Dv), lse (B, H, L) float32)``, or None on devices without such a kernel.

    CPU: the flash kernel ``scaled_dot_product_attention`` itself picks (same output, bit for bit).
    CUDA (not exercised in CI): the flash kernel for half precision without a mask (again
    the kernel the bare call picks), else the memory-efficient kernel."""
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(~attn_mask, float("-inf"))
    if query.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, False, attn_mask=attn_mask, scale=scale
        )
        return out, lse
    if query.device.type == "cuda":
        if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16):
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, 0.0, False, False, scale=scale)[:2]
            return out, lse
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, True, 0.0, False, scale=scale
        )[:2]
        return out, lse[..., : query.shape[-2]]  # the kernel pads its lse rows to a multiple of 32
    return None


def native_attend_lse(query, key, value, attn_mask=None):
    """:func:`attention_with_lse` on (B, S, H, D) tensors, as the model's native attention lays them
    out: ``(out (B, S, H, D), lse (B, H, S))`` or None."""
    result = attention_with_lse(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask)
    if result is None:
        return None
    return result[0].transpose(1, 2), result[1]


def statistics_from_lse(
    query: torch.Tensor,
    key: torch.Tensor,
    lse: torch.Tensor,
    layout: TokenLayout,
    prompt_mask: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    probe_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c, r)`` (each (batch, clean_len)) from the model call's row log-sum-exp ``lse`` (B, H, S);
    ``query``/``key`` (B, S, H, D) as the block used them, default scale 1/sqrt(head_dim)."""
    q = query[:, layout.clean].transpose(1, 2).to(probe_dtype)  # B, H, Nv, D
    k = key.transpose(1, 2).to(probe_dtype)  # B, H, S, D
    row_lse = lse[:, :, layout.clean].to(probe_dtype)  # B, H, Nv
    batch, heads, clean_len, width = q.shape
    scale = width**-0.5
    mask_rows = None if attn_mask is None else _additive(_rows(attn_mask, layout.clean), probe_dtype)
    prompt_mass_h = _prompt_mass(q, k, row_lse, prompt_mask.to(q.device, probe_dtype), scale, mask_rows)
    prompt_mass = prompt_mass_h.mean(dim=1)  # c = Ā[v,p]·1
    values = q.new_zeros((batch, 1, clean_len, width))  # width as the keys: the flash kernel's need
    values[:, 0, :, 0] = prompt_mass
    mask_clean = None if mask_rows is None else mask_rows[..., layout.clean]
    result = attention_with_lse(q, k[:, :, layout.clean], values.expand(batch, heads, clean_len, width), mask_clean, scale)
    if result is None:
        raise RuntimeError(f"no log-sum-exp attention kernel on {q.device}")
    within, clean_lse = result
    clean_mass_h = torch.exp(clean_lse.to(probe_dtype) - row_lse)  # d_h = A_h[v,v]·1
    propagated = (clean_mass_h * within[..., 0]).mean(dim=1)  # Ā[v,v]·c
    degree = clean_mass_h.mean(dim=1)
    return prompt_mass, propagated / degree.clamp_min(torch.finfo(probe_dtype).tiny)


def _prompt_mass(q, k, row_lse, weights, scale, mask_rows) -> torch.Tensor:
    """Per head ``A_h[v,p]·x`` = exp(logsumexp_j(s_vj + log x_j) - L_h(v)) over the prompt keys
    (text positions where any batch element has a weight); (B, H, Nv)."""
    if bool((weights < 0).any()):
        raise ValueError("the log-sum-exp probe route needs non-negative prompt weights")
    columns = weights.sum(dim=0).nonzero()[:, 0]
    if columns.numel() == 0:
        return row_lse.new_zeros(row_lse.shape)
    scores = torch.matmul(q, k[:, :, columns].transpose(-1, -2)) * scale + weights[:, None, None, columns].log()
    if mask_rows is not None:
        scores = scores + mask_rows[..., columns]
    return torch.exp(torch.logsumexp(scores, dim=-1) - row_lse)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


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

    def uses_lse(self, device: torch.device) -> bool:
        return self.plan.lse if self.plan.lse is not None else device.type == "cpu"

    def attend(self, block: int, query, key, value, attend, attn_mask=None, attend_lse=None) -> torch.Tensor:
        """Run the block's attention through ``attend(q, k, v, scale)`` and record this block's terms.

        ``attend`` is the model's own attention function (so user-chosen kernels stay in use);
        ``attend_lse(q, k, v)``, when given, is the same attention returning ``(out, lse)`` with
        ``lse`` (batch, heads, seq), or None where it cannot (then the fused/separate route runs).
        With ``plan.fused`` the probe's first step rides along inside the model's call.
        """
        if not self.wants_attention(block):
            return attend(query, key, value, None)
        if attend_lse is not None and self.uses_lse(query.device):
            result = attend_lse(query, key, value)
            if result is not None:
                out, lse = result
                with torch.no_grad():
                    self.cam[block], self.ram[block] = statistics_from_lse(
                        query, key, lse, self.layout, self.plan.prompt_mask, attn_mask, self.plan.probe_dtype
                    )
                return out
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
