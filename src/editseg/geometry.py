"""Mapping between the input image, the model's pre-processed image and the clean-token grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageGeometry:
    """How the backbone turned the input image into tokens.

    The input (``input_size`` = (width, height)) is resized to ``resized_size``, then the box
    ``crop`` = (left, top, width, height) of the resized image is kept; each clean token covers
    ``patch`` × ``patch`` pixels of that crop; ``grid`` = (rows, cols).
    """

    input_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop: tuple[int, int, int, int]
    patch: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.crop[3] // self.patch, self.crop[2] // self.patch

    def sampling_grid(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(1, H, W, 2) ``grid_sample`` coordinates of input-pixel centres on the token grid."""
        width, height = self.input_size
        resized_w, resized_h = self.resized_size
        left, top, crop_w, crop_h = self.crop
        xs = ((torch.arange(width, device=device, dtype=torch.float32) + 0.5) * (resized_w / width) - left) / crop_w
        ys = ((torch.arange(height, device=device, dtype=torch.float32) + 0.5) * (resized_h / height) - top) / crop_h
        gx = (xs * 2 - 1)[None, :].expand(height, width)
        gy = (ys * 2 - 1)[:, None].expand(height, width)
        return torch.stack([gx, gy], dim=-1)[None]

    def to_input(self, token_maps: torch.Tensor) -> torch.Tensor:
        """Bilinearly resample (batch, rows, cols) token-grid maps to (batch, H, W) input pixels.

        Pixels outside the crop take the nearest border value. For an input that needed no resize
        or crop this equals ``F.interpolate(..., mode="bilinear", align_corners=False)``.

        Computed separably, ``Wy @ maps @ Wx.T`` with (H, rows) and (W, cols) interpolation
        matrices: the same values as ``grid_sample`` (bilinear, border padding) on
        :meth:`sampling_grid`, without its (H, W, 2) grid or a per-pixel gather, so the only
        full-size tensor is the output (what bounds memory on large inputs).
        """
        if token_maps.shape[-2:] != self.grid:
            raise ValueError(f"token maps are {tuple(token_maps.shape[-2:])}, geometry grid is {self.grid}")
        width, height = self.input_size
        resized_w, resized_h = self.resized_size
        left, top, crop_w, crop_h = self.crop
        rows, cols = self.grid
        device = token_maps.device
        wx = _interpolation_matrix(width, resized_w / width, left, crop_w, cols, device)
        wy = _interpolation_matrix(height, resized_h / height, top, crop_h, rows, device)
        return wy @ token_maps.float() @ wx.T


def _interpolation_matrix(size: int, scale: float, offset: int, crop: int, cells: int, device) -> torch.Tensor:
    """(size, cells) bilinear weights of input-pixel centres on a ``cells``-wide grid, border-clamped.

    Follows ``grid_sample(align_corners=False, padding_mode="border")``: normalised coordinate
    ``g = 2 * ((i + 0.5) * scale - offset) / crop - 1``, unnormalised ``((g + 1) * cells - 1) / 2``,
    clamped to ``[0, cells - 1]``.
    """
    positions = ((torch.arange(size, device=device, dtype=torch.float32) + 0.5) * scale - offset) / crop
    grid = positions * 2 - 1
    coords = (((grid + 1) * cells - 1) / 2).clamp(0, cells - 1)
    low = coords.floor().long().clamp(max=cells - 1)
    high = (low + 1).clamp(max=cells - 1)
    frac = coords - low.float()
    weights = torch.zeros(size, cells, device=device, dtype=torch.float32)
    index = torch.arange(size, device=device)
    weights.index_put_((index, low), 1 - frac, accumulate=True)
    weights.index_put_((index, high), frac, accumulate=True)
    return weights
