"""The Qwen2.5-VL → DiT connector of Step1X-Edit (official ``modules/connector_edit.py``, ``Qwen2Connector``).

Inputs: the VLM's last hidden states (B, L, 3584), a 0/1 validity mask (B, L) and the timestep
(B,) in [0, 1]. Outputs: refined text tokens (B, L, 4096) for the DiT's text stream, and a pooled
vector (B, 768) that joins the timestep embedding (FLUX.1's CLIP-pooled slot).

- pooled: masked mean of the inputs (times ``1 + scale_factor`` in v1.0) → ``global_proj_out``;
- tokens: ``input_embedder`` then ``depth`` refiner blocks, each self-attention among valid tokens
  (a padded query row still sees key 0, so no row is all-masked) and a SiLU MLP, both gated by a
  conditioning vector c = timestep embedding(1000 t) + MLP(masked mean of the inputs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """[cos | sin] embedding of (already scaled) timesteps ``t`` (N,) → (N, dim), float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class RefinerBlock(nn.Module):
    """One ``IndividualTokenRefinerBlock``: gated self-attention and gated MLP, pre-LayerNorm."""

    def __init__(self, hidden_size: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.self_attn_qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.self_attn_proj = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = _MLP(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        gate_attn, gate_mlp = self.adaLN_modulation(c).chunk(2, dim=-1)
        q, k, v = self.self_attn_qkv(self.norm1(x)).unflatten(-1, (3, self.heads, -1)).unbind(dim=2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
        x = x + self.self_attn_proj(out.transpose(1, 2).flatten(2)) * gate_attn[:, None]
        return x + self.mlp(self.norm2(x)) * gate_mlp[:, None]


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)))


class _TokenRefiner(nn.Module):
    """Refiner blocks (the ``individual_token_refiner`` of the official code)."""

    def __init__(self, hidden_size: int, heads: int, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(RefinerBlock(hidden_size, heads) for _ in range(depth))


class _TimestepMLP(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))


class _TextProjection(nn.Module):
    def __init__(self, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class SingleTokenRefiner(nn.Module):
    """Input projection + conditioning + refiner blocks (official ``SingleTokenRefiner``)."""

    def __init__(self, in_channels: int, hidden_size: int, heads: int, depth: int) -> None:
        super().__init__()
        self.input_embedder = nn.Linear(in_channels, hidden_size)
        self.t_embedder = _TimestepMLP(hidden_size)
        self.c_embedder = _TextProjection(in_channels, hidden_size)
        self.individual_token_refiner = _TokenRefiner(hidden_size, heads, depth)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t_emb = self.t_embedder.mlp(sinusoidal_embedding(t, 256).to(self.t_embedder.mlp[0].weight.dtype))
        c = t_emb + self.c_embedder(masked_mean(x, mask))
        x = self.input_embedder(x)
        valid = mask.bool()
        pair = valid[:, None, :, None] & valid[:, None, None, :]  # B, 1, L, L
        pair[..., 0] = True  # padded query rows attend to key 0 (no all-masked row)
        for block in self.individual_token_refiner.blocks:
            x = block(x, c, pair)
        return x


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, L, D) over the rows where ``mask`` (B, L) is 1."""
    weights = mask[..., None].to(x.dtype)
    return (x * weights).sum(dim=1) / weights.sum(dim=1)


class Qwen2Connector(nn.Module):
    """VLM hidden states → (DiT text tokens, pooled vector)."""

    def __init__(
        self,
        in_channels: int = 3584,
        hidden_size: int = 4096,
        heads: int = 32,
        depth: int = 2,
        pooled_dim: int = 768,
        pooled_scale: bool = True,
    ) -> None:
        super().__init__()
        self.S = SingleTokenRefiner(in_channels, hidden_size, heads, depth)
        self.global_proj_out = nn.Linear(in_channels, pooled_dim)
        if pooled_scale:
            self.scale_factor = nn.Parameter(torch.full((1,), -0.91))
        else:
            self.scale_factor = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = t * 1000
        pooled = masked_mean(x, mask)
        if self.scale_factor is not None:
            pooled = pooled * (1 + self.scale_factor.to(x.dtype))
        return self.S(x, t, mask), self.global_proj_out(pooled)
