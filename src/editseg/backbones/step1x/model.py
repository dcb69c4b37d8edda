"""The Step1X-Edit DiT: FLUX.1-style MM-DiT (19 double-stream + 38 single-stream blocks, hidden
3072, 24 heads of 128, 3-axis RoPE 16/56/56) with the Qwen2.5-VL connector in front.

Written from the architecture of the official code (stepfun-ai/Step1X-Edit, ``modules/model_edit.py``
and ``modules/layers.py``); module names follow the official checkpoint (v1.0
``step1x-edit-i1258.safetensors``) so its keys load without renaming.

Joint sequence: ``[text (connector output, padded) | noisy image | reference image]``; the
double-stream blocks keep text and image apart and attend jointly; the single-stream blocks run on
the concatenation. The DiT has no attention mask: padded text rows are attended like any other.

Every block's attention goes through :meth:`_Attending.attend`, the hook point of the probes: with
a :class:`~editseg.probing.recorder.ProbeRecorder` installed (:func:`probes_installed`) it calls
``recorder.attend`` and ``recorder.record_feature`` for the ``attn``/``adaln``/``block`` sites.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ...probing.recorder import ProbeRecorder, native_attend_lse
from .connector import Qwen2Connector, sinusoidal_embedding


@dataclass(frozen=True)
class Step1XConfig:
    """Sizes of the DiT and its connector (defaults: the released Step1X-Edit)."""

    in_channels: int = 64
    out_channels: int = 64
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: int = 10_000
    qkv_bias: bool = True
    connector_in_channels: int = 3584
    connector_heads: int = 32
    connector_depth: int = 2
    # v1.0 scales the pooled LLM vector by (1 + scale_factor); the diffusers-format v1p1 does not.
    pooled_scale: bool = True
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# -- small pieces ----------------------------------------------------------------------------------
class MLPEmbedder(nn.Module):
    """Linear → SiLU → Linear (``time_in``, ``vector_in``)."""

    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMS norm over the head dimension, computed in float32 (parameter named ``scale``)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.scale.to(x.dtype).float()).to(x.dtype)


class QKNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_norm(q).to(like.dtype), self.key_norm(k).to(like.dtype)


class Modulation(nn.Module):
    """``lin(silu(vec))`` split into (shift, scale, gate) once or twice, each (B, 1, D)."""

    def __init__(self, dim: int, double: bool) -> None:
        super().__init__()
        self.parts = 6 if double else 3
        self.lin = nn.Linear(dim, self.parts * dim)

    def forward(self, vec: torch.Tensor) -> list[torch.Tensor]:
        return list(self.lin(F.silu(vec))[:, None, :].chunk(self.parts, dim=-1))


class SelfAttention(nn.Module):
    """Parameter holder of one stream's attention: fused qkv, QK-norm, output projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


def rope_frequencies(ids: torch.Tensor, axes_dim: tuple[int, ...], theta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, S, head_dim/2) for position ids (B, S, n_axes): one frequency band per axis."""
    angles = []
    for axis, dim in enumerate(axes_dim):
        omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim)
        angles.append(ids[..., axis].double()[..., None] * omega)
    angle = torch.cat(angles, dim=-1)
    return torch.cos(angle).float(), torch.sin(angle).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (x[2i], x[2i+1]) of (B, S, H, D) by the angles, in float32."""
    pairs = x.float().unflatten(-1, (-1, 2))
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([c * even - s * odd, s * even + c * odd], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def sdpa_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Plain attention on (B, S, H, D) tensors → (B, S, H, D)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L, 3*H*D) laid out as (3, H, D) → q, k, v each (B, L, H, D)."""
    q, k, v = qkv.unflatten(-1, (3, heads, -1)).unbind(dim=2)
    return q, k, v


class _Attending(nn.Module):
    """A block with an index and an optional probe recorder (the attention hook point)."""

    index: int = 0
    recorder: ProbeRecorder | None = None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Joint attention (B, S, H, D) → (B, S, H*D), through the recorder when one is installed."""
        if self.recorder is None:
            out = sdpa_attend(q, k, v, None)
        else:
            out = self.recorder.attend(self.index, q, k, v, sdpa_attend, attend_lse=native_attend_lse).to(q.dtype)
            self.recorder.record_feature("attn", self.index, out.flatten(2)[:, self.recorder.layout.clean])
        return out.flatten(2)

    def feature(self, site: str, rows: torch.Tensor) -> None:
        if self.recorder is not None:
            self.recorder.record_feature(site, self.index, rows)


class DoubleStreamBlock(_Attending):
    """Separate text/image weights, joint attention over ``[text | image]``."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        mlp_hidden = int(hidden_size * mlp_ratio)
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", Modulation(hidden_size, double=True))
            setattr(self, f"{stream}_norm1", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_attn", SelfAttention(hidden_size, num_heads, qkv_bias))
            setattr(self, f"{stream}_norm2", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(
                self,
                f"{stream}_mlp",
                nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden_size)),
            )

    def _qkv(self, stream: str, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
        modulated = (1 + scale) * getattr(self, f"{stream}_norm1")(x) + shift
        attn = getattr(self, f"{stream}_attn")
        q, k, v = split_heads(attn.qkv(modulated), self.num_heads)
        q, k = attn.norm(q, k, v)
        return modulated, q, k, v

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)
        img_mod, img_q, img_k, img_v = self._qkv("img", img, i_shift1, i_scale1)
        _, txt_q, txt_k, txt_v = self._qkv("txt", txt, t_shift1, t_scale1)
        if self.recorder is not None:
            self.feature("adaln", img_mod[:, self.recorder.layout.clean_in_image_stream])

        q = apply_rope(torch.cat([txt_q, img_q], dim=1), *rope)
        k = apply_rope(torch.cat([txt_k, img_k], dim=1), *rope)
        v = torch.cat([txt_v, img_v], dim=1)
        out = self.attend(q, k, v)
        txt_out, img_out = out[:, : txt.shape[1]], out[:, txt.shape[1] :]

        img = img + i_gate1 * self.img_attn.proj(img_out)
        img = img + i_gate2 * self.img_mlp((1 + i_scale2) * self.img_norm2(img) + i_shift2)
        txt = txt + t_gate1 * self.txt_attn.proj(txt_out)
        txt = txt + t_gate2 * self.txt_mlp((1 + t_scale2) * self.txt_norm2(txt) + t_shift2)
        if self.recorder is not None:
            self.feature("block", img[:, self.recorder.layout.clean_in_image_stream])
        return img, txt


class SingleStreamBlock(_Attending):
    """One weight set over the joint sequence: attention and MLP in parallel (fused linears)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.mlp_hidden = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, 3 * hidden_size + self.mlp_hidden)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x: torch.Tensor, vec: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec)
        modulated = (1 + scale) * self.pre_norm(x) + shift
        if self.recorder is not None:
            self.feature("adaln", modulated[:, self.recorder.layout.clean])
        qkv, mlp = self.linear1(modulated).split([3 * self.hidden_size, self.mlp_hidden], dim=-1)
        q, k, v = split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        out = self.attend(apply_rope(q, *rope), apply_rope(k, *rope), v)
        x = x + gate * self.linear2(torch.cat([out, F.gelu(mlp, approximate="tanh")], dim=-1))
        if self.recorder is not None:
            self.feature("block", x[:, self.recorder.layout.clean])
        return x


class LastLayer(nn.Module):
    def __init__(self, hidden_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear((1 + scale) * self.norm_final(x) + shift)


class Step1XEditDiT(nn.Module):
    """The Step1X-Edit transformer (connector included, as in the official checkpoint)."""

    def __init__(self, config: Step1XConfig = Step1XConfig()) -> None:
        super().__init__()
        if sum(config.axes_dim) != config.head_dim:
            raise ValueError(f"RoPE axes {config.axes_dim} must sum to the head dim {config.head_dim}")
        self.config = config
        hidden = config.hidden_size
        self.img_in = nn.Linear(config.in_channels, hidden)
        self.time_in = MLPEmbedder(256, hidden)
        self.vector_in = MLPEmbedder(config.vec_in_dim, hidden)
        self.txt_in = nn.Linear(config.context_in_dim, hidden)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(hidden, config.num_heads, config.mlp_ratio, config.qkv_bias) for _ in range(config.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(hidden, config.num_heads, config.mlp_ratio) for _ in range(config.depth_single_blocks)
        )
        for index, block in enumerate(self.blocks):
            block.index = index
        self.final_layer = LastLayer(hidden, config.out_channels)
        self.connector = Qwen2Connector(
            in_channels=config.connector_in_channels,
            hidden_size=config.context_in_dim,
            heads=config.connector_heads,
            depth=config.connector_depth,
            pooled_dim=config.vec_in_dim,
            pooled_scale=config.pooled_scale,
        )

    @property
    def blocks(self) -> list[_Attending]:
        """Every block in global order: double-stream first."""
        return list(self.double_blocks) + list(self.single_blocks)

    @property
    def dtype(self) -> torch.dtype:
        return self.img_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.img_in.weight.device

    def forward(
        self,
        img: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        timesteps: torch.Tensor,
        llm_embedding: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Velocity for the image tokens ``img`` (B, N, in_channels).

        ``llm_embedding`` (B, L, 3584) and ``mask`` (B, L) are the VLM hidden states and their
        validity; ``timesteps`` (B,) in [0, 1] (1 = pure noise); ids (B, ·, 3) are RoPE positions.
        """
        txt, pooled = self.connector(llm_embedding, timesteps, mask)
        img = self.img_in(img)
        vec = self.time_in(sinusoidal_embedding(timesteps * 1000, 256).to(img.dtype)) + self.vector_in(pooled)
        txt = self.txt_in(txt)
        rope = rope_frequencies(torch.cat([txt_ids, img_ids], dim=1), self.config.axes_dim, self.config.theta)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, rope)
        joint = torch.cat([txt, img], dim=1)
        for block in self.single_blocks:
            joint = block(joint, vec, rope)
        return self.final_layer(joint[:, txt.shape[1] :], vec)


@contextmanager
def probes_installed(model: Step1XEditDiT, recorder: ProbeRecorder) -> Iterator[None]:
    """Route every block's attention (and feature sites) through ``recorder`` for one forward."""
    blocks = model.blocks
    try:
        for block in blocks:
            block.recorder = recorder
        yield
    finally:
        for block in blocks:
            block.recorder = None
