"""Streaming cross-attention probes for UNet text-to-image models (Stable Diffusion 1.x).

For chosen text tokens ``k`` (per batch element), each probed cross-attention layer adds its
head-averaged map ``ā[:, k] = mean_h softmax(Q_h K_h^T / sqrt(d))[:, k]`` (Ref-Diff eq. 4) to a
running sum per UNet level, so nothing is kept per layer or per step. The column is computed
with one extra fused attention call whose value tensor holds one-hot indicators of the chosen
tokens (``softmax(QK^T) e_k`` is column ``k``), so no (pixels x tokens) matrix is materialised
either. ``mode="logits"`` records head-averaged pre-softmax scores ``mean_h Q_h k_k / sqrt(d)``
instead (what Ref-Diff's released code accumulates).

The processor computes the layer's own output exactly as diffusers' ``AttnProcessor2_0`` does.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

from ..errors import UnsupportedModelError

PROBE_MODES = ("softmax", "logits")


@dataclass
class CrossAttentionRecorder:
    """Running sums of token attention maps, per UNet level.

    ``token_index``: (batch, T) indices of the text tokens to record for each batch element of
    the UNet input. ``latent_size``: (rows, cols) of the latent; a layer with ``N`` queries is at
    level ``l`` when its grid ``ceil(rows / 2^l) x ceil(cols / 2^l)`` holds ``N`` cells.
    ``levels``: levels to record (``None``: all). ``normalize_each``: min-max normalise every
    layer's map before adding it (Ref-Diff's released code does; the paper normalises once).
    ``guidance``: the UNet batch is ``[unconditional | conditional]`` (classifier-free guidance);
    each layer's maps become the conditional half (``softmax``) or ``u + guidance * (c - u)``
    (``logits``, as Ref-Diff's code extrapolates the scores) before normalising and summing, so the
    sums hold one map per conditional batch element.
    """

    token_index: torch.Tensor
    latent_size: tuple[int, int]
    levels: frozenset[int] | None = None
    mode: str = "softmax"
    normalize_each: bool = False
    guidance: float | None = None
    sums: dict[int, torch.Tensor] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in PROBE_MODES:
            raise ValueError(f"mode must be one of {PROBE_MODES}, got {self.mode!r}")

    def grid_for(self, queries: int) -> tuple[int, tuple[int, int]] | None:
        rows, cols = self.latent_size
        for level in range(8):
            if rows * cols == queries:
                return level, (rows, cols)
            rows, cols = -(-rows // 2), -(-cols // 2)
        return None

    def record(self, query: torch.Tensor, key: torch.Tensor) -> None:
        """``query`` (B, H, N, d), ``key`` (B, H, L, d) of one cross-attention call."""
        located = self.grid_for(query.shape[2])
        if located is None:
            return
        level, (rows, cols) = located
        if self.levels is not None and level not in self.levels:
            return
        maps = token_attention(query, key, self.token_index.to(query.device), self.mode)  # (B, T, N)
        if self.guidance is not None:
            uncond, cond = maps.chunk(2)
            maps = uncond + self.guidance * (cond - uncond) if self.mode == "logits" else cond
        if self.normalize_each:
            maps = min_max(maps)
        maps = maps.reshape(*maps.shape[:2], rows, cols)
        self.sums[level] = self.sums[level] + maps if level in self.sums else maps
        self.counts[level] = self.counts.get(level, 0) + 1

    def mean(self, level: int) -> torch.Tensor:
        """(B, T, rows, cols) average of the recorded maps at ``level``."""
        if level not in self.sums:
            raise KeyError(f"no cross-attention recorded at UNet level {level} (recorded: {sorted(self.sums)})")
        return self.sums[level] / self.counts[level]


def min_max(maps: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Min-max normalise over the last dimension."""
    low = maps.amin(dim=-1, keepdim=True)
    high = maps.amax(dim=-1, keepdim=True)
    return (maps - low) / (high - low + eps).clamp_min(torch.finfo(maps.dtype).tiny)


@torch.no_grad()
def token_attention(query: torch.Tensor, key: torch.Tensor, token_index: torch.Tensor, mode: str = "softmax") -> torch.Tensor:
    """(B, T, N) head-mean attention of every query to tokens ``token_index`` (B, T), in float32."""
    batch, heads, _, width = query.shape
    q, k = query.float(), key.float()
    if mode == "logits":
        picked = torch.gather(k, 2, token_index[:, None, :, None].expand(batch, heads, -1, width))  # B, H, T, d
        return (q @ picked.transpose(-1, -2)).mean(dim=1).transpose(1, 2) * width**-0.5
    tokens = token_index.shape[1]
    channels = max(width, tokens)
    values = torch.zeros((batch, 1, key.shape[2], channels), dtype=q.dtype, device=q.device)
    values[torch.arange(batch)[:, None], 0, token_index, torch.arange(tokens)[None, :]] = 1.0
    if channels > width:  # fused kernels need equal widths; pad q and k with zeros (scores unchanged)
        q, k = F.pad(q, (0, channels - width)), F.pad(k, (0, channels - width))
    columns = F.scaled_dot_product_attention(q, k, values.expand(batch, heads, -1, -1), scale=width**-0.5)
    return columns[..., :tokens].mean(dim=1).transpose(1, 2)


class CrossAttentionProbeProcessor:
    """``AttnProcessor2_0`` for a cross-attention layer, reporting q and k to a recorder."""

    def __init__(self, recorder: CrossAttentionRecorder):
        self.recorder = recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is None:
            raise UnsupportedModelError("CrossAttentionProbeProcessor is for cross-attention layers only.")
        residual = hidden_states
        four_d = hidden_states.ndim == 4
        if four_d:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attention_mask is not None:
            raise UnsupportedModelError("Cross-attention probes do not support text attention masks.")
        batch = encoder_hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        self.recorder.record(query, key)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if four_d:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def probing_cross_attention(unet: torch.nn.Module, recorder: CrossAttentionRecorder) -> Iterator[None]:
    """Within the block, every cross-attention layer (``attn2``) of ``unet`` reports to ``recorder``.

    Layers must use diffusers' default ``AttnProcessor2_0`` (others, e.g. IP-Adapter, are refused);
    the originals are restored on exit.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    swapped = []
    try:
        for name, module in unet.named_modules():
            if not name.endswith("attn2") or not hasattr(module, "processor"):
                continue
            if type(module.processor) is not AttnProcessor2_0:
                raise UnsupportedModelError(
                    f"{name} uses {type(module.processor).__name__}; the probes replace AttnProcessor2_0 only."
                )
            if any(getattr(module, n, None) is not None for n in ("spatial_norm", "group_norm", "norm_q", "norm_k")):
                raise UnsupportedModelError(f"{name} has normalisations the probe processor does not implement.")
            swapped.append((module, module.processor))
            module.processor = CrossAttentionProbeProcessor(recorder)
        yield
    finally:
        for module, original in swapped:
            module.processor = original
