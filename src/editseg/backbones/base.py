"""The contract every backbone family implements: image and text preparation, the transformer's
inputs at a denoising step, the token layout the probes read, and one probed forward.

A family implements the abstract methods; :meth:`Backbone.probe_forward` is shared. Families that
can decode the model's own first-step edit (FLUX.2 klein) set ``decodes_edits`` and implement
:meth:`Backbone.first_step_clean_estimate` and :meth:`Backbone.decode_tokens`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Hashable, Sequence

import torch
from PIL import Image

from ..config import BlockSelection
from ..errors import ConfigError, UnsupportedModelError
from ..geometry import ImageGeometry
from ..probing.recorder import ProbePlan, ProbeRecorder, TokenLayout
from ..text import PromptTokens
from .switches import Switch, apply_switches, changed_switches
from .trajectory import TrajectoryCache

RANDOM_WEIGHTS_NOTICE = (
    "RANDOM WEIGHTS: model {name!r} is randomly initialised, so its output is meaningless. "
    "It exists to try editseg offline; use a real model (e.g. --model flux2-klein-4b) for real masks."
)


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
    """One model family around a loaded pipeline: (image, instructions) → one probed forward."""

    name: str
    pipeline: Any  # the loaded diffusers (or diffusers-like) pipeline; ``pipeline.transformer`` is probed
    num_double_blocks: int
    num_single_blocks: int
    is_random: bool = False  # True for randomly initialised models (output is meaningless)
    default_max_side: int | None = None  # longer-side cap applied before the model's own resize rule
    decodes_edits: ClassVar[bool] = False  # first_step_clean_estimate / decode_tokens are implemented
    text_sees_image: ClassVar[bool] = True  # False where encode_text ignores the image, so an encoding can serve many images
    # EncodedText tensors with one row per instruction on dim 0 (the others serve the whole batch);
    # with text_sees_image False, lets TextEncodingCache keep and reassemble single instructions
    text_row_tensors: ClassVar[tuple[str, ...]] = ()
    # named settings that change the output (see :mod:`.switches`); plain attributes of the instance
    switches: ClassVar[dict[str, Switch]] = {}

    def set_switches(self, values: dict[str, Any]) -> None:
        """Set declared switches by name (validated first; unknown names list the known ones)."""
        apply_switches(self, values)

    def changed_switches(self) -> dict[str, Any]:
        """Switches set away from their defaults: what evaluation records must be tied to."""
        return changed_switches(self)

    def switch_settings(self) -> dict[str, Any]:
        """``{"backbone_switches": changed}`` for results and records, or ``{}`` while every switch
        is at its default (so records written before switches existed still resume)."""
        changed = self.changed_switches()
        return {"backbone_switches": changed} if changed else {}

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

    # -- inputs ------------------------------------------------------------------------------------
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

    def text_settings(self) -> tuple[Hashable, ...]:
        """Settings of this backbone, besides its name and the instruction, that change what
        :meth:`encode_text` returns (e.g. the padded text length); part of a text-cache key."""
        return ()

    def text_token_counts(self, instructions: Sequence[str]) -> tuple[list[int], int] | None:
        """``(tokens each instruction needs, the most the model reads)``, from the tokenizer alone
        (no encoder forward), or ``None`` where a backbone cannot tell before encoding. Lets whole
        datasets be checked for too-long expressions before the first forward."""
        return None

    @abstractmethod
    def first_step_inputs(self, image: PreparedImage, text: EncodedText, seed: int) -> dict[str, Any]:
        """The transformer's keyword arguments at the first denoising step (sigma 1); one noise
        draw (from ``seed``) shared by the whole batch."""

    def step_inputs(
        self, image: PreparedImage, text: EncodedText, seed: int, step_index: int = 0, num_steps: int = 28
    ) -> dict[str, Any]:
        """Transformer kwargs at step ``step_index`` of a ``num_steps`` schedule (later steps first
        denoise with the model's own sampler). This default serves the first step only."""
        if step_index != 0:
            raise ConfigError(
                f"{self.name}: only the first denoising step (timestep index 0) is implemented for this "
                f"backbone; got timestep index {step_index}."
            )
        return self.first_step_inputs(image, text, seed)

    @abstractmethod
    def layout_for(self, image: PreparedImage, text: EncodedText) -> TokenLayout:
        """Where text, noisy and clean tokens sit in the joint sequence of this forward."""

    # -- the probed forward -----------------------------------------------------------------------
    @abstractmethod
    def probes_installed(self, recorder: ProbeRecorder) -> AbstractContextManager[None]:
        """A context in which the transformer's attention runs through probe processors that
        report to ``recorder`` (the originals are restored on exit)."""

    def run_transformer(self, inputs: dict[str, Any]) -> Any:
        """One transformer forward on ``inputs`` (from :meth:`step_inputs`)."""
        return self.pipeline.transformer(**inputs, return_dict=False)

    def probe_forward(
        self, image: PreparedImage, text: EncodedText, plan: ProbePlan, seed: int = 0, step_index: int = 0, num_steps: int = 28
    ) -> ProbeRecorder:
        """One transformer forward with probes installed, at step ``step_index`` of a
        ``num_steps`` schedule (0 = the first step, sigma 1; later steps denoise first)."""
        recorder = ProbeRecorder(plan)
        inputs = self.step_inputs(image, text, seed, step_index, num_steps)
        with torch.inference_mode(), self.probes_installed(recorder):
            self.run_transformer(inputs)
        return recorder

    # -- the model's own edit (families with decodes_edits) ----------------------------------------
    def first_step_clean_estimate(self, image: PreparedImage, text: EncodedText, seed: int = 0) -> torch.Tensor:
        """The edited image the model predicts at the first step, as packed latent tokens."""
        raise UnsupportedModelError(f"{self.name} does not decode its first-step edit.")

    def decode_tokens(self, tokens: torch.Tensor, image: PreparedImage) -> list[Image.Image]:
        """Packed latent tokens of ``image``'s grid → RGB images."""
        raise UnsupportedModelError(f"{self.name} does not decode latent tokens.")
