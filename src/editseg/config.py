"""Settings of the paper's method, one switch per ablation. Defaults follow the paper (§3-4)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, Sequence, Union

from .errors import ConfigError
from .text import PROMPT_TOKEN_SETS

FEATURE_SITES = ("attn", "adaln", "block")
"""Where clean-token features are read in a block (paper Table 3):

- ``attn``: the MMSA output ``A·V`` (heads concatenated, before the output projection) — eq. 1;
- ``adaln``: the block's post-AdaLN (normalised and modulated) input to attention;
- ``block``: the block's output hidden states.
"""

MODES = ("full", "ram", "cam")
"""``full`` = RAM → prototypes → per-pixel classification (eqs. 3-6); ``ram`` / ``cam`` = the
attention map alone, binarised at ``map_threshold`` (the paper's Table 2 ablation uses 0.5)."""

BLOCK_SETS = ("all", "double", "single")
REFINEMENTS = ("none", "sam")
"""``refine``: ``sam`` sharpens the mask with SAM (box + RAM peak → SAM; editseg's extension, not
the paper's; see :mod:`editseg.methods.sam_refine`). Off by default."""
SIMILARITIES = ("cosine", "dot")

BlockSelection = Union[str, Sequence[int]]


class BlockLayout(Protocol):
    """What :meth:`MethodConfig.resolved` needs of a backbone (every :class:`~editseg.backbones.base.Backbone` has it)."""

    name: str

    @property
    def num_blocks(self) -> int: ...

    @property
    def default_feature_block(self) -> int: ...

    def resolve_blocks(self, selection: BlockSelection) -> frozenset[int]: ...


@dataclass(frozen=True)
class MethodConfig:
    """Every choice of the early-grounding method.

    - ``mode``: see :data:`MODES`.
    - ``attention_blocks``: blocks summed in eqs. 3-4: ``all`` (paper default), ``double``
      (the paper's "shallow"), ``single`` ("deep") or explicit global block indices.
    - ``feature_site`` / ``feature_block``: where FSL features are read (Table 3, Fig. 4);
      ``feature_block=None`` uses the backbone's default (0-based global index).
    - ``tau``: RAM threshold for the prototype region (Fig. 5; paper 0.8).
    - ``map_threshold``: binarisation of CAM/RAM in ``cam``/``ram`` modes (paper 0.5).
    - ``prompt_tokens``: which text tokens are "the prompt" (see ``editseg.text.PROMPT_TOKEN_SETS``).
    - ``instruction_template``: preset name (``remove``, ``refined``) or a format string
      with ``{expression}``.
    - ``similarity``: eq. 6 scores. ``cosine`` normalises the prototypes (the paper's prose:
      "cosine similarity between each prototype and the upsampled features"); ``dot`` uses the
      un-normalised masked means exactly as eq. 6 is typeset. Pixel features are unit vectors
      either way. The two differ when the prototypes' norms differ; the paper is ambiguous.
    - ``seed``: seed of the first-step noise (the noisy tokens are pure noise at sigma 1).
    - ``timestep_index`` / ``num_inference_steps``: probe at step ``timestep_index`` of a
      ``num_inference_steps`` schedule, after denoising the earlier steps with the model's own
      sampler (paper Figs. 3-4). 0 (default, the paper's choice) is the first step, sigma 1,
      whatever the schedule length.
    """

    mode: str = "full"
    attention_blocks: BlockSelection = "all"
    feature_site: str = "attn"
    feature_block: int | None = None
    tau: float = 0.8
    map_threshold: float = 0.5
    prompt_tokens: str = "expression"
    instruction_template: str = "remove"
    similarity: str = "cosine"
    seed: int = 0
    timestep_index: int = 0
    num_inference_steps: int = 28
    refine: str = "none"

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("refine", self.refine, REFINEMENTS)
        _choice("feature_site", self.feature_site, FEATURE_SITES)
        _choice("prompt_tokens", self.prompt_tokens, PROMPT_TOKEN_SETS)
        _choice("similarity", self.similarity, SIMILARITIES)
        if isinstance(self.attention_blocks, str):
            _choice("attention_blocks", self.attention_blocks, BLOCK_SETS)
        else:
            blocks = tuple(int(b) for b in self.attention_blocks)
            if not blocks:
                raise ConfigError("attention_blocks is empty: name at least one block.")
            object.__setattr__(self, "attention_blocks", blocks)
        if not 0.0 <= self.tau < 1.0:
            raise ConfigError(f"tau must be in [0, 1), got {self.tau} (the RAM is min-max normalised to [0, 1]).")
        if not 0.0 <= self.map_threshold < 1.0:
            raise ConfigError(f"map_threshold must be in [0, 1), got {self.map_threshold}.")
        if not 0 <= self.timestep_index < self.num_inference_steps:
            raise ConfigError(
                f"timestep_index must be in [0, num_inference_steps={self.num_inference_steps}), got {self.timestep_index}."
            )
        if self.feature_block is not None and self.feature_block < 0:
            raise ConfigError(f"feature_block must be a 0-based block index, got {self.feature_block}.")

    def forward_key(self) -> tuple:
        """Settings that change the transformer forward; configs sharing it can share one forward."""
        steps = self.num_inference_steps if self.timestep_index else None
        return (self.prompt_tokens, self.instruction_template, self.seed, self.timestep_index, steps)

    def resolved(self, backbone: BlockLayout) -> "MethodConfig":
        """This config on ``backbone``: ``feature_block=None`` becomes the backbone's default block,
        and the attention and feature blocks are checked to exist (:class:`ConfigError` if not)."""
        backbone.resolve_blocks(self.attention_blocks)
        block = backbone.default_feature_block if self.feature_block is None else self.feature_block
        if not 0 <= block < backbone.num_blocks:
            raise ConfigError(f"feature_block {block} does not exist: {backbone.name} has blocks 0-{backbone.num_blocks - 1}.")
        return self if block == self.feature_block else replace(self, feature_block=block)

    def replace(self, **changes: Any) -> "MethodConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not isinstance(self.attention_blocks, str):
            data["attention_blocks"] = list(self.attention_blocks)
        return data


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


def parse_block_selection(text: str) -> BlockSelection:
    """``"all"``/``"double"``/``"single"`` or a comma list with ranges: ``"0-4,10"``."""
    text = text.strip()
    if text in BLOCK_SETS:
        return text
    blocks: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                low, high = part.split("-")
                blocks.extend(range(int(low), int(high) + 1))
            else:
                blocks.append(int(part))
    except ValueError:
        raise ConfigError(
            f"Cannot read block selection {text!r}: use all, double, single or indices like 0-4,10."
        ) from None
    return tuple(blocks)
