"""The models editseg knows, by name: built-ins and each family's hub aliases (no torch, no diffusers).

The single source of the names: :mod:`editseg.backbones` loads them, each family module reads
its ``ALIASES`` and ``PIPELINE_CLASS_NAMES`` from its :class:`Family` entry here, and the command
line lists them (``editseg models``, ``--help``, unknown-name errors) without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

TINY_RANDOM = "tiny-random-flux2"
TINY_STEP1X = "tiny-random-step1x"
TOY_SHAPES = "toy-shapes"
DEFAULT_MODEL = TOY_SHAPES  # built in: the tiny editor trained on the synthetic shapes world

BUILT_IN_DESCRIPTIONS: Mapping[str, str] = MappingProxyType({
    TINY_RANDOM: "built in, random weights (for trying editseg offline; output meaningless)",
    TINY_STEP1X: "built in, random Step1X-Edit weights incl. a tiny Qwen2.5-VL (offline trials, e.g. --refine-instruction)",
    TOY_SHAPES: "built in, the default: tiny FLUX.2-klein editor trained on the synthetic shapes world (64x64); "
    "grounds far above chance, weak masks (assets/toy-shapes/MODEL_CARD.md)",
})  # fmt: skip


@dataclass(frozen=True)
class Family:
    """One model family: the module that loads it, its short names and the pipelines it serves."""

    module: str  # imported only to load a model of the family
    aliases: Mapping[str, str]  # short name -> hub id
    pipeline_class_names: tuple[str, ...]  # ``_class_name`` values of model_index.json it serves


FLUX2_KLEIN = Family(
    "editseg.backbones.flux2",
    MappingProxyType({
        "flux2-klein-4b": "black-forest-labs/FLUX.2-klein-4B",
        "flux2-klein-9b": "black-forest-labs/FLUX.2-klein-9B",
        "flux2-klein-base-4b": "black-forest-labs/FLUX.2-klein-base-4B",
        "flux2-klein-base-9b": "black-forest-labs/FLUX.2-klein-base-9B",
    }),
    ("Flux2KleinPipeline", "Flux2KleinKVPipeline"),
)  # fmt: skip
FLUX1_KONTEXT = Family(
    "editseg.backbones.flux1_kontext",
    MappingProxyType({"flux1-kontext": "black-forest-labs/FLUX.1-Kontext-dev"}),
    ("FluxKontextPipeline",),
)
QWEN_IMAGE_EDIT = Family(
    "editseg.backbones.qwen_image_edit",
    MappingProxyType({"qwen-image-edit": "Qwen/Qwen-Image-Edit", "qwen-image-edit-2509": "Qwen/Qwen-Image-Edit-2509"}),
    ("QwenImageEditPipeline", "QwenImageEditPlusPipeline"),
)
STEP1X_EDIT = Family(
    "editseg.backbones.step1x",
    MappingProxyType({"step1x-edit": "stepfun-ai/Step1X-Edit", "step1x-edit-v1p1": "stepfun-ai/Step1X-Edit-v1p1-diffusers"}),
    ("Step1XEditPipeline",),
)
FAMILIES: tuple[Family, ...] = (FLUX2_KLEIN, FLUX1_KONTEXT, QWEN_IMAGE_EDIT, STEP1X_EDIT)  # first: the hub-id fallback
PLANNED: dict[str, str] = {}  # normalised name fragment -> label, for families announced but not served yet

__all__ = [
    "BUILT_IN_DESCRIPTIONS", "DEFAULT_MODEL", "FAMILIES", "Family", "PLANNED", "TINY_RANDOM", "TINY_STEP1X", "TOY_SHAPES",
    "aliases", "closest_model", "known_models", "unknown_model_message",
]  # fmt: skip


def aliases() -> dict[str, str]:
    """Every short model name → hub id."""
    return {alias: hub_id for family in FAMILIES for alias, hub_id in family.aliases.items()}


def known_models() -> dict[str, str]:
    """Names accepted by :func:`editseg.backbones.load_backbone` with a one-line description."""
    described = dict(BUILT_IN_DESCRIPTIONS)
    described.update(aliases())
    described.update({name: f"{label} (planned, not supported yet)" for name, label in PLANNED.items()})
    return described


def closest_model(model: str) -> str | None:
    """The known model name (or hub id) most like ``model``, if any is close."""
    import difflib

    names = list(known_models()) + list(aliases().values())
    lowered = {name.lower(): name for name in names}
    match = difflib.get_close_matches(model.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def unknown_model_message(model: str) -> str:
    """One line: ``model`` is unknown; the known names; the closest one."""
    guess = closest_model(model)
    hint = f" Did you mean {guess!r}?" if guess else ""
    return (
        f"Unknown model {model!r}.{hint} Known names: {', '.join(known_models())}; "
        "or a hub id (owner/name) or a local folder holding model_index.json (see `editseg models`)."
    )
