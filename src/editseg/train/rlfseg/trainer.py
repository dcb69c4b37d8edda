"""The RLFseg LoRA training loop (accelerate; one or many GPUs, or the CPU).

Per step and process: a batch of (image, expression, mask) → ``z1 = E(image)``, ``z0 = E(mask)``
(frozen codec), frozen text features, ``t ~ U(0, 1)``, ``z_t = t z1 + (1 - t) z0``, and the loss
of eq. 2 on the LoRA-adapted denoiser's velocity. With RDS the SAM-refined label ``M_refine``
gives a second ``z0`` at the same ``t``; both branches run in one forward (batch 2B) and eq. 4
keeps, per sample, the branch with the lower loss.

Reproducible and resumable: the batch of step ``s`` is a slice of an epoch permutation seeded by
``(seed, epoch)`` and ``t`` is drawn from a generator seeded by ``(seed, s, process)``, so a run
resumed from ``checkpoint.pt`` (LoRA weights, optimizer, scheduler, step; loaded with
``torch.load(weights_only=True)``) continues exactly the uninterrupted run. Ctrl-C saves a checkpoint.

Outputs in ``out``: ``train_log.jsonl`` (loss, lr, RDS choice rate, validation mIoU),
``checkpoint.pt``, ``lora/`` (diffusers-format LoRA + ``rlfseg_config.json``), ``summary.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ...methods.rlfseg import predict_probability
from ...methods.rlfseg_flow import dynamic_selection, flow_loss, interpolate
from ...methods.rlfseg_models import FlowBackbone, load_flow_backbone
from .config import RLFsegTrainConfig
from .data import FlowDataset, build_source
from .rds import RefineConfig, RefinedLabels

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"


class VelocityModel(torch.nn.Module):
    """The LoRA-adapted denoiser as one module (what accelerate/DDP wraps)."""

    def __init__(self, flow: FlowBackbone):
        super().__init__()
        self.denoiser = flow.denoiser
        object.__setattr__(self, "flow", flow)  # not a submodule: the frozen parts stay out of DDP

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.flow.velocity(self.denoiser, z_t, t, cond)


def step_indices(step: int, batch: int, processes: int, process: int, size: int, seed: int) -> list[int]:
    """Dataset indices of ``process``'s share of global step ``step`` (epoch permutations seeded by (seed, epoch))."""
    global_batch = batch * processes
    per_epoch = size // global_batch
    if per_epoch < 1:
        raise ValueError(f"The training set ({size} samples) is smaller than one global batch ({global_batch}).")
    epoch, offset = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(size)
    start = offset * global_batch + process * batch
    return order[start : start + batch].tolist()


class StepBatches(torch.utils.data.Sampler):
    """Batches of steps ``start .. total - 1`` for one process (a DataLoader ``batch_sampler``)."""

    def __init__(self, start: int, total: int, batch: int, processes: int, process: int, size: int, seed: int):
        self.args = (batch, processes, process, size, seed)
        self.start, self.total = start, total

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.total):
            yield step_indices(step, *self.args)

    def __len__(self) -> int:
        return max(0, self.total - self.start)


def time_draw(step: int, size: int, seed: int, process: int) -> torch.Tensor:
    """``t ~ U(0, 1)`` for one step and process, seeded by (seed, step, process)."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, process]).generate_state(1)[0]))
    return torch.rand(size, generator=generator)


def rf_step_loss(model, flow: FlowBackbone, batch: dict, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean eq. 2 loss of a batch (eq. 4 when the batch holds refined labels) and the RDS indicator."""
    z1 = flow.encode_pixels(batch["pixels"])
    z0 = flow.encode_pixels(batch["mask_pixels"])
    cond = flow.encode_text(flow.prompts(batch["expression"]))
    cond["reference"] = z1
    t = t.to(z1.device, z1.dtype)
    if "refined_pixels" not in batch:
        velocity = model(interpolate(z1, z0, t), t, cond)
        return flow_loss(velocity, z1, z0).mean(), None
    z0_refined = flow.encode_pixels(batch["refined_pixels"])
    size = z1.shape[0]
    doubled = {k: torch.cat([v, v]) for k, v in cond.items()}
    z_t = torch.cat([interpolate(z1, z0, t), interpolate(z1, z0_refined, t)])
    velocity = model(z_t, torch.cat([t, t]), doubled)
    selected, indicator = dynamic_selection(flow_loss(velocity[:size], z1, z0), flow_loss(velocity[size:], z1, z0_refined))
    return selected.mean(), indicator


def validation_miou(flow: FlowBackbone, dataset: FlowDataset, sampler: str, epsilon: float, batch_size: int = 8) -> float:
    """Mean per-sample IoU of the predicted masks (probability > 0.5) at the training resolution."""
    ious = []
    for lo in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(lo, min(len(dataset), lo + batch_size))]
        pixels = torch.stack([item["pixels"] for item in items])
        probability = predict_probability(flow, pixels, [item["expression"] for item in items], sampler=sampler, epsilon=epsilon)
        for prob, item in zip(probability.cpu(), items):
            pred, gt = prob.numpy() > 0.5, item["mask"].numpy()
            union = np.logical_or(pred, gt).sum()
            ious.append(1.0 if union == 0 else np.logical_and(pred, gt).sum() / union)
    return float(np.mean(ious)) if ious else float("nan")


def _make_sam(config: RLFsegTrainConfig, device):
    try:
        from ...components.sam import SamComponent
    except ModuleNotFoundError:  # pragma: no cover - until the SAM component lands on main
        raise RuntimeError("RDS needs editseg.components.sam (SAM), which this installation lacks.") from None
    return SamComponent.from_pretrained(config.sam, device=device)


def train(config: RLFsegTrainConfig, out: str | Path, *, progress: bool = True, flow: FlowBackbone | None = None,
          sam=None, on_log: Callable[[dict], None] | None = None) -> Path:
    """Train (or resume) a LoRA in ``out``; returns the ``lora/`` folder.

    ``flow`` (a loaded backbone) and ``sam`` (anything with ``set_image``/``predict_box``) may be
    passed in, e.g. tiny models in tests; by default they load from ``config.model`` / ``config.sam``.
    """
    from accelerate import Accelerator
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from tqdm.auto import tqdm

    out = Path(out)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if flow is None:
        options = {} if _is_sd(config.model) else {"reference": config.reference, "prompt_template": config.prompt_template}
        # float32 weights: the LoRA is trained in float32, accelerate's --mixed-precision autocasts the forward
        flow = load_flow_backbone(config.model, device=accelerator.device, dtype=torch.float32, resolution=config.resolution,
                                  **options)
    elif config.prompt_template:
        flow.prompt_template = config.prompt_template
    torch.manual_seed(config.seed)
    flow.add_lora(config.rank, config.lora_alpha)
    if config.gradient_checkpointing:
        flow.denoiser.enable_gradient_checkpointing()
    params = [p for p in flow.denoiser.parameters() if p.requires_grad]
    processes, process = accelerator.num_processes, accelerator.process_index
    lr = config.lr * (config.batch_size * processes if config.scale_lr else 1)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    warmup = max(1, config.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))

    source = build_source(config, image_size=flow.resolution)
    refined = None
    if config.rds:
        refine = RefineConfig(config.rds_anchors, config.rds_iterations, config.rds_tau, config.rds_stop, config.seed)
        refined = RefinedLabels(sam if sam is not None else _make_sam(config, accelerator.device),
                                config.refined_dir or out / "refined-labels", refine)
    dataset = FlowDataset(source, flow.resolution, refined)
    if config.refine_only:
        return _refine_all(dataset, accelerator, progress)
    val_dataset = FlowDataset(build_source(config, validation=True, image_size=flow.resolution), flow.resolution)
    steps_per_epoch = len(dataset) // (config.batch_size * processes)
    total = config.max_steps or config.epochs * steps_per_epoch

    step, elapsed_before = 0, 0.0
    checkpoint = out / CHECKPOINT
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        set_peft_model_state_dict(flow.denoiser, state["lora"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, elapsed_before = int(state["step"]), float(state["elapsed_s"])
    log_path = out / LOG
    if accelerator.is_main_process:
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= step] if log_path.exists() else []
        log_path.write_text("".join(line + "\n" for line in kept))
        (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))

    model = VelocityModel(flow)
    raw_optimizer = optimizer
    model, optimizer = accelerator.prepare(model, optimizer)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatches(step, total, config.batch_size, processes, process, len(dataset), config.seed),
        num_workers=config.num_workers,
    )
    start = time.time()

    def save_checkpoint() -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            inner = accelerator.unwrap_model(model).denoiser
            state = {"lora": {k: v.detach().cpu() for k, v in get_peft_model_state_dict(inner).items()},
                     "optimizer": raw_optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "step": step, "elapsed_s": elapsed_before + time.time() - start}
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)

    bar = tqdm(total=total, initial=step, disable=not (progress and accelerator.is_main_process), desc="rlfseg train")
    log = log_path.open("a") if accelerator.is_main_process else None
    try:
        for batch in loader:
            if config.minutes is not None and time.time() - start > config.minutes * 60:
                break
            model.train()
            with accelerator.accumulate(model):
                t = time_draw(step, len(batch["index"]), config.seed, process)
                loss, indicator = rf_step_loss(model, flow, batch, t)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.grad_clip:
                    accelerator.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            mean_loss = accelerator.reduce(loss.detach(), "mean").item()
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            if step % config.log_every == 0 or step == total or (config.val_every and step % config.val_every == 0):
                record = {"step": step, "loss": round(mean_loss, 6), "lr": scheduler.get_last_lr()[0],
                          "elapsed_s": round(elapsed_before + time.time() - start, 1)}
                if indicator is not None:
                    record["rds_original_fraction"] = round(indicator.float().mean().item(), 4)
                if config.val_every and (step % config.val_every == 0 or step == total) and accelerator.is_main_process:
                    model.eval()
                    record["val_miou"] = round(validation_miou(flow, val_dataset, config.val_sampler, config.aos_epsilon), 4)
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if on_log is not None:
                    on_log(record)
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                save_checkpoint()
    except KeyboardInterrupt:
        save_checkpoint()
        raise
    finally:
        bar.close()
        if log is not None:
            log.close()
    if config.val_every and step % config.val_every and accelerator.is_main_process:  # a budget ended the run
        record = {"step": step, "val_miou": round(validation_miou(flow, val_dataset, config.val_sampler, config.aos_epsilon), 4),
                  "elapsed_s": round(elapsed_before + time.time() - start, 1), "final": True}
        with log_path.open("a") as final_log:
            final_log.write(json.dumps(record) + "\n")
    save_checkpoint()
    lora_dir = out / "lora"
    if accelerator.is_main_process:
        inner = accelerator.unwrap_model(model).denoiser
        flow.save_lora(lora_dir, extra={"training": config.to_dict(), "steps": step}, denoiser=inner)
        summary = {"steps": step, "train_seconds": round(elapsed_before + time.time() - start, 1),
                   "lora_bytes": (lora_dir / "pytorch_lora_weights.safetensors").stat().st_size, "config": config.to_dict()}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return lora_dir


def _refine_all(dataset: FlowDataset, accelerator, progress: bool) -> Path:
    """Fill the refined-label cache for this process's share of the training set (index % processes)."""
    from tqdm.auto import tqdm

    if dataset.refined is None:
        raise ValueError("--refine-only needs --rds (it computes the SAM-refined labels).")
    mine = range(accelerator.process_index, len(dataset), accelerator.num_processes)
    for index in tqdm(mine, disable=not (progress and accelerator.is_main_process), desc="refine labels"):
        example = dataset.source[index]
        dataset.refined.get(example.sample_id, example.image, example.mask)
    accelerator.wait_for_everyone()
    return dataset.refined.folder


def _is_sd(model: str) -> bool:
    from ...methods.rlfseg_models import is_sd15

    return is_sd15(model)
