"""Step1X-Edit (stepfun-ai): the editseg family module.

Not in diffusers main, so the DiT + connector are implemented here (:mod:`.model`,
:mod:`.connector`) from the official architecture, and inputs are prepared as the official
inference code does (:mod:`.pipeline`). Two weight formats load:

- v1.0 (``stepfun-ai/Step1X-Edit``, the paper's backbone): ``step1x-edit-i1258.safetensors``
  (DiT + connector, official key names), ``vae.safetensors`` (FLUX.1 AE) and Qwen2.5-VL-7B-Instruct
  (``Qwen2.5-VL-7B-Instruct/`` inside a local folder, else ``Qwen/Qwen2.5-VL-7B-Instruct``);
- the diffusers-format v1p1 (``stepfun-ai/Step1X-Edit-v1p1-diffusers``, ``Step1XEditPipeline``):
  transformer keys mapped back to the official names; its connector has no pooled scale.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...catalog import STEP1X_EDIT
from ...errors import UnsupportedModelError
from .backbone import Step1XEditBackbone
from .model import Step1XConfig, Step1XEditDiT, probes_installed
from .pipeline import DIT_FILENAME, Step1XPipeline, is_diffusers_layout, load_diffusers_format, load_official

ALIASES = STEP1X_EDIT.aliases  # the names live in editseg.catalog (listed without importing this module)
PIPELINE_CLASS_NAMES = STEP1X_EDIT.pipeline_class_names
WEIGHTS_HINT = (
    "Step1X-Edit v1.0 needs step1x-edit-i1258.safetensors and vae.safetensors (hub: stepfun-ai/Step1X-Edit) "
    "plus Qwen2.5-VL-7B-Instruct (a 'Qwen2.5-VL-7B-Instruct' sub-folder of a local model folder, or the hub id "
    "Qwen/Qwen2.5-VL-7B-Instruct). The diffusers-format v1p1 is stepfun-ai/Step1X-Edit-v1p1-diffusers."
)

__all__ = [
    "ALIASES",
    "PIPELINE_CLASS_NAMES",
    "WEIGHTS_HINT",
    "Step1XConfig",
    "Step1XEditBackbone",
    "Step1XEditDiT",
    "Step1XPipeline",
    "check_source",
    "claims",
    "load_pipeline",
    "make_backbone",
    "probes_installed",
]


def claims(source: str) -> bool:
    """True for a local v1.0-style folder (no model_index.json) holding a Step1X-Edit DiT file."""
    folder = Path(source).expanduser()
    return folder.is_dir() and not is_diffusers_layout(source) and (folder / DIT_FILENAME).is_file()


def check_source(source: str) -> None:
    """Refuse v1p2 (ReasonEdit): its text-token mapping and vision-token positions are not implemented."""
    if "v1p2" in source.lower():
        raise UnsupportedModelError(
            f"{source} is Step1X-Edit v1p2, whose text path (text-token mapping, vision-token position ids) "
            "editseg does not implement. Use step1x-edit (v1.0, the paper's backbone)."
        )


def load_pipeline(source: str, dtype: torch.dtype, local_files_only: bool = False) -> Step1XPipeline:
    """Load from a local folder or hub id (raises OSError/ValueError when weights are missing)."""
    if is_diffusers_layout(source) or source.rstrip("/").lower().endswith("-diffusers"):
        return load_diffusers_format(source, dtype, local_files_only=local_files_only)
    return load_official(source, dtype, local_files_only=local_files_only)


def make_backbone(pipeline: Step1XPipeline, name: str) -> Step1XEditBackbone:
    return Step1XEditBackbone(pipeline, name=name)
