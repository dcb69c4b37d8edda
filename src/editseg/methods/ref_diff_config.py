"""Settings of Ref-Diff (Ni et al., arXiv:2308.16777), one switch per ablation or ambiguity.

Defaults follow the paper (§3-4.1); where it is silent, its released code (noted per field).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import ConfigError
from .ref_diff_scores import DEFAULT_THRESHOLDS
from .ref_diff_text import PARSERS

PROPOSAL_SOURCES = ("sam", "generative")
ATTENTION_MODES = ("softmax", "logits-cfg")
TOKEN_CHOICES = ("root", "root-mean", "all")
BIAS_TARGETS = ("masked-attention", "crop", "both", "none")
PRESETS = ("full", "G", "GS", "DS", "official-code")


@dataclass(frozen=True)
class RefDiffConfig:
    """Every choice of Ref-Diff.

    - ``proposals``: ``sam`` (the segmentor's automatic masks) or ``generative`` (eq. 8's
      weight-free filter of the attention map ``c`` at ``thresholds``).
    - ``alpha`` (eq. 1; paper 0.1): 1 = generative only, 0 = discriminative only.
    - ``beta`` (eq. 7; paper 0.3): weight of the masked-attention CLIP embedding.
    - ``steps`` / ``num_inference_steps``: the paper's ``t = 2``. Its code noises the image to step
      ``t`` of a 20-step DDIM schedule and denoises those ``t`` steps (img2img strength 0.1); the
      attention of every denoising step is averaged.
    - ``guidance_scale``: classifier-free guidance of those steps (paper silent; code 9.0).
    - ``attention_mode``: ``softmax`` = eq. 4 on the expression's branch; ``logits-cfg`` = the
      code's head-mean pre-softmax scores extrapolated like the guidance.
    - ``attention_levels``: UNet levels whose cross-attention is averaged (0 = latent grid, each
      level halves it). Paper silent; code: the maps of side image/32, i.e. level 2 (32x32 at
      1024 px). ``normalize_each_map``: min-max each layer's map before averaging (code: yes).
    - ``token``: ``root`` = the last sub-token of the root word (code), ``root-mean`` = mean over its
      sub-tokens, ``all`` = mean over every expression token (not the paper: an ablation).
    - ``parser``: ``auto`` (spaCy when an official model is installed, else rules), ``spacy``, ``rules``.
    - ``positional_bias`` (eq. 6), ``positional_extent`` (paper: ramp over the whole axis, 1.0;
      code: 2/3), ``directions`` considered, ``bias_target``: where ``x ⊙ P`` is fed (paper eq. 7:
      the masked-attention branch; code: the crop branch).
    - ``clip_masked_layer`` (paper: penultimate, -2) / ``clip_crop_layer`` (-1, CLIP's own output).
    - ``sam_*``: automatic-mask settings (SAM's defaults); ``sam_top_k`` / ``sam_min_area``: the
      code's extra proposal filter (the k largest masks, none below the area), off in the paper.
    - ``image_side``: the padded square the image is resized to (paper 1024; ``None`` = backbone default).
    - ``seed``: VAE posterior sample and noise.
    """

    proposals: str = "sam"
    alpha: float = 0.1
    beta: float = 0.3
    steps: int = 2
    num_inference_steps: int = 20
    guidance_scale: float = 9.0
    attention_mode: str = "softmax"
    attention_levels: tuple[int, ...] = (2,)
    normalize_each_map: bool = False
    token: str = "root"
    parser: str = "auto"
    positional_bias: bool = True
    positional_extent: float = 1.0
    directions: tuple[str, ...] = ("left", "right", "top", "bottom")
    bias_target: str = "masked-attention"
    clip_masked_layer: int = -2
    clip_crop_layer: int = -1
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    sam_points_per_side: int = 32
    sam_pred_iou_thresh: float = 0.88
    sam_stability_thresh: float = 0.95
    sam_top_k: int | None = None
    sam_min_area: int = 0
    image_side: int | None = None
    epsilon: float = 1e-8
    seed: int = 0

    def __post_init__(self) -> None:
        _choice("proposals", self.proposals, PROPOSAL_SOURCES)
        _choice("attention_mode", self.attention_mode, ATTENTION_MODES)
        _choice("token", self.token, TOKEN_CHOICES)
        _choice("parser", self.parser, PARSERS)
        _choice("bias_target", self.bias_target, BIAS_TARGETS)
        for name in ("alpha", "beta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if not 1 <= self.steps <= self.num_inference_steps:
            raise ConfigError(f"steps must be in [1, num_inference_steps={self.num_inference_steps}], got {self.steps}.")
        if not self.attention_levels or any(level < 0 for level in self.attention_levels):
            raise ConfigError(f"attention_levels must name UNet levels >= 0, got {self.attention_levels}.")
        if not 0.0 < self.positional_extent <= 1.0:
            raise ConfigError(f"positional_extent must be in (0, 1], got {self.positional_extent}.")
        if not self.thresholds or not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ConfigError("thresholds must be values in [0, 1].")
        object.__setattr__(self, "attention_levels", tuple(int(v) for v in self.attention_levels))
        object.__setattr__(self, "directions", tuple(self.directions))
        object.__setattr__(self, "thresholds", tuple(float(v) for v in self.thresholds))

    @property
    def uses_clip(self) -> bool:
        return self.alpha < 1.0

    @property
    def uses_sam(self) -> bool:
        return self.proposals == "sam"

    @classmethod
    def preset(cls, name: str, **changes: Any) -> "RefDiffConfig":
        """The paper's variants (Tables 4-5): ``full``; ``G`` (generative only, weight-free proposals);
        ``GS`` (SAM proposals, generative scores); ``DS`` (SAM proposals, CLIP scores); and
        ``official-code`` (the released code's choices where they differ from the paper)."""
        _choice("preset", name, PRESETS)
        settings: dict[str, Any] = {
            "full": {},
            "G": {"proposals": "generative", "alpha": 1.0},
            "GS": {"alpha": 1.0},
            "DS": {"alpha": 0.0},
            "official-code": {
                "attention_mode": "logits-cfg", "normalize_each_map": True, "positional_extent": 2 / 3,
                "directions": ("left", "right"), "bias_target": "crop", "sam_top_k": 10, "sam_min_area": 10000,
                "alpha": 0.05 / 1.05,
            },
        }[name]
        return cls(**{**settings, **changes})

    def replace(self, **changes: Any) -> "RefDiffConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("attention_levels", "directions", "thresholds"):
            data[key] = list(data[key])
        return data


def _choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")
