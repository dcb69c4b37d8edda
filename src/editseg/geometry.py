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
        """
        if token_maps.shape[-2:] != self.grid:
            raise ValueError(f"token maps are {tuple(token_maps.shape[-2:])}, geometry grid is {self.grid}")
        grid = self.sampling_grid(token_maps.device).expand(token_maps.shape[0], -1, -1, -1)
        sampled = F.grid_sample(
            token_maps[:, None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return sampled[:, 0]
