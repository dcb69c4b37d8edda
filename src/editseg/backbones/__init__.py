"""Backbone registry: model names, hub ids and local folders → a loaded :class:`Backbone`.

Each model family lives in one module that exposes:

- ``ALIASES``: short names → hub ids (``flux2-klein-4b`` → ``black-forest-labs/FLUX.2-klein-4B``);
- ``PIPELINE_CLASS_NAMES``: the ``_class_name`` values of ``model_index.json`` it serves;
- ``check_source(source)``: raise :class:`UnsupportedModelError` for variants it cannot serve;
- ``load_pipeline(source, dtype)``: load weights (raise ``OSError``/``ValueError`` if missing);
- ``make_backbone(pipeline, name)``: wrap a loaded pipeline.

Add a family by adding its entry (module, aliases, pipeline class names) to
:data:`editseg.catalog.FAMILIES`; built-in models (no download) go in :data:`BUILT_IN` and their
descriptions in :data:`editseg.catalog.BUILT_IN_DESCRIPTIONS`. The names live in
:mod:`editseg.catalog` so that listing them needs no torch.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from ..components.loading import resolve_source
from ..catalog import FAMILIES, PLANNED, TINY_RANDOM, TINY_STEP1X, TOY_SHAPES, BUILT_IN_DESCRIPTIONS
from ..catalog import aliases, closest_model, known_models, unknown_model_message
from ..errors import OFFLINE_HINT, ConfigError, ModelNotFoundError, UnsupportedModelError
from .base import Backbone, EncodedText, PreparedImage

TINY_MAX_SIDE = 128
FAMILY_MODULES = [family.module for family in FAMILIES]
OFFLOAD_MODES = ("none", "model", "sequential")

__all__ = [
    "Backbone", "EncodedText", "PreparedImage", "load_backbone", "place_pipeline", "resolve_device", "resolve_model_source",
    "known_models", "closest_model",
]  # fmt: skip


def _tiny_random(device: torch.device, dtype: torch.dtype) -> Backbone:
    from .flux2 import Flux2KleinBackbone
    from .tiny import build_tiny_flux2_klein_pipeline

    pipeline = build_tiny_flux2_klein_pipeline().to(device)
    if dtype != torch.float32:
        pipeline = pipeline.to(dtype=dtype)
    # Its VAE is 2x (not 8x) down, so 4 px per token: cap the input to keep CPU runs quick.
    return Flux2KleinBackbone(pipeline, name=TINY_RANDOM, is_random=True, default_max_side=TINY_MAX_SIDE)


TOY_SHAPES_DIR = Path(__file__).resolve().parent.parent / "assets" / TOY_SHAPES
TOY_SHAPES_SIDE = 64


def _toy_shapes(device: torch.device, dtype: torch.dtype) -> Backbone:
    """The tiny FLUX.2-klein editor trained on the shapes world (``editseg.toy``), shipped in the package."""
    from .flux2 import Flux2KleinBackbone
    from .flux2 import load_pipeline as load_flux2_pipeline

    from diffusers.utils import logging as diffusers_logging

    if not (TOY_SHAPES_DIR / "model_index.json").is_file():
        raise ModelNotFoundError(f"The toy-shapes weights are missing from {TOY_SHAPES_DIR}; reinstall editseg.")
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its VAE slot holds editseg's pixel codec: diffusers warns about the type
    try:
        pipeline = load_flux2_pipeline(TOY_SHAPES_DIR, dtype).to(device)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    pipeline.set_progress_bar_config(disable=True)
    # Trained on 64x64 scenes (8 px tokens): larger inputs are shrunk to that scale.
    return Flux2KleinBackbone(pipeline, name=TOY_SHAPES, default_max_side=TOY_SHAPES_SIDE)


def _tiny_step1x(device: torch.device, dtype: torch.dtype) -> Backbone:
    """Tiny random Step1X-Edit (its Qwen2.5-VL serves the instruction refiner in offline trials)."""
    from .step1x import Step1XEditBackbone
    from .step1x.tiny import build_tiny_step1x_pipeline

    pipeline = build_tiny_step1x_pipeline().to(device)
    if dtype != torch.float32:
        pipeline = pipeline.to(dtype=dtype)
    return Step1XEditBackbone(pipeline, name=TINY_STEP1X, is_random=True, default_max_side=TINY_MAX_SIDE)


BUILT_IN: dict[str, tuple[Callable[[torch.device, torch.dtype], Backbone], str]] = {
    name: (loader, BUILT_IN_DESCRIPTIONS[name])
    for name, loader in ((TINY_RANDOM, _tiny_random), (TINY_STEP1X, _tiny_step1x), (TOY_SHAPES, _toy_shapes))
}


def families() -> list[ModuleType]:
    return [importlib.import_module(name) for name in FAMILY_MODULES]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a usable :class:`torch.device` (default: CUDA when available, else CPU).

    Raises :class:`~editseg.errors.ConfigError` for a name torch does not know (``banana``), a
    device this torch build or machine lacks (``cuda`` on a CPU-only torch, ``mps`` off Apple) or an
    index past the last GPU (``cuda:3`` with two); checked without loading any model.
    """
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"Unknown device {device!r}: use cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)."
        ) from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"--device {device}: {build} (torch {torch.__version__}). Use --device cpu, or install a CUDA build of torch.")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(f"--device {device}: there {'is' if count == 1 else 'are'} only {count} CUDA device(s), cuda:0-cuda:{count - 1}.")
        return resolved
    if resolved.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"--device {device}: MPS (Apple GPU) is not available here. Use --device cpu.")
        return resolved
    raise ConfigError(f"--device {device}: editseg runs on cpu, cuda or mps, not {resolved.type}.")


def resolve_model_source(model: str) -> str:
    """A local folder or hub id for ``model`` (alias, hub id or path).

    With ``EDITSEG_MODELS_DIR`` set, ``$EDITSEG_MODELS_DIR/<repo name>`` is used when it exists.
    """
    return resolve_source(model, aliases())


def _pipeline_class_name(source: str) -> str | None:
    index = Path(source) / "model_index.json"
    if index.is_file():
        try:
            return json.loads(index.read_text()).get("_class_name")
        except (OSError, ValueError):
            return None
    return None


def _family_for(source: str, model: str) -> ModuleType:
    class_name = _pipeline_class_name(source)
    for family in families():  # formats without model_index.json (e.g. Step1X-Edit v1.0 folders)
        claims = getattr(family, "claims", None)
        if claims is not None and claims(source):
            return family
    for family in families():
        if class_name in family.PIPELINE_CLASS_NAMES:
            return family
        if class_name is None and (model.lower() in family.ALIASES or source in family.ALIASES.values()):
            return family
    supported = ", ".join(aliases().values())
    if class_name is not None:
        raise UnsupportedModelError(f"{source} holds a {class_name}, which editseg does not support. Supported: {supported}.")
    if "/" not in source and "\\" not in source and not Path(source).expanduser().exists():
        # Not a known name, not a folder and not owner/name: never worth a network round trip.
        raise UnsupportedModelError(unknown_model_message(model))
    # An unknown hub id: try the first family (FLUX.2 klein); its loader reports what is missing.
    return families()[0]


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
    if offload not in OFFLOAD_MODES:
        raise UnsupportedModelError(f"offload must be one of {', '.join(OFFLOAD_MODES)}; got {offload!r}.")
    device = resolve_device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)

    if model in BUILT_IN:
        return BUILT_IN[model][0](device, dtype)
    normalized = model.lower().replace("_", "-").replace(".", "")
    for key, label in PLANNED.items():
        if key in normalized:
            raise UnsupportedModelError(
                f"{label} is not supported yet (planned). Supported now: {', '.join(known_models())}."
            )
    source = resolve_model_source(model)
    family = _family_for(source, model)
    family.check_source(source)
    pipeline = _load_pipeline(family, source, model, dtype)
    place_pipeline(pipeline, device, offload)
    return family.make_backbone(pipeline, model)


def place_pipeline(pipeline, device: torch.device, offload: str = "none") -> None:
    """Put a loaded diffusers pipeline on ``device`` as ``offload`` says (see :func:`load_backbone`)
    and turn its progress bar off."""
    if offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=device)
    else:
        pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)


def _load_pipeline(family: ModuleType, source: str, model: str, dtype: torch.dtype):
    looks_like_path = source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
    if looks_like_path and not Path(source).expanduser().exists():
        raise ModelNotFoundError(f"Model folder not found: {source}. " + OFFLINE_HINT)
    try:
        return family.load_pipeline(source, dtype)
    except (OSError, ValueError) as error:
        is_local = Path(source).exists()
        where = f"the local folder {source}" if is_local else f"the hub id {source!r}"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(
            f"Could not load model {model!r} from {where}: {reason}\n"
            f"{family.WEIGHTS_HINT} " + OFFLINE_HINT
        ) from None
