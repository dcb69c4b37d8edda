"""The generative backbones RLFseg adapts, behind one small interface (:class:`FlowBackbone`).

RLFseg changes nothing in the model (§3.2): the codec (VAE) encodes the image into ``z1`` and the
mask, rendered as a white-on-black RGB image, into ``z0``; the denoiser (UNet or transformer)
with a LoRA predicts the velocity from ``z_t``, ``t`` and the frozen text features.

- :class:`SD15Flow`: Stable Diffusion 1.5 (UNet, VAE, CLIP ViT-L/14 text encoder) as the paper.
  Latents are ``vae.encode(x).latent_dist.mode() * scaling_factor``; the UNet reads ``1000 t``.
- :class:`KleinFlow`: a FLUX.2 [klein] editor (real weights or the built-in ``toy-shapes``),
  latents are the pipeline's standardised, packed tokens; the transformer reads ``t`` (it scales
  by 1000 itself). ``reference=True`` (default) appends the clean image tokens after ``z_t``,
  the joint sequence the editor was trained on; ``False`` feeds ``z_t`` alone, as the paper.

LoRA weights are saved in the diffusers/peft format (``pytorch_lora_weights.safetensors``, keys
``unet.…`` or ``transformer.…``) that ``pipe.load_lora_weights(folder)`` also reads, next to an
``rlfseg_config.json`` naming the base model and the settings inference must reuse.
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ModelNotFoundError, OFFLINE_HINT

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
LORA_CONFIG = "rlfseg_config.json"
SD15_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_ALIASES = {"sd15": SD15_ID, "sd-1.5": SD15_ID, "stable-diffusion-v1-5": SD15_ID, "sd-legacy/stable-diffusion-v1-5": SD15_ID}
TINY_SD15 = "tiny-random-sd15"
SD15_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
KLEIN_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                      "to_qkv_mlp_proj")


def require_peft() -> None:
    """Raise a clear error when peft (needed for LoRA training and loading) is missing."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise ModelNotFoundError("RLFseg needs peft for its LoRA: pip install 'editseg[train]' (or pip install peft).")


def image_to_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB image → (3, r, r) float in [-1, 1], resized (not cropped) to the square training resolution."""
    image = image.convert("RGB")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def mask_to_pixels(mask: np.ndarray, resolution: int) -> torch.Tensor:
    """Bool (H, W) mask → (3, r, r) image in [-1, 1]: white (1) foreground on black (-1), nearest resize."""
    image = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.NEAREST)
    gray = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return gray.expand(3, -1, -1).contiguous()


def pixels_to_probability(pixels: torch.Tensor) -> torch.Tensor:
    """Decoded (B, 3, r, r) in [-1, 1] → (B, r, r) foreground probability in [0, 1] (channel mean)."""
    return ((pixels.float().mean(dim=1) + 1) / 2).clamp(0, 1)


class FlowBackbone(ABC):
    """Codec + frozen text encoder + denoiser; the LoRA goes on :attr:`denoiser`."""

    kind: str
    name: str
    resolution: int
    prompt_template: str = "{expression}"
    lora_targets: tuple[str, ...]
    lora_prefix: str
    denoiser: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def prompts(self, expressions: Sequence[str]) -> list[str]:
        return [self.prompt_template.format(expression=e) for e in expressions]

    @abstractmethod
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, r, r) in [-1, 1] → latents (no gradient)."""

    @abstractmethod
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → (B, 3, r, r) in about [-1, 1]."""

    @abstractmethod
    def encode_text(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Frozen text features for the denoiser (no gradient)."""

    @abstractmethod
    def velocity(self, denoiser: torch.nn.Module, z_t: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """``v_θ(z_t, t, c)`` through ``denoiser`` (the module itself or its DDP wrapper's inner module)."""

    def black_latent(self) -> torch.Tensor:
        """``z_b = Φ_encoder(I_b)`` of a pure black image (AOS), shape (1, ...)."""
        black = -torch.ones(1, 3, self.resolution, self.resolution, device=self.device)
        return self.encode_pixels(black)

    def freeze(self) -> None:
        """Freeze every weight (LoRA layers added afterwards are the only trainable ones)."""
        for module in self.modules():
            module.requires_grad_(False)

    @abstractmethod
    def modules(self) -> list[torch.nn.Module]:
        """All torch modules (for freezing and device moves)."""

    def config(self) -> dict[str, Any]:
        return {"backbone": self.kind, "model": self.name, "resolution": self.resolution,
                "prompt_template": self.prompt_template}

    def base_fingerprint(self) -> float:
        """A cheap checksum of the denoiser's base (non-LoRA) weights, the sum of their magnitudes
        (stable across devices and dtypes to ~1e-4): a LoRA only fits the weights it was trained on."""
        with torch.no_grad():
            return float(sum(float(p.double().abs().sum()) for n, p in self.denoiser.named_parameters() if "lora_" not in n))

    # -- LoRA --------------------------------------------------------------------------------
    def add_lora(self, rank: int = 64, alpha: float | None = None, dropout: float = 0.0,
                 targets: Sequence[str] | None = None, init: bool | str = True) -> None:
        """Freeze the base and add a peft LoRA adapter (``alpha`` defaults to ``rank``: scale 1)."""
        require_peft()
        from peft import LoraConfig

        self.freeze()
        config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                            target_modules=list(targets or self.lora_targets), init_lora_weights=init)
        self.denoiser.add_adapter(config)

    def lora_state_dict(self, denoiser: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        """peft's LoRA keys (``…to_q.lora_A.weight``), as diffusers' training scripts save transformer LoRAs."""
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(denoiser or self.denoiser)

    @staticmethod
    def pipeline_class():
        """The diffusers pipeline class whose LoRA loader reads this backbone's LoRA files."""
        raise NotImplementedError

    def save_lora(self, folder: str | Path, extra: dict[str, Any] | None = None,
                  denoiser: torch.nn.Module | None = None) -> Path:
        """Write ``pytorch_lora_weights.safetensors`` with diffusers' own ``save_lora_weights`` (the file
        ``pipe.load_lora_weights`` reads, LoRA config in its metadata) and ``rlfseg_config.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        denoiser = denoiser or self.denoiser
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.lora_state_dict(denoiser).items()}
        peft_config = denoiser.peft_config["default"]
        self.pipeline_class().save_lora_weights(
            folder, safe_serialization=True, weight_name=LORA_WEIGHTS,
            **{f"{self.lora_prefix}_lora_layers": state, f"{self.lora_prefix}_lora_adapter_metadata": peft_config.to_dict()},
        )
        record = {**self.config(), "base_fingerprint": self.base_fingerprint(), "rank": peft_config.r, "lora_alpha": peft_config.lora_alpha,
                  "target_modules": sorted(peft_config.target_modules), **(extra or {})}
        (folder / LORA_CONFIG).write_text(json.dumps(record, indent=2))
        return folder

    def load_lora(self, folder: str | Path) -> None:
        """Load a LoRA saved by :meth:`save_lora` (or any diffusers LoRA of this denoiser) with
        diffusers' ``load_lora_adapter``; the base weights stay frozen. Warns when the LoRA was
        trained on other base weights (``base_fingerprint`` in ``rlfseg_config.json``)."""
        require_peft()
        path = Path(folder).expanduser()
        directory, weight = (path, LORA_WEIGHTS) if path.is_dir() else (path.parent, path.name)
        record = directory / LORA_CONFIG
        expected = json.loads(record.read_text()).get("base_fingerprint") if record.is_file() else None
        if isinstance(expected, (int, float)) and abs(self.base_fingerprint() - expected) > 1e-3 * abs(expected):
            warnings.warn(f"The LoRA in {directory} was trained on other {self.name} weights than these "
                          "(base_fingerprint differs): retrain it on this version of the model.", stacklevel=2)
        if not (directory / weight).is_file():
            raise ModelNotFoundError(f"No LoRA weights at {directory / weight}: pass the folder written by "
                                     f"`editseg train rlfseg` (it holds {LORA_WEIGHTS} and {LORA_CONFIG}).")
        self.freeze()
        before = {n for n, _ in self.denoiser.named_parameters()}
        self.denoiser.load_lora_adapter(str(directory), prefix=self.lora_prefix, weight_name=weight, adapter_name="default")
        added = {n for n, _ in self.denoiser.named_parameters()} - before
        if not added:
            raise ModelNotFoundError(f"{directory / weight} holds no '{self.lora_prefix}' LoRA weights that fit this "
                                     f"{self.kind} denoiser: was it trained on another base model?")
        self.freeze()


class SD15Flow(FlowBackbone):
    """Stable Diffusion 1.5: UNet2DConditionModel + AutoencoderKL + CLIP text encoder/tokenizer."""

    kind = "sd15"
    lora_targets = SD15_LORA_TARGETS
    lora_prefix = "unet"

    @staticmethod
    def pipeline_class():
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline

    def __init__(self, unet, vae, text_encoder, tokenizer, name: str = SD15_ID, resolution: int = 512):
        self.denoiser, self.vae, self.text_encoder, self.tokenizer = unet, vae.eval(), text_encoder.eval(), tokenizer
        self.name, self.resolution = name, resolution
        self.scaling = float(getattr(vae.config, "scaling_factor", 0.18215))

    @classmethod
    def from_pretrained(cls, model: str = SD15_ID, device=None, dtype: torch.dtype | None = None, resolution: int = 512) -> "SD15Flow":
        if model == TINY_SD15:
            from ..backbones.tiny_sd15 import build_tiny_sd15

            flow = cls(*build_tiny_sd15(), name=TINY_SD15, resolution=min(resolution, 32))
        else:
            from diffusers import AutoencoderKL, UNet2DConditionModel
            from transformers import CLIPTextModel, CLIPTokenizer

            source = SD15_ALIASES.get(model.lower(), model)
            try:
                kwargs = {"torch_dtype": dtype} if dtype is not None else {}
                parts = (UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs),
                         AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs),
                         CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kwargs),
                         CLIPTokenizer.from_pretrained(source, subfolder="tokenizer"))
            except (OSError, ValueError) as error:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ModelNotFoundError(
                    f"Could not load Stable Diffusion 1.5 from {source!r}: {reason}\n"
                    f"Download it with `hf download {SD15_ID} --local-dir <folder>` and pass the folder. " + OFFLINE_HINT
                ) from None
            flow = cls(*parts, name=model, resolution=resolution)
        if device is not None:
            for module in flow.modules():
                module.to(device)
        return flow

    def modules(self) -> list[torch.nn.Module]:
        return [self.denoiser, self.vae, self.text_encoder]

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.vae.device, self.vae.dtype)
        return self.vae.encode(pixels).latent_dist.mode() * self.scaling

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode((latents / self.scaling).to(self.vae.dtype)).sample

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return {"embeds": self.text_encoder(ids.to(self.text_encoder.device))[0]}

    def velocity(self, denoiser, z_t, t, cond):
        timestep = (t * 1000).to(z_t.dtype)
        return denoiser(z_t.to(self.dtype), timestep, encoder_hidden_states=cond["embeds"].to(self.dtype)).sample


class KleinFlow(FlowBackbone):
    """A FLUX.2 [klein] pipeline (through editseg's ``Flux2KleinBackbone``)."""

    kind = "flux2-klein"
    lora_targets = KLEIN_LORA_TARGETS
    lora_prefix = "transformer"

    @staticmethod
    def pipeline_class():
        from diffusers import Flux2KleinPipeline

        return Flux2KleinPipeline

    def __init__(self, backbone, resolution: int, reference: bool = True, prompt_template: str = "{expression}"):
        self.backbone = backbone
        self.pipeline = backbone.pipeline
        self.denoiser = self.pipeline.transformer
        self.name, self.resolution, self.reference, self.prompt_template = backbone.name, resolution, reference, prompt_template
        self._ids: torch.Tensor | None = None

    @classmethod
    def from_pretrained(cls, model: str = "toy-shapes", device=None, dtype: torch.dtype | None = None,
                        resolution: int | None = None, reference: bool = True,
                        prompt_template: str | None = None) -> "KleinFlow":
        from ..backbones import TOY_SHAPES, load_backbone

        backbone = load_backbone(model, device=device, dtype=dtype)  # default: bf16 on CUDA, float32 elsewhere
        is_toy = model == TOY_SHAPES
        resolution = resolution or (64 if is_toy or backbone.is_random else 512)
        # The toy editor's text encoder knows only its grammar and "remove ..." instructions.
        template = prompt_template or ("remove {expression}" if is_toy else "{expression}")
        return cls(backbone, resolution, reference=reference, prompt_template=template)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "reference": self.reference}

    def modules(self) -> list[torch.nn.Module]:
        return [self.denoiser, self.pipeline.vae, self.pipeline.text_encoder]

    def latent_ids(self, batch: int) -> torch.Tensor:
        """Position ids of the ``z_t`` tokens (and, with ``reference``, of the clean image tokens after them)."""
        if self._ids is None:
            pipe, r = self.pipeline, self.resolution
            gen = torch.Generator("cpu").manual_seed(0)
            _, noisy = pipe.prepare_latents(batch_size=1, num_latents_channels=pipe.transformer.config.in_channels // 4,
                                            height=r, width=r, dtype=torch.float32, device=self.device, generator=gen)
            ids = [noisy]
            if self.reference:
                blank = pipe.image_processor.preprocess(Image.new("RGB", (r, r)), height=r, width=r, resize_mode="crop")
                _, clean = pipe.prepare_image_latents(images=[blank], batch_size=1, generator=gen, device=self.device,
                                                      dtype=pipe.vae.dtype)
                ids.append(clean.to(noisy.device))
            self._ids = torch.cat(ids, dim=1)
        return self._ids.expand(batch, -1, -1)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        pipe = self.pipeline
        latents = pipe._encode_vae_image(image=pixels.to(self.device, pipe.vae.dtype), generator=None)
        return pipe._pack_latents(latents)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        pipe, r = self.pipeline, self.resolution
        side = r // (pipe.vae_scale_factor * 2)
        ids = self.latent_ids(latents.shape[0])[:, : side * side].to(latents.device)
        grid = pipe._unpack_latents_with_ids(latents, ids, side, side)
        mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1).to(grid.device, grid.dtype)
        std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(grid.device, grid.dtype)
        grid = pipe._unpatchify_latents(grid * std + mean)
        return pipe.vae.decode(grid.to(pipe.vae.dtype), return_dict=False)[0]

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        return dict(self.backbone.encode_text(list(prompts), list(prompts), align=False).tensors)

    def velocity(self, denoiser, z_t, t, cond):
        batch, tokens = z_t.shape[0], z_t.shape[1]
        hidden = z_t
        if self.reference:
            hidden = torch.cat([z_t, cond["reference"].to(z_t.dtype)], dim=1)
        out = denoiser(hidden_states=hidden.to(self.dtype), encoder_hidden_states=cond["embeds"].to(self.dtype),
                       timestep=t.to(self.dtype), img_ids=self.latent_ids(batch).to(z_t.device),
                       txt_ids=cond["ids"].to(z_t.device), guidance=None, return_dict=False)[0]
        return out[:, :tokens]


def load_flow_backbone(model: str, device=None, dtype: torch.dtype | None = None, resolution: int | None = None,
                       **options) -> FlowBackbone:
    """SD 1.5 (``sd15``, a hub id/folder holding ``unet/``, or ``tiny-random-sd15``) or a FLUX.2 klein
    model (``toy-shapes``, ``flux2-klein-4b``, ``tiny-random-flux2``, a folder/hub id)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if is_sd15(model):
        return SD15Flow.from_pretrained(model, device=device, dtype=dtype, resolution=resolution or 512)
    return KleinFlow.from_pretrained(model, device=device, dtype=dtype, resolution=resolution, **options)


def is_sd15(model: str) -> bool:
    if model == TINY_SD15 or model.lower() in SD15_ALIASES or "stable-diffusion" in model.lower():
        return True
    index = Path(model).expanduser() / "model_index.json"
    if index.is_file():
        try:
            return json.loads(index.read_text()).get("_class_name", "").startswith("StableDiffusion")
        except (OSError, ValueError):
            return False
    return (Path(model).expanduser() / "unet").is_dir()
