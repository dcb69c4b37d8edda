"""Settings of the toy editor (sizes) and of its training run; light to import (no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToyConfig:
    """Sizes of the toy editor."""

    text_hidden: int = 64  # > the grammar's ~60 words: random embeddings are nearly orthogonal
    text_layers: int = 28
    heads: int = 4
    head_dim: int = 32
    double_blocks: int = 2
    single_blocks: int = 4
    mlp_ratio: float = 3.0
    codec_downscale: int = 4  # pixels per latent side; a token is 2x2 latents = 8x8 px
    text_length: int = 32  # the text stream's padded length (every shapes instruction fits)
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
    """Training settings (all of them go into the model card)."""

    steps: int = 20000
    minutes: float = 55.0  # wall-clock budget: stop (and save) when spent, whatever the step
    seed: int = 0
    batch_size: int = 16
    lr: float = 1.5e-3
    warmup_steps: int = 150
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    p_first_step: float = 0.8
    changed_weight: float = 19.0
    pool_size: int = 40000
    curriculum_steps: int = 2500  # first steps draw attribute-only expressions ("the small red circle")
    world_seed: int = 0
    image_size: int = 64
    checkpoint_minutes: float = 5.0
    log_every: int = 10
    val_every: int = 250
    val_size: int = 64
    probe_every: int = 250  # grounding probe on `probe_size` validation scenes (0: off)
    probe_size: int = 48
    calibration_samples: int = 256  # scenes for the latent BatchNorm statistics
    threads: int = 1  # under CPU contention 1 thread is ~10x faster than 2 (OpenMP barriers)
    model: ToyConfig = field(default_factory=ToyConfig)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        return data
