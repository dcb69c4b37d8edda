"""Settings of the toy editor (sizes) and of its training run; light to import (no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToyConfig:
    """Sizes of the toy editor."""

    text_hidden: int = 64  # > the grammar's ~60 words: random embeddings are nearly orthogonal
    text_layers: int = 28
    heads: int = 2  # width 64: v4 (the shipped model); v2/v3 used 4 (width 128)
    head_dim: int = 32
    double_blocks: int = 2
    single_blocks: int = 4
    mlp_ratio: float = 3.0
    codec_downscale: int = 2  # pixels per latent side; a token is 2x2 latents = 4x4 px (16x16 grid at 64 px)
    text_length: int = 16  # the text stream's padded length (every shapes instruction fits)
    chat_template: str = "minimal"  # "minimal": the instruction's words alone; "qwen": Qwen3's template
    vocab_size: int = 512
    embedding_std: float = 1.0
    synonym_init: bool = True  # synonyms start with one shared embedding (a pretrained encoder's prior)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ToyConfig":
        return cls(**data)

    @property
    def latent_channels(self) -> int:
        return 3 * self.codec_downscale**2


@dataclass
class TrainConfig:
    """Training settings (all of them go into the model card). The defaults are toy-shapes v4's (run A3),
    except the wall-clock budget, which v4 spent in three segments (MODEL_CARD.md)."""

    steps: int = 20000
    minutes: float = 55.0  # wall-clock budget: stop (and save) when spent, whatever the step
    seed: int = 0
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 150
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    t_sampling: str = "logit-normal"  # v4's; "logit-normal": t = sigmoid(N(0, 1)); "first-step": t = 1 w.p. p_first_step,
    # else U(0, 1); "mixed": t = 1 w.p. p_first_step, else logit-normal
    p_first_step: float = 0.5
    changed_weight: float = 0.0  # extra squared-error weight of tokens that touch the edited object
    pool_size: int = 12000
    curriculum_steps: int = 0  # first steps draw attribute-only expressions ("the small red circle")
    init_from: str = ""  # a toy pipeline folder to start from (editseg.toy.warm_start); "" = random init
    world_tier: str = "basic"  # training world: a benchmark tier's geometry and kinds ("basic" or "full"), "train" split
    world_seed: int = 0
    image_size: int = 64
    checkpoint_minutes: float = 4.0
    log_every: int = 10
    val_every: int = 250
    val_size: int = 64
    probe_every: int = 150  # grounding probe on `probe_size` validation scenes (0: off)
    probe_size: int = 48
    probe_tier: str = "basic"  # tier of the probe's validation scenes (world seed world_seed + 1)
    calibration_samples: int = 256  # scenes for the latent BatchNorm statistics
    threads: int = 1  # under CPU contention 1 thread is ~10x faster than 2 (OpenMP barriers)
    model: ToyConfig = field(default_factory=ToyConfig)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        return data
