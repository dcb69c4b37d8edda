"""RLFseg (rectified latent flow image → mask with a LoRA) as an editseg method: inference side.

``RLFseg.from_pretrained(lora="runs/rlfseg/lora")`` reads the LoRA folder written by
``editseg train rlfseg`` (``pytorch_lora_weights.safetensors`` + ``rlfseg_config.json``, which
names the base model, resolution and prompt template), loads the base model, adds the LoRA and
predicts masks by sampling from the image latent ``z1`` to the mask latent ``z0``:

- ``sampler="aos"`` (default, the paper's final model): one step with adaptive rescaling (eq. 7);
- ``"one-step"``: eq. 5 alone (Table 5's "× AOS" rows); ``"multi-step"``: ``steps`` Euler steps
  (Table 9); ``"hss"``: the appendix's hybrid step sampling (eqs. 8-10).

The decoded mask image (white on black) gives a foreground probability (channel mean, [0, 1]);
the mask is ``probability > threshold`` (0.5) at the input resolution. Results carry the
probability in ``maps["probability"]`` (input resolution) and ``token_maps["probability"]``
(the model's square working resolution).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ConfigError, ModelNotFoundError
from .rlfseg_flow import SAMPLERS, sample
from .rlfseg_models import LORA_CONFIG, LORA_WEIGHTS, FlowBackbone, image_to_pixels, is_sd15, load_flow_backbone, pixels_to_probability

from ..results import SegmentationResult
from .base import Method, memory_guard

DEFAULT_MODEL = "toy-shapes"
TOY_LORA_DIR = Path(__file__).resolve().parent.parent / "assets" / "rlfseg-toy-shapes"


def train_command(model: str) -> str:
    """The command that trains an RLFseg LoRA for ``model`` (shapes world for toy-shapes, PhraseCut otherwise)."""
    if model == DEFAULT_MODEL:
        return (f"editseg train rlfseg --model {model} --source shapes --out runs/rlfseg-toy --minutes 45 "
                "--batch-size 8 --lr 1e-3")
    return f"editseg train rlfseg --model {model} --source phrasecut --data-root data/VGPhraseCut_v0 --out runs/rlfseg"


def resolve_lora(model: str | None, lora: str | Path | None) -> Path:
    """The LoRA folder (or weights file) to load: ``lora`` as given, else the one shipped for the
    default model (:data:`TOY_LORA_DIR`). Without one, a :class:`~editseg.errors.ModelNotFoundError`
    says how to train one and to pass ``--lora``."""
    if lora is not None:
        return Path(lora).expanduser()
    name = model or DEFAULT_MODEL
    if name == DEFAULT_MODEL and (TOY_LORA_DIR / LORA_CONFIG).is_file():
        return TOY_LORA_DIR
    where = f" ({TOY_LORA_DIR} is missing from this installation)" if name == DEFAULT_MODEL else ""
    raise ModelNotFoundError(
        f"No shipped RLFseg LoRA for model {name!r}{where}; train one with:\n  {train_command(name)}\n"
        "or pass --lora PATH (lora=PATH in Python): the lora/ folder a training run writes."
    )


def lora_fingerprint(folder: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of the LoRA weights file: which LoRA a run used, wherever
    its folder lies (the shipped one sits in site-packages)."""
    path = Path(folder)
    weights = path / LORA_WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise ModelNotFoundError(f"{path} holds no {LORA_WEIGHTS}: pass the lora/ folder written by `editseg train rlfseg`.")
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def predict_probability(flow: FlowBackbone, pixels: torch.Tensor, expressions: Sequence[str], *, sampler: str = "aos",
                        epsilon: float = 0.1, steps: int = 5, z_black: torch.Tensor | None = None) -> torch.Tensor:
    """(B, r, r) foreground probabilities for ``pixels`` (B or 1, 3, r, r) and B expressions."""
    with torch.no_grad():
        device = flow.device
        z1 = flow.encode_pixels(pixels.to(device))
        if z1.shape[0] == 1 and len(expressions) > 1:
            z1 = z1.expand(len(expressions), *z1.shape[1:])
        cond = flow.encode_text(flow.prompts(expressions))
        cond["reference"] = z1
        if sampler == "aos" and z_black is None:
            z_black = flow.black_latent()

        def velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return flow.velocity(flow.denoiser, z, t, cond).to(z.dtype)

        z0 = sample(z1, velocity, sampler, z_black=z_black, epsilon=epsilon, steps=steps)
        return pixels_to_probability(flow.decode_latents(z0))


class RLFseg(Method):
    """A diffusion backbone with an RLFseg LoRA: image latent → mask latent in one (adaptive) step."""

    name: ClassVar[str] = "rlfseg"
    requires: ClassVar[tuple[str, ...]] = ("editing-dit",)  # or "unet" (SD 1.5), per the LoRA's base model

    def __init__(self, flow: FlowBackbone, *, sampler: str = "aos", epsilon: float = 0.1, steps: int = 5,
                 threshold: float = 0.5, lora: str | None = None):
        if sampler not in SAMPLERS:
            raise ConfigError(f"Unknown RLFseg sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
        self.flow, self.sampler, self.epsilon, self.steps, self.threshold, self.lora = flow, sampler, epsilon, steps, threshold, lora
        self._image: Image.Image | None = None
        self._pixels: torch.Tensor | None = None
        self._z_black: torch.Tensor | None = None
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(cls, model: str | None = None, *, device=None, dtype=None, offload: str = "none",
                        components: Mapping[str, str] | None = None, lora: str | None = None, **options) -> "RLFseg":
        """Load the base model named in the LoRA's ``rlfseg_config.json`` (or ``model``) and the LoRA.

        Without ``lora``, the default model (toy-shapes) uses the LoRA shipped in the package."""
        folder = resolve_lora(model, lora)
        config_path = (folder if folder.is_dir() else folder.parent) / LORA_CONFIG
        saved = json.loads(config_path.read_text()) if config_path.is_file() else {}
        base = model or saved.get("model")
        if base is None:
            raise ConfigError(f"{folder} has no {LORA_CONFIG} naming its base model: pass the model (--model).")
        extra = {} if is_sd15(base) else {"reference": saved.get("reference", True), "prompt_template": saved.get("prompt_template")}
        flow = load_flow_backbone(base, device=device, dtype=dtype, resolution=saved.get("resolution"), **extra)
        if saved.get("prompt_template"):
            flow.prompt_template = saved["prompt_template"]
        flow.load_lora(folder)
        flow.denoiser.eval()
        known = {"sampler", "epsilon", "steps", "threshold"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"Unknown RLFseg options: {', '.join(unknown)} (known: {', '.join(sorted(known))}).")
        return cls(flow, lora=str(folder), **options)

    def settings(self) -> dict:
        """Model and options an evaluation is tied to: sampler, its parameters, the LoRA's fingerprint
        (``lora_sha256``) and, informational only (not compared on resume), its path (``lora_path``)."""
        if self._fingerprint is None and self.lora is not None:
            self._fingerprint = lora_fingerprint(self.lora)
        config = {"sampler": self.sampler, "epsilon": self.epsilon, "steps": self.steps, "threshold": self.threshold,
                  "resolution": self.flow.resolution, "lora_sha256": self._fingerprint}
        return {"model": self.flow.name, "config": config, "lora_path": self.lora}

    def set_image(self, image: Image.Image) -> None:
        self._image = image.convert("RGB")
        self._pixels = image_to_pixels(self._image, self.flow.resolution)[None]

    def predict(self, expressions: Sequence[str]) -> list[SegmentationResult]:
        if self._image is None or self._pixels is None:
            raise ConfigError("No image: call set_image(image) first.")
        expressions = list(expressions)
        if not expressions:
            return []
        if self.sampler == "aos" and self._z_black is None:
            with torch.no_grad():
                self._z_black = self.flow.black_latent()
        start = time.perf_counter()
        with memory_guard(self.flow.device):
            probability = predict_probability(self.flow, self._pixels, expressions, sampler=self.sampler,
                                              epsilon=self.epsilon, steps=self.steps, z_black=self._z_black).float().cpu()
        width, height = self._image.size
        full = F.interpolate(probability[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        elapsed = time.perf_counter() - start
        config = {"sampler": self.sampler, "epsilon": self.epsilon, "steps": self.steps, "threshold": self.threshold,
                  "lora": self.lora, "resolution": self.flow.resolution}
        results = []
        for expression, prob, small in zip(expressions, full.numpy(), probability.numpy()):
            prob = prob.astype(np.float32)
            results.append(SegmentationResult(
                expression=expression, instruction=self.flow.prompts([expression])[0], mask=prob > self.threshold,
                method=self.name, maps={"probability": prob}, token_maps={"probability": small.astype(np.float32)},
                timings={"predict_s": elapsed / len(expressions)},
                model=self.flow.name, config=config,
            ))
        return results
