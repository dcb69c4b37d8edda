"""Streaming per-token cross-attention probes for text-to-image DiTs (RefAM, Kukleva et al. 2025).

The joint sequence of a text-to-image FLUX block is ``[text | image]``. For a set of *tracked*
text tokens ``k = 1..K`` (an expression, its attention magnets and its end-of-sequence token) and
each block ``l`` and head ``h`` RefAM needs, with ``A_h = softmax(q kᵀ / √d)`` over the joint keys:

- ``A_h[v, k]``           image→token attention of every image query ``v`` (one map per token);
- ``Â_h[v, k] = A_h[v, k] / Σ_{k'} A_h[v, k']`` the same renormalised over the tracked tokens.
  Because ``A_h[v, k] = exp(s_vk) / Z_v``, this *is* ``softmax_k(s_vk)`` over the tracked tokens'
  logits (RefAM appendix B, "softmax across all tokens"), exactly, without the logits;
- ``A_h[i, k]`` for tracked text queries ``i``: the text→text mass used for GAS detection.

``A[·, k]`` for all queries and K keys is one attention call whose value tensor is one-hot per
tracked token (value channel ``k`` = 1 at token ``k``'s position): ``softmax(q kᵀ) · V`` — no
``S × S`` matrix is kept. Value channels are padded to the head width (fused kernels need equal
widths; the math fallback would materialise the matrix), in chunks of ``head_dim`` channels when
``K > head_dim``. The probe is a separate call: the model's own attention runs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class T2ILayout:
    """Where each token type sits in the joint sequence ``[text | image]`` of a text-to-image DiT.

    ``image_offset`` > 0 skips that many tokens between the text and the image rows that are
    probed: an editing DiT's ``[text | noisy | clean]`` is probed on its clean rows with
    ``image_offset = noisy_len``."""

    text_len: int
    image_len: int
    grid: tuple[int, int]  # (rows, cols) of the image-token grid
    image_offset: int = 0

    def __post_init__(self) -> None:
        if self.grid[0] * self.grid[1] != self.image_len:
            raise ValueError(f"grid {self.grid} does not hold {self.image_len} image tokens")

    @property
    def total_len(self) -> int:
        return self.text_len + self.image_offset + self.image_len

    @property
    def image(self) -> slice:
        return slice(self.text_len + self.image_offset, self.total_len)


@dataclass
class TokenProbePlan:
    """Tracked tokens per batch element: ``positions`` (B, K) text-stream indices, ``valid`` (B, K)
    bool (rows with fewer tokens are padded with any index and ``valid=False``).
    ``blocks=None`` records every block (global indices: double-stream first)."""

    layout: T2ILayout
    positions: torch.Tensor
    valid: torch.Tensor
    blocks: frozenset[int] | None = None
    probe_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.positions.shape != self.valid.shape or self.positions.ndim != 2:
            raise ValueError("positions and valid must both be (batch, K)")
        if bool(((self.positions < 0) | (self.positions >= self.layout.text_len))[self.valid].any()):
            raise ValueError("tracked positions must lie in the text stream")


def one_hot_values(plan: TokenProbePlan, seq: int, width: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(B, 1, seq, width): channel ``k`` is 1 at tracked token ``k``'s position (valid ones only)."""
    batch, count = plan.positions.shape
    values = torch.zeros((batch, seq, width), dtype=dtype, device=device)
    rows = torch.arange(batch, device=device)[:, None].expand(batch, count)
    channels = torch.arange(count, device=device)[None].expand(batch, count)
    valid = plan.valid.to(device)
    values[rows[valid], plan.positions.to(device)[valid], channels[valid]] = 1.0
    return values[:, None]


def tracked_token_attention(
    query: torch.Tensor, key: torch.Tensor, plan: TokenProbePlan, scale: float | None = None
) -> torch.Tensor:
    """Per-head ``A_h[q, k]`` (B, H, S, K) for every query row and tracked key ``k`` (0 where invalid).

    ``query``/``key`` are (B, S, H, D) as the block's attention uses them (after QK-norm and RoPE)."""
    batch, seq, heads, width = query.shape
    dtype = plan.probe_dtype
    q, k = query.transpose(1, 2).to(dtype), key.transpose(1, 2).to(dtype)
    count = plan.positions.shape[1]
    chunks = []
    for start in range(0, count, width):
        stop = min(count, start + width)
        sub = TokenProbePlan(plan.layout, plan.positions[:, start:stop], plan.valid[:, start:stop], plan.blocks, dtype)
        values = one_hot_values(sub, seq, width, dtype, query.device).expand(batch, heads, seq, width)
        out = F.scaled_dot_product_attention(q, k, values, scale=scale)
        chunks.append(out[..., : stop - start])
    return torch.cat(chunks, dim=-1)


def renormalize(attention: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``A[…, k] / Σ_{valid k'} A[…, k']`` over the last (token) dimension; ``valid`` is (B, K)."""
    mask = valid.to(attention.dtype).view(valid.shape[0], *([1] * (attention.ndim - 2)), valid.shape[1])
    masked = attention * mask
    return masked / masked.sum(-1, keepdim=True).clamp_min(torch.finfo(attention.dtype).tiny)


@dataclass
class TokenAttentionRecorder:
    """Collects, per block, head means of the per-token maps and text→text masses.

    ``image_maps[l]``: (B, K, N_img) head mean of ``A_h[v, k]`` (joint softmax);
    ``image_maps_softmax[l]``: (B, K, N_img) head mean of ``Â_h[v, k]`` (softmax over tracked tokens);
    ``text_mass[l]``: (B, K) mean over valid tracked queries ``i`` and heads of ``A_h[i, k]``.
    """

    plan: TokenProbePlan
    image_maps: dict[int, torch.Tensor] = field(default_factory=dict)
    image_maps_softmax: dict[int, torch.Tensor] = field(default_factory=dict)
    text_mass: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def layout(self) -> T2ILayout:
        return self.plan.layout

    def wants(self, block: int) -> bool:
        return self.plan.blocks is None or block in self.plan.blocks

    def record(self, block: int, query: torch.Tensor, key: torch.Tensor, scale: float | None = None) -> None:
        """Record block ``block``'s terms from its (B, S, H, D) query and key."""
        if not self.wants(block):
            return
        if query.shape[1] != self.layout.total_len:
            raise ValueError(f"sequence length {query.shape[1]} does not match the layout ({self.layout.total_len})")
        with torch.no_grad():
            per_head = tracked_token_attention(query, key, self.plan, scale)  # B, H, S, K
            valid = self.plan.valid.to(per_head.device)
            image = per_head[:, :, self.layout.image]  # B, H, Nimg, K
            self.image_maps[block] = image.mean(1).transpose(1, 2).contiguous()
            self.image_maps_softmax[block] = renormalize(image, valid).mean(1).transpose(1, 2).contiguous()
            index = self.plan.positions.to(per_head.device).clamp(0, self.layout.text_len - 1)
            rows = torch.gather(per_head, 2, index[:, None, :, None].expand(-1, per_head.shape[1], -1, per_head.shape[-1]))
            rows = rows.mean(1)  # B, K(queries), K(keys)
            weights = valid.to(rows.dtype)
            mass = (rows * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)
            self.text_mass[block] = mass * weights

    def stacked(self, which: str, blocks) -> torch.Tensor:
        """(len(blocks), …) of ``image_maps``, ``image_maps_softmax`` or ``text_mass``."""
        store = getattr(self, which)
        blocks = list(blocks)
        missing = [b for b in blocks if b not in store]
        if missing:
            raise KeyError(f"no {which} recorded for blocks {missing}")
        return torch.stack([store[b] for b in blocks])


class EditorTokenProbe:
    """Adapter that lets an editing backbone's probe processors (which call
    ``recorder.attend(block, q, k, v, attend)``) feed a :class:`TokenAttentionRecorder` instead:
    RefAM-style per-token maps read through an editor's attention (its clean-image rows).
    ``layout`` is the editor's own token layout (``[text | noisy | clean]``)."""

    def __init__(self, layout, recorder: TokenAttentionRecorder):
        self.layout = layout
        self.recorder = recorder

    def wants_feature(self, site: str, block: int) -> bool:
        return False

    def record_feature(self, site: str, block: int, clean_tokens: torch.Tensor) -> None:
        return None

    def wants_attention(self, block: int) -> bool:
        return self.recorder.wants(block)

    def attend(self, block: int, query, key, value, attend, attn_mask=None, attend_lse=None) -> torch.Tensor:
        """The editor's own attention, unchanged; the tracked tokens' maps are recorded on the side
        (``attend_lse``, the recorder contract's log-sum-exp route, is not needed here)."""
        if attn_mask is not None:
            raise ValueError("per-token probes do not support attention masks")
        self.recorder.record(block, query, key)
        return attend(query, key, value, None)
