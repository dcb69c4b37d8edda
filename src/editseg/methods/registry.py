"""Method names → classes, loaded on first use so that listing methods imports no model code.

Add a method by adding a :class:`MethodSpec` to :data:`METHODS`; its class implements
:class:`~editseg.methods.base.Method`.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # the method classes (and torch) load on first use, not to list the names
    from .base import Method

DEFAULT_METHOD = "early-grounding"


@dataclass(frozen=True)
class MethodSpec:
    """Where a method lives and what it needs."""

    import_path: str  # "package.module:ClassName"
    requires: tuple[str, ...]  # component kinds (see editseg.methods.base.COMPONENT_KINDS)
    summary: str  # one line for --help and `editseg methods`
    default_model: str | None = None  # None: the backbone registry's default


METHODS: dict[str, MethodSpec] = {
    "early-grounding": MethodSpec(
        "editseg.methods.early_grounding:EarlyGroundingMethod",
        ("editing-dit",),
        "image-to-prompt attention of one probed first denoising step of an editing model, "
        "random-walk refined, then feature prototypes (He et al.)",
    ),
    "ref-diff": MethodSpec(
        "editseg.methods.ref_diff:RefDiff",
        ("unet", "sam", "clip"),
        "Stable Diffusion 1.5 cross-attention of the root word, SAM proposals, CLIP region scores (Ni et al.)",
        "sd15",
    ),
    "refam": MethodSpec(
        "editseg.methods.refam:RefAM",
        ("t2i-dit", "sam"),
        "FLUX text-to-image cross-attention per expression token with attention magnets, stop-word/GAS "
        "filtering, argmax point -> SAM (Kukleva et al.)",
        "flux1-dev",
    ),
    "rlfseg": MethodSpec(
        "editseg.methods.rlfseg:RLFseg",
        ("editing-dit",),
        "trained reference: a LoRA maps the image latent to the mask latent by rectified flow, one adaptive step "
        "(RLFseg); lora=PATH from `editseg train rlfseg` (toy-shapes: built in once shipped)",
    ),
}


class UnknownMethodError(ConfigError):
    """A method name that is not in :data:`METHODS`."""


def method_names() -> list[str]:
    """Every registered method name."""
    return list(METHODS)


def method_spec(name: str) -> MethodSpec:
    """The spec of ``name``; an unknown name raises :class:`UnknownMethodError` naming the known ones
    and the closest match."""
    try:
        return METHODS[name]
    except KeyError:
        pass
    known = ", ".join(METHODS)
    close = difflib.get_close_matches(str(name).lower(), list(METHODS), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownMethodError(f"Unknown method {name!r}.{hint} Known methods: {known}.")


def method_class(name: str) -> type[Method]:
    """The class implementing ``name`` (its module is imported now)."""
    module_name, _, class_name = method_spec(name).import_path.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_method(name: str, model: str | None = None, **kwargs: Any) -> Method:
    """``METHODS[name]``'s class ``.from_pretrained(model or its default model, **kwargs)``."""
    spec = method_spec(name)
    return method_class(name).from_pretrained(model if model is not None else spec.default_model, **kwargs)
