"""Train the toy editor on the shapes world with FLUX's rectified-flow objective.

Inputs are built exactly as at inference (``Flux2KleinBackbone``): the pipeline's image
processor and ``_encode_vae_image`` (BatchNorm-standardised, patchified latents), its position
ids, the chat template padded with the pad token, and the joint sequence
``[text | noisy target tokens | clean source tokens]`` with timestep ``sigma``.

Objective: ``x_t = (1 - t) x0 + t noise`` with ``x0`` the edited image's latents; the transformer
predicts the velocity ``noise - x0`` on the noisy tokens. ``t_sampling``: "logit-normal" (default,
v4's) draws ``t = sigmoid(N(0, 1))`` and never forces ``t = 1``; "mixed" draws ``t = 1`` (the first
denoising step, which editseg reads) with probability ``p_first_step`` and otherwise logit-normal
(v3's; it trains a better first-step editor whose clean stream ignores the words, MODEL_CARD.md);
"first-step" uses ``U(0, 1)`` instead of the logit-normal.
Tokens covering the edited object get weight ``1 + changed_weight`` in the squared error.
World: the "train" split of the ``world_tier`` tier's world (its geometry and expression kinds).
Curriculum (optional): the first ``curriculum_steps`` steps draw attribute-only expressions.
``init_from`` starts from another toy pipeline (``editseg.toy.warm_start``; v3 started from v2, v4 from scratch).

The text stream is padded to the model's ``text_length`` (16 tokens, the tokenizer's
``model_max_length``, which ``Flux2KleinBackbone`` pads to at inference).
Everything is seeded by (seed, step): a resumed run continues the same sequence.

Wall-clock budget (``minutes``, per invocation): when it, rather than ``steps``, binds, the
cosine schedule follows the clock (progress ``max(step / steps, elapsed / budget)``) so that a
run always ends annealed. Runs whose budget does not bind are reproducible step for step; the
log records which clock drove each step.

Every ``probe_every`` steps the log also records how well the model's first-step attention
grounds the referent on fixed validation scenes (RAM/CAM point accuracy, full-method mIoU,
through the real ``Segmenter``): watched, never optimised (no loss term touches the attention).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..backbones.flux2 import Flux2KleinBackbone
from ..data.shapes import GENERATOR_VERSION, TIERS, ShapesWorld, tier_world
from .config import ToyConfig, TrainConfig
from .model import build_toy_pipeline, parameter_counts, text_embeddings

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"


def token_change_mask(mask: np.ndarray, grid: int) -> np.ndarray:
    """(grid*grid,) float: 1 where a token's pixel patch touches the edited object."""
    side = mask.shape[0] // grid
    return mask.reshape(grid, side, grid, side).any(axis=(1, 3)).reshape(-1).astype(np.float32)


class ShapesLatents:
    """Training samples of ``ShapesWorld(seed=world_seed)`` "train" split as model inputs, cached.

    Sample ``i`` of the pool is generated and encoded on first use (source and target latents
    through the pipeline's own VAE path, tokenised instruction), then reused in later epochs.
    """

    def __init__(self, backbone: Flux2KleinBackbone, world: ShapesWorld, pool_size: int):
        self.backbone = backbone
        self.world = world
        self.pool_size = pool_size
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]] = {}

    def encode_images(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """(n, tokens, channels) standardised, packed latents, as ``Flux2KleinBackbone.prepare_image``."""
        pipe = self.backbone.pipeline
        size = arrays[0].shape[0]
        pixels = pipe.image_processor.preprocess(
            [Image.fromarray(a) for a in arrays], height=size, width=size, resize_mode="crop"
        )
        with torch.no_grad():
            latents = pipe._encode_vae_image(image=pixels.to(pipe.vae.dtype), generator=None)
        return pipe._pack_latents(latents)

    def token_ids(self, instruction: str) -> list[int]:
        text = self.backbone.chat_text(instruction)
        return self.backbone.pipeline.tokenizer(text)["input_ids"]

    def fill(self, indices: list[int]) -> None:
        missing = [i for i in indices if i not in self.cache]
        if not missing:
            return
        samples = [self.world.sample("train", i) for i in missing]
        latents = self.encode_images([s.image for s in samples] + [s.target for s in samples])
        grid = int(math.isqrt(latents.shape[1]))
        for k, (i, sample) in enumerate(zip(missing, samples)):
            changed = torch.from_numpy(token_change_mask(sample.mask, grid))
            self.cache[i] = (latents[k], latents[len(samples) + k], changed, self.token_ids(sample.instruction))

    def batch(self, indices: list[int], text_len: int) -> dict[str, torch.Tensor]:
        self.fill(indices)
        items = [self.cache[i] for i in indices]
        pad = self.backbone.pipeline.tokenizer.pad_token_id
        ids = torch.full((len(items), text_len), pad, dtype=torch.long)
        for row, item in enumerate(items):
            ids[row, : len(item[3])] = torch.tensor(item[3][:text_len])
        return {
            "source": torch.stack([it[0] for it in items]),
            "target": torch.stack([it[1] for it in items]),
            "changed": torch.stack([it[2] for it in items]),
            "input_ids": ids,
        }


def batch_indices(step: int, batch_size: int, pool_size: int, seed: int) -> list[int]:
    """Pool indices of ``step``'s batch: epoch-wise permutations seeded by (seed, epoch)."""
    per_epoch = pool_size // batch_size
    epoch, offset = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(pool_size)
    return order[offset * batch_size : (offset + 1) * batch_size].tolist()


def lr_at(step: int, config: TrainConfig, time_progress: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` at ``steps`` (or at the end of the budget)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    progress = max(progress, min(1.0, time_progress))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def position_ids(backbone: Flux2KleinBackbone, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy ids, clean ids) of a square image, from the pipeline's own methods."""
    pipe = backbone.pipeline
    blank = Image.new("RGB", (image_size, image_size))
    clean_ids = backbone.prepare_image(blank).tensors["ids"]
    _, noisy_ids = pipe.prepare_latents(
        batch_size=1,
        num_latents_channels=pipe.transformer.config.in_channels // 4,
        height=image_size,
        width=image_size,
        dtype=torch.float32,
        device=torch.device("cpu"),
        generator=torch.Generator("cpu").manual_seed(0),
    )
    return noisy_ids, clean_ids


def calibrate_latent_statistics(backbone: Flux2KleinBackbone, world: ShapesWorld, n: int = 256) -> None:
    """Set the VAE's BatchNorm statistics to those of the (fixed) encoder on training scenes."""
    pipe = backbone.pipeline
    bn = pipe.vae.bn
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - pipe.vae.config.batch_norm_eps)
    samples = [world.sample("train", 10_000_000 + i) for i in range(n)]
    data = ShapesLatents(backbone, world, 0)
    latents = data.encode_images([s.image for s in samples] + [s.target for s in samples])
    flat = latents.reshape(-1, latents.shape[-1])
    bn.running_mean.copy_(flat.mean(0))
    bn.running_var.copy_(flat.var(0))


def grounding_probe(backbone: Flux2KleinBackbone, samples) -> dict[str, float]:
    """Observation only (never a loss): RAM/CAM point accuracy and full-method mIoU of the paper's
    defaults on ``samples``, the same from the double-stream blocks alone, and the model's own
    first-step edit accuracy (the referred object is the most changed one)."""
    from ..api import Segmenter
    from ..config import MethodConfig
    from .evaluate import edit_localisation, score

    segmenter = Segmenter(backbone)
    scores = score(segmenter, samples, MethodConfig())
    double = score(segmenter, samples, MethodConfig(attention_blocks="double"))
    edits = edit_localisation(backbone, samples)
    return {"ram_pa": round(scores.ram_point_accuracy, 3), "cam_pa": round(scores.cam_point_accuracy, 3),
            "miou": round(scores.mIoU, 3), "ram_pa_double": round(double.ram_point_accuracy, 3),
            "cam_pa_double": round(double.cam_point_accuracy, 3), "miou_double": round(double.mIoU, 3),
            "edit_acc": round(edits["object_accuracy"], 3), "edit_chance": round(edits["object_chance"], 3)}


def sample_t(config: TrainConfig, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (sigma) of a batch and the mask of those at the first step (t = 1 exactly)."""
    if config.t_sampling == "logit-normal":
        t = torch.sigmoid(torch.randn(size, generator=generator))
        return t, t > 0.999
    if config.t_sampling in ("first-step", "mixed"):
        first = torch.rand(size, generator=generator) < config.p_first_step
        if config.t_sampling == "mixed":
            other = torch.sigmoid(torch.randn(size, generator=generator))
        else:
            other = torch.rand(size, generator=generator)
        return torch.where(first, torch.ones(size), other), first
    raise ValueError(f"t_sampling must be 'logit-normal', 'first-step' or 'mixed', got {config.t_sampling!r}")


def velocity_loss(
    transformer, batch: dict[str, torch.Tensor], t: torch.Tensor, noise: torch.Tensor, text_embeds: torch.Tensor,
    noisy_ids: torch.Tensor, clean_ids: torch.Tensor, changed_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted rectified-flow loss (scalar) and the per-sample unweighted loss."""
    x0, source = batch["target"], batch["source"]
    size, noisy_len = x0.shape[0], x0.shape[1]
    x_t = (1 - t)[:, None, None] * x0 + t[:, None, None] * noise
    hidden = torch.cat([x_t, source], dim=1)
    img_ids = torch.cat([noisy_ids, clean_ids], dim=1).expand(size, -1, -1)
    text_len = text_embeds.shape[1]
    txt_ids = torch.zeros(size, text_len, 4, dtype=torch.long)
    txt_ids[..., 3] = torch.arange(text_len)
    pred = transformer(
        hidden_states=hidden, encoder_hidden_states=text_embeds, timestep=t, img_ids=img_ids,
        txt_ids=txt_ids, guidance=None, return_dict=False,
    )[0][:, :noisy_len]
    error = (pred - (noise - x0)).pow(2).mean(dim=-1)  # (batch, tokens)
    weights = 1.0 + changed_weight * batch["changed"]
    loss = (error * weights).sum() / weights.sum()
    return loss, error.mean(dim=1).detach()


def train(
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
) -> Path:
    """Train (or resume) in ``out``; writes ``pipeline/`` (save_pretrained), the log and a checkpoint."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    torch.set_flush_denormal(True)
    pipeline = build_toy_pipeline(config.model, seed=config.seed)
    backbone = Flux2KleinBackbone(pipeline, name="toy-shapes")
    if config.world_tier not in TIERS or config.probe_tier not in TIERS:
        raise ValueError(f"world_tier/probe_tier must be one of {tuple(TIERS)}")
    world = tier_world(config.world_tier, config.world_seed, config.image_size)
    calibrate_latent_statistics(backbone, world, config.calibration_samples)
    transformer = pipeline.transformer.train()
    embeddings = pipeline.text_encoder.model.embed_tokens.weight
    for module in (pipeline.vae, pipeline.text_encoder):
        module.requires_grad_(False)
    embeddings.requires_grad_(True)
    params = [p for p in transformer.parameters()] + [embeddings]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))

    step, elapsed_before = 0, 0.0
    checkpoint = out / CHECKPOINT
    if checkpoint.exists():
        state = load_checkpoint(checkpoint)
        transformer.load_state_dict(state["transformer"])
        pipeline.text_encoder.load_state_dict(state["text_encoder"])
        pipeline.vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before = state["step"], state["elapsed_s"]
    elif config.init_from:
        from .warm_start import warm_start

        warm_start(pipeline, config.init_from)
    (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))

    data = ShapesLatents(backbone, world, config.pool_size)
    attribute_world = tier_world("basic", config.world_seed, config.image_size)
    attribute_data = ShapesLatents(backbone, attribute_world, config.pool_size) if config.curriculum_steps else data
    val_world = tier_world(config.probe_tier, config.world_seed + 1, config.image_size)
    val = ShapesLatents(backbone, val_world, 0)
    val_world_indices = list(range(config.val_size))
    val_cache = {}
    noisy_ids, clean_ids = position_ids(backbone, config.image_size)
    text_len = backbone.max_sequence_length
    probe_samples = val_world.split("val", config.probe_size, start=10_000)
    start = time.time()
    last_checkpoint = start
    budget_s = config.minutes * 60
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="toy train")

    def save_checkpoint() -> None:
        torch.save(
            {
                "transformer": transformer.state_dict(),
                "text_encoder": pipeline.text_encoder.state_dict(),
                "vae": pipeline.vae.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "elapsed_s": elapsed_before + time.time() - start,
                "config": config.to_dict(),
            },
            checkpoint.with_suffix(".tmp"),
        )
        checkpoint.with_suffix(".tmp").replace(checkpoint)

    def validation_loss() -> float:
        """Loss at t = 1 on fixed validation samples."""
        if not val_cache:
            samples = [val.world.sample("val", i) for i in val_world_indices]
            val.cache = {}
            for i, s in enumerate(samples):
                lat = val.encode_images([s.image, s.target])
                grid = int(math.isqrt(lat.shape[1]))
                val.cache[i] = (lat[0], lat[1], torch.from_numpy(token_change_mask(s.mask, grid)), val.token_ids(s.instruction))
            val_cache["ready"] = True
        transformer.eval()
        total = 0.0
        with torch.no_grad():
            for lo in range(0, config.val_size, 16):
                idx = list(range(lo, min(config.val_size, lo + 16)))
                batch = val.batch(idx, text_len)
                g = torch.Generator().manual_seed(12345 + lo)
                noise = torch.randn(batch["target"].shape, generator=g)
                t = torch.ones(len(idx))
                loss, _ = velocity_loss(transformer, batch, t, noise, text_embeddings(pipeline, batch["input_ids"]),
                                        noisy_ids, clean_ids, config.changed_weight)
                total += loss.item() * len(idx)
        transformer.train()
        return total / config.val_size

    with (out / LOG).open("a") as log:
        while step < config.steps:
            if time.time() - start > budget_s - 30:
                break
            now = time.time() - start
            time_progress = (elapsed_before + now) / (elapsed_before + budget_s)
            lr = lr_at(step, config, time_progress)
            clock = lr != lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            source = attribute_data if step < config.curriculum_steps else data
            batch = source.batch(batch_indices(step, config.batch_size, config.pool_size, config.seed), text_len)
            g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            size = batch["target"].shape[0]
            noise = torch.randn(batch["target"].shape, generator=g)
            t, first = sample_t(config, size, g)
            embeds = text_embeddings(pipeline, batch["input_ids"])
            loss, per_sample = velocity_loss(transformer, batch, t, noise, embeds, noisy_ids, clean_ids, config.changed_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % config.log_every == 0 or step == config.steps:
                record = {
                    "step": step,
                    "loss": round(loss.item(), 6),
                    "loss_t1": round(per_sample[first].mean().item(), 6) if first.any() else None,
                    "loss_t_hi": round(per_sample[t > 0.8].mean().item(), 6) if (t > 0.8).any() else None,
                    "grad_norm": round(float(grad_norm), 4),
                    "lr": lr,
                    "schedule": "clock" if clock else "steps",
                    "elapsed_s": round(elapsed_before + time.time() - start, 1),
                }
                if config.val_every and (step % config.val_every == 0 or step == config.steps):
                    record["val_loss_t1"] = round(validation_loss(), 6)
                if config.probe_every and (step % config.probe_every == 0 or step == config.steps):
                    transformer.eval()
                    record["grounding"] = grounding_probe(backbone, probe_samples)
                    transformer.train()
                log.write(json.dumps(record) + "\n")
                log.flush()
                if on_log is not None:
                    on_log(record)
            if time.time() - last_checkpoint > config.checkpoint_minutes * 60:
                save_checkpoint()
                last_checkpoint = time.time()
    bar.close()
    save_checkpoint()
    transformer.eval()
    final = out / "pipeline"
    pipeline.save_pretrained(final, safe_serialization=True)
    summary = {
        "steps": step,
        "train_seconds": round(elapsed_before + time.time() - start, 1),
        "generator_version": GENERATOR_VERSION,
        "parameters": parameter_counts(pipeline),
        "config": config.to_dict(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return final


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint (weights, optimizer state, step, config) read with
    ``torch.load(weights_only=True)``: tensors and plain data only, so a crafted file cannot run code.
    A file that needs more is refused with :class:`~editseg.errors.UnsafeFileError`."""
    import pickle

    from ..errors import UnsafeFileError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeFileError(
            f"{path} is not a plain checkpoint (tensors and plain data only): {reason}. "
            "editseg loads checkpoints with weights_only=True and will not run code from them; "
            "delete it to start the run over."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise UnsafeFileError(f"{path} is not a readable checkpoint (truncated or corrupt: {error}).") from None


def export_checkpoint(out: str | Path, destination: str | Path | None = None) -> Path:
    """Write the pipeline of ``out/checkpoint.pt`` (a finished or interrupted run) with ``save_pretrained``."""
    out = Path(out)
    state = load_checkpoint(out / CHECKPOINT)
    config = state["config"]
    pipeline = build_toy_pipeline(ToyConfig.from_dict(config["model"]), seed=config["seed"])
    pipeline.transformer.load_state_dict(state["transformer"])
    pipeline.text_encoder.load_state_dict(state["text_encoder"])
    pipeline.vae.load_state_dict(state["vae"])
    destination = Path(destination) if destination else out / f"pipeline-step{state['step']}"
    pipeline.save_pretrained(destination, safe_serialization=True)
    return destination
