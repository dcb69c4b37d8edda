"""Resolving and loading component weights (SAM, CLIP, ...) with one actionable error when missing."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, TypeVar

import torch

from ..errors import OFFLINE_HINT, ModelNotFoundError

T = TypeVar("T")
C = TypeVar("C", bound="PretrainedComponent")


def default_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available, else CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_source(name: str, aliases: Mapping[str, str]) -> str:
    """A local folder or hub id for ``name`` (alias, hub id or path).

    With ``EDITSEG_MODELS_DIR`` set, ``$EDITSEG_MODELS_DIR/<repo name>`` is used when it exists.
    """
    source = aliases.get(name.lower(), name)
    path = Path(source).expanduser()
    if path.exists():
        return str(path)
    models_dir = os.environ.get("EDITSEG_MODELS_DIR")
    if models_dir:
        candidate = Path(models_dir).expanduser() / source.split("/")[-1]
        if candidate.exists():
            return str(candidate)
    return source


def load_or_explain(kind: str, name: str, source: str, load: Callable[[str], T]) -> T:
    """``load(source)``, turning a missing-weights failure into :class:`ModelNotFoundError`."""
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_like_path and not Path(source).expanduser().exists():
        raise ModelNotFoundError(f"{kind} folder not found: {source}. " + OFFLINE_HINT)
    try:
        return load(source)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = f"the local folder {source}" if Path(source).exists() else f"the hub id {source!r}"
        raise ModelNotFoundError(
            f"Could not load the {kind} {name!r} from {where}: {reason}\n"
            f"Download it with `hf download {source} --local-dir <folder>` and pass that folder. "
            + OFFLINE_HINT
        ) from None


def load_resolved(kind: str, name: str, aliases: Mapping[str, str], load: Callable[[str], T]) -> T:
    """``load(source)`` for ``name`` resolved through ``aliases`` (:func:`resolve_source`), with
    :func:`load_or_explain`'s error when weights are missing. transformers' and diffusers' notices
    (e.g. the PIL-backend fallback without torchvision) are silenced."""

    def quiet(source: str) -> T:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load(source)

    return load_or_explain(kind, name, resolve_source(name, aliases), quiet)


def load_model_and_processor(
    kind: str, name: str, aliases: Mapping[str, str], model_class, processor_class, dtype: torch.dtype
):
    """``(model_class.from_pretrained, processor_class.from_pretrained)`` of ``name`` through
    :func:`load_resolved`."""
    return load_resolved(
        kind, name, aliases,
        lambda source: (model_class.from_pretrained(source, dtype=dtype), processor_class.from_pretrained(source)),
    )  # fmt: skip


class PretrainedComponent:
    """A component around a transformers ``model`` (kept in eval mode) and its ``processor``.

    Subclasses (SAM, CLIP) load themselves with :meth:`load`: a hub id, alias or local folder
    through :func:`load_model_and_processor`, or their built-in tiny random model."""

    kind: ClassVar[str]

    def __init__(self, model, processor, name: str = "", is_random: bool = False):
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.is_random = is_random

    @classmethod
    def load(
        cls: type[C],
        model: str,
        device: str | torch.device | None,
        dtype: torch.dtype | None,
        *,
        label: str,
        aliases: Mapping[str, str],
        classes: tuple[str, str],
        tiny: str,
        build_tiny: Callable[[], tuple[Any, Any]],
    ) -> C:
        """``model`` on ``device`` (default :func:`default_device`) in ``dtype`` (default float32):
        the tiny random model when ``model`` is ``tiny``, else ``classes`` (transformers' model and
        processor class names) from pretrained, with the missing-weights error naming ``label``."""
        device = default_device(device)
        dtype = dtype or torch.float32
        if model == tiny:
            module, processor = build_tiny()
            return cls(module.to(device=device, dtype=dtype), processor, name=tiny, is_random=True)
        import transformers

        model_class, processor_class = (getattr(transformers, name) for name in classes)
        module, processor = load_model_and_processor(label, model, aliases, model_class, processor_class, dtype)
        return cls(module.to(device), processor, name=model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype
