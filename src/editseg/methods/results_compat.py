"""The shared result type. ``editseg.results.SegmentationResult`` (branch ``core``) replaces this
stand-in when that lands; the fields are those of the team's Method interface."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

try:  # the shared class, once the core restructure has landed
    from ..results import SegmentationResult  # type: ignore[attr-defined]

    if "maps" not in SegmentationResult.__dataclass_fields__:
        raise ImportError
except ImportError:

    @dataclass
    class SegmentationResult:  # type: ignore[no-redef]
        """One expression's result (see TEAM.md's Method interface)."""

        expression: str
        mask: np.ndarray
        method: str = "early-grounding"
        instruction: str = ""
        maps: dict = field(default_factory=dict)
        token_maps: dict = field(default_factory=dict)
        point: tuple[int, int] | None = None
        box: tuple[int, int, int, int] | None = None
        proposals: list[dict] | None = None
        prompt_token_indices: list[int] = field(default_factory=list)
        prompt_tokens: list[str] = field(default_factory=list)
        timings: dict = field(default_factory=dict)
        model: str = ""
        config: dict = field(default_factory=dict)

        @property
        def area(self) -> int:
            return int(self.mask.sum())
