"""The paper's method as pure functions of probe results (He et al., §3.2, eqs. 3-6).

No model code here: inputs are the per-block CAM/RAM terms and clean-token features that a
backbone's probes recorded, outputs are token-grid maps and masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import MethodConfig
from ..geometry import ImageGeometry


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """𝒩(·): per-sample min-max normalisation over all but the first dimension (constant maps → 0)."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return ((flat - low) / safe * (span > 0)).view_as(maps)


def aggregate_attention(per_block: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Eqs. 3-4 outer part: 𝒩(Σ_l 𝓕⁻¹(term_l)) for terms stacked as (blocks, batch, tokens)."""
    summed = per_block.sum(dim=0)
    return minmax(summed.view(summed.shape[0], *grid))


def prototypes(features: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5: masked means of unit-norm ``features`` (batch, tokens, dim) over ``region`` and its complement."""
    weights = region.to(features.dtype)
    fg = (weights[..., None] * features).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)
    bg = ((1 - weights)[..., None] * features).sum(1) / (1 - weights).sum(1, keepdim=True).clamp_min(1)
    return fg, bg


def foreground_score(
    features: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, similarity: str = "cosine"
) -> torch.Tensor:
    """Per-token ``sim(P_fg, f) - sim(P_bg, f)`` (batch, tokens); eq. 6 labels a pixel fg where > 0.

    Pixel features are unit vectors, so cosine similarity differs from the dot product only by the
    prototype norms (``similarity="cosine"`` divides by them; ``"dot"`` is eq. 6 as typeset).
    Because the score is linear in the feature, upsampling the score equals scoring the upsampled
    features: the (dim × H × W) upsampled feature map of the paper is never built.
    """
    if similarity == "cosine":
        fg, bg = F.normalize(fg, dim=-1), F.normalize(bg, dim=-1)
    return torch.einsum("btd,bd->bt", features, fg - bg)


@dataclass
class GroundingMaps:
    """Token-grid results of one batch: maps in [0, 1], the prototype region and fg scores."""

    cam: torch.Tensor  # (batch, rows, cols)
    ram: torch.Tensor
    region: torch.Tensor | None = None  # (batch, rows, cols) bool: RAM > tau
    score: torch.Tensor | None = None  # (batch, rows, cols): fg minus bg similarity


def ground(
    cam_terms: torch.Tensor,
    ram_terms: torch.Tensor,
    features: torch.Tensor | None,
    grid: tuple[int, int],
    config: MethodConfig,
) -> GroundingMaps:
    """CAM and RAM from per-block terms (blocks, batch, tokens); with ``mode="full"``, also FSL scores."""
    maps = GroundingMaps(cam=aggregate_attention(cam_terms, grid), ram=aggregate_attention(ram_terms, grid))
    if config.mode != "full":
        return maps
    if features is None:
        raise ValueError("mode 'full' needs clean-token features")
    unit = F.normalize(features.float(), dim=-1)
    region = maps.ram.flatten(1) > config.tau
    fg, bg = prototypes(unit, region)
    score = foreground_score(unit, fg, bg, config.similarity)
    # Degenerate region covering every token: no background prototype exists; everything is fg.
    everything = region.all(dim=1, keepdim=True)
    score = torch.where(everything, torch.ones_like(score), score)
    maps.region = region.view(-1, *grid)
    maps.score = score.view(-1, *grid)
    return maps


def masks_at_input(maps: GroundingMaps, geometry: ImageGeometry, config: MethodConfig) -> torch.Tensor:
    """Binary masks (batch, H, W) at the input resolution for the configured mode.

    Upsampled one map at a time, so the float temporary is one (H, W) map, not a batch of them.
    """
    if config.mode == "full":
        chosen, threshold = maps.score, 0.0
    else:
        chosen, threshold = (maps.cam if config.mode == "cam" else maps.ram), config.map_threshold
    return torch.cat([geometry.to_input(chosen[i : i + 1]) > threshold for i in range(chosen.shape[0])])
