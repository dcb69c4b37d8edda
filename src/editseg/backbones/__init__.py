"""Backbone registry: model names, hub ids and local folders → a loaded :class:`Backbone`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import OFFLINE_HINT, ModelNotFoundError, UnsupportedModelError
from .base import Backbone, EncodedText, PreparedImage

TINY_RANDOM = "tiny-random-flux2"
TINY_MAX_SIDE = 128

KLEIN_ALIASES = {
    "flux2-klein-4b": "black-forest-labs/FLUX.2-klein-4B",
    "flux2-klein-9b": "black-forest-labs/FLUX.2-klein-9B",
    "flux2-klein-base-4b": "black-forest-labs/FLUX.2-klein-base-4B",
    "flux2-klein-base-9b": "black-forest-labs/FLUX.2-klein-base-9B",
}
PLANNED = {
    "step1x-edit": "Step1X-Edit",
    "qwen-image-edit": "Qwen-Image-Edit",
    "flux1-kontext": "FLUX.1 Kontext",
}
KNOWN_MODELS = [TINY_RANDOM, *KLEIN_ALIASES]
OFFLOAD_MODES = ("none", "model", "sequential")

__all__ = ["Backbone", "EncodedText", "PreparedImage", "load_backbone", "resolve_model_source", "KNOWN_MODELS"]


def resolve_model_source(model: str) -> str:
    """A local folder or hub id for ``model`` (alias, hub id or path).

    With ``EDITSEG_MODELS_DIR`` set, ``$EDITSEG_MODELS_DIR/<repo name>`` is used when it exists.
    """
    source = KLEIN_ALIASES.get(model.lower(), model)
    if Path(source).expanduser().exists():
        return str(Path(source).expanduser())
    models_dir = os.environ.get("EDITSEG_MODELS_DIR")
    if models_dir:
        candidate = Path(models_dir).expanduser() / source.split("/")[-1]
        if candidate.exists():
            return str(candidate)
    return source


def _pipeline_class_name(source: str) -> str | None:
    index = Path(source) / "model_index.json"
    if index.is_file():
        try:
            return json.loads(index.read_text()).get("_class_name")
        except (OSError, ValueError):
            return None
    return None


def load_backbone(
    model: str = TINY_RANDOM,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    offload: str = "none",
) -> Backbone:
    """Load a backbone by name, hub id or local folder.

    ``device`` defaults to CUDA when available; ``dtype`` to bfloat16 on CUDA, float32 elsewhere.
    ``offload``: ``none``, ``model`` (whole components move to the GPU in turn) or
    ``sequential`` (layer by layer; least memory, slowest).
    """
    from .flux2 import Flux2KleinBackbone, refuse_kv_variant

    if offload not in OFFLOAD_MODES:
        raise UnsupportedModelError(f"offload must be one of {', '.join(OFFLOAD_MODES)}; got {offload!r}.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)

    if model == TINY_RANDOM:
        from .tiny import build_tiny_flux2_klein_pipeline

        pipeline = build_tiny_flux2_klein_pipeline().to(device)
        if dtype != torch.float32:
            pipeline = pipeline.to(dtype=dtype)
        # Its VAE is 2x (not 8x) down, so 4 px per token: cap the input to keep CPU runs quick.
        return Flux2KleinBackbone(pipeline, name=TINY_RANDOM, is_random=True, default_max_side=TINY_MAX_SIDE)

    lowered = model.lower()
    for key, label in PLANNED.items():
        if key in lowered.replace("_", "-").replace(".", ""):
            raise UnsupportedModelError(
                f"{label} is not supported yet (planned). Supported now: {', '.join(KNOWN_MODELS)}, "
                "or any FLUX.2-klein hub id / local folder."
            )
    source = resolve_model_source(model)
    refuse_kv_variant(source)
    class_name = _pipeline_class_name(source)
    if class_name not in (None, "Flux2KleinPipeline"):
        raise UnsupportedModelError(
            f"{source} holds a {class_name}; editseg supports Flux2KleinPipeline models now "
            f"({', '.join(KLEIN_ALIASES.values())})."
        )
    pipeline = _load_klein_pipeline(source, model, dtype)
    if offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=device)
    else:
        pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return Flux2KleinBackbone(pipeline, name=model)


def _load_klein_pipeline(source: str, model: str, dtype: torch.dtype):
    from diffusers import Flux2KleinPipeline

    looks_like_path = source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
    if looks_like_path and not Path(source).expanduser().exists():
        raise ModelNotFoundError(f"Model folder not found: {source}. " + OFFLINE_HINT)
    try:
        # diffusers >= 0.42 names the argument ``dtype`` (``torch_dtype`` is deprecated)
        return Flux2KleinPipeline.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as error:
        is_local = Path(source).exists()
        where = f"the local folder {source}" if is_local else f"the hub id {source!r}"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(
            f"Could not load model {model!r} from {where}: {reason}\n"
            "FLUX.2 [klein] weights are gated on the Hugging Face hub: accept the licence on the model "
            "page and log in (`hf auth login`), or copy the weights from a machine that has them. "
            + OFFLINE_HINT
        ) from None
