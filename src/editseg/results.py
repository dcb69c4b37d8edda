"""What a segmentation returns: one :class:`SegmentationResult` per expression."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SegmentationResult:
    """One expression's result. Maps are at the input resolution unless named ``*_tokens``."""

    expression: str
    instruction: str
    mask: np.ndarray  # bool (H, W)
    cam: np.ndarray  # float32 (H, W) in [0, 1]
    ram: np.ndarray
    cam_tokens: np.ndarray  # float32 (rows, cols)
    ram_tokens: np.ndarray
    prompt_token_indices: list[int]
    prompt_tokens: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    model: str = ""
    config: dict = field(default_factory=dict)

    @property
    def area(self) -> int:
        return int(self.mask.sum())
