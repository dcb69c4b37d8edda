"""Training settings of RLFseg; defaults are the paper's (Table 8, §4.1) where it gives them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class RLFsegTrainConfig:
    """One training run.

    Paper values: LoRA rank 64 (Table 6), AdamW (Table 8; §4.1 says "Adam"), lr 1e-4, batch 8 per
    GPU, 10 epochs, 512x512, seed 42, t ~ U(0, 1). Not given in the paper (our choices, switchable):
    ``lora_alpha`` = rank (scale 1), LoRA on the attention projections, constant lr with no warm-up
    (no schedule is stated), AdamW's default weight decay 0.01, gradient clipping at 1.0,
    per-sample dynamic selection (eq. 4). ``scale_lr`` multiplies lr by the global batch, one
    reading of "1e-4 for each mini-batch sample on each GPU".
    """

    model: str = "sd15"
    source: str = "phrasecut"  # phrasecut | refcoco | refcoco+ | refcocog | manifest | shapes
    data_root: str | None = None  # dataset folder / manifest file (not needed for shapes)
    split: str = "train"
    val_split: str = "val"
    val_manifest: str | None = None
    train_size: int | None = None  # use only the first N samples (shapes: size of the sample pool)
    val_size: int = 64
    resolution: int | None = None  # default: 512 (SD 1.5, klein), 64 (toy-shapes)
    prompt_template: str | None = None  # default: backbone's ("{expression}"; toy: "remove {expression}")
    reference: bool = True  # klein only: append the clean image tokens after z_t
    rank: int = 64
    lora_alpha: float | None = None
    lr: float = 1e-4
    scale_lr: bool = False
    weight_decay: float = 1e-2
    warmup_steps: int = 0
    grad_clip: float = 1.0
    batch_size: int = 8
    epochs: int = 10
    max_steps: int | None = None
    seed: int = 42
    gradient_accumulation: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate)
    num_workers: int = 0
    gradient_checkpointing: bool = False
    refine_only: bool = False  # RDS: compute the SAM-refined labels of the training set (sharded over processes), then stop
    rds: bool = False
    sam: str = "facebook/sam-vit-huge"
    refined_dir: str | None = None  # default: <out>/refined-labels
    rds_anchors: int = 5
    rds_iterations: int = 5
    rds_tau: float = 0.95
    rds_stop: str = "converged"
    val_sampler: str = "aos"
    aos_epsilon: float = 0.1
    log_every: int = 10
    val_every: int = 500
    checkpoint_every: int = 500
    world_seed: int = 0  # shapes source only
    minutes: float | None = None  # wall-clock budget per invocation (checkpoint + LoRA saved when it ends)
    threads: int | None = None  # torch CPU threads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RLFsegTrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
