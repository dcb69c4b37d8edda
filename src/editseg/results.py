"""What a segmentation returns: one :class:`SegmentationResult` per expression, whatever the method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SegmentationResult:
    """One expression's result.

    ``mask`` and ``maps`` are at the input resolution; ``token_maps`` hold the same maps on the
    model's token/latent grid. Map names depend on the method: early grounding gives ``"cam"`` and
    ``"ram"`` (read them as :attr:`cam` / :attr:`ram`), RefAM ``"attention"``, Ref-Diff
    ``"generative"``, ``"discriminative"``, ... Every map is float32 in [0, 1].
    """

    expression: str
    mask: np.ndarray  # bool (H, W) at the input resolution
    method: str = "early-grounding"
    instruction: str = ""  # the text the model was given
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # float32 (H, W) in [0, 1]
    token_maps: dict[str, np.ndarray] = field(default_factory=dict)  # float32 (rows, cols)
    point: tuple[int, int] | None = None  # (x, y) input pixels, where the method picks one
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 input pixels
    proposals: list[dict[str, Any]] | None = None  # [{"mask": bool array, "score": float, ...}]
    prompt_token_indices: list[int] = field(default_factory=list)
    prompt_tokens: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    model: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> int:
        """Pixels in the mask."""
        return int(self.mask.sum())

    @property
    def cam(self) -> np.ndarray:
        """The cross-attention map (early grounding), at the input resolution."""
        return self._named(self.maps, "cam")

    @property
    def ram(self) -> np.ndarray:
        """The random-walk-refined attention map (early grounding), at the input resolution."""
        return self._named(self.maps, "ram")

    @property
    def cam_tokens(self) -> np.ndarray:
        return self._named(self.token_maps, "cam")

    @property
    def ram_tokens(self) -> np.ndarray:
        return self._named(self.token_maps, "ram")

    def _named(self, maps: dict[str, np.ndarray], name: str) -> np.ndarray:
        try:
            return maps[name]
        except KeyError:
            have = ", ".join(maps) or "none"
            raise AttributeError(f"the {self.method} method gives no {name!r} map (maps: {have})") from None
