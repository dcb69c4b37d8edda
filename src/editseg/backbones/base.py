"""What every backbone offers the Segmenter: image and text preparation, and one probed forward."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from PIL import Image

from ..config import BlockSelection
from ..errors import ConfigError
from ..geometry import ImageGeometry
from ..probing.recorder import ProbePlan, ProbeRecorder
from ..text import PromptTokens
from .trajectory import TrajectoryCache


@dataclass
class PreparedImage:
    """An image encoded once and reused for every expression batch."""

    geometry: ImageGeometry
    tensors: dict[str, Any] = field(default_factory=dict)


@dataclass
class EncodedText:
    """A batch of encoded instructions and their token maps."""

    prompts: list[PromptTokens]
    tensors: dict[str, Any] = field(default_factory=dict)

    @property
    def text_len(self) -> int:
        return len(self.prompts[0].offsets)


class Backbone(ABC):
    """One model family: turns (image, instructions) into one probed forward at the first step."""

    name: str
    num_double_blocks: int
    num_single_blocks: int
    is_random: bool = False  # True for randomly initialised models (output is meaningless)
    default_max_side: int | None = None  # longer-side cap applied before the model's own resize rule

    @property
    def num_blocks(self) -> int:
        return self.num_double_blocks + self.num_single_blocks

    @property
    def trajectories(self) -> TrajectoryCache:
        """The denoising trajectory shared by probes at several timesteps (see :mod:`.trajectory`)."""
        cache = self.__dict__.get("_trajectories")
        if cache is None:
            cache = self.__dict__["_trajectories"] = TrajectoryCache()
        return cache

    @property
    def default_feature_block(self) -> int:
        """Feature block l' (0-based, global). Paper: 20 of 32 on FLUX.2-klein-9B; here the same
        depth fraction 20/32 rounded on other depths (16 of 25 on klein-4B)."""
        return min(self.num_blocks - 1, round(self.num_blocks * 20 / 32))

    def resolve_blocks(self, selection: BlockSelection) -> frozenset[int]:
        """Global block indices named by ``all``/``double``/``single`` or explicit indices."""
        if selection == "all":
            return frozenset(range(self.num_blocks))
        if selection == "double":
            return frozenset(range(self.num_double_blocks))
        if selection == "single":
            return frozenset(range(self.num_double_blocks, self.num_blocks))
        blocks = frozenset(int(b) for b in selection)
        bad = sorted(b for b in blocks if not 0 <= b < self.num_blocks)
        if bad:
            raise ConfigError(f"Blocks {bad} do not exist: {self.name} has blocks 0-{self.num_blocks - 1}.")
        return blocks

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where inputs are placed for the forward."""

    @abstractmethod
    def prepare_image(self, image: Image.Image, max_side: int | None = None) -> PreparedImage:
        """Resize/crop as the model's own pipeline does and encode the clean reference tokens.

        ``max_side`` (default :attr:`default_max_side`) first shrinks the longer side to at most
        that many pixels; masks are still returned at the input resolution."""

    @abstractmethod
    def encode_text(
        self, expressions: Sequence[str], instructions: Sequence[str], image: PreparedImage | None = None
    ) -> EncodedText:
        """Encode instructions exactly as the model's pipeline does and map words to tokens.

        ``image`` is the prepared image, for text encoders that see it (Qwen2.5-VL); others ignore it."""

    @abstractmethod
    def probe_forward(
        self, image: PreparedImage, text: EncodedText, plan: ProbePlan, seed: int = 0, step_index: int = 0, num_steps: int = 28
    ) -> ProbeRecorder:
        """One transformer forward with probes installed, at step ``step_index`` of a
        ``num_steps`` schedule (0 = the first step, sigma 1; later steps denoise first)."""
