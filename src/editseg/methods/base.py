"""The interface every segmentation method implements; :class:`~editseg.api.Segmenter` drives it.

A method is loaded once (``from_pretrained``), given an image (``set_image``, an RGB PIL image
already read by :func:`editseg.images.load_image`) and asked for any number of expressions
(``predict``). It returns one :class:`~editseg.results.SegmentationResult` per expression.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Mapping, Sequence

from PIL import Image

from ..errors import ExpressionError, OutOfMemoryError, out_of_memory_message
from ..results import SegmentationResult
from ..text import normalize_expression

COMPONENT_KINDS = ("editing-dit", "t2i-dit", "unet", "sam", "clip", "mllm")
"""What a method may need loaded: an instruction-editing DiT, a text-to-image DiT, a UNet, SAM,
CLIP or a multimodal LLM. ``Method.requires`` names a subset."""


class Method(ABC):
    """A referring-segmentation method over pretrained components."""

    name: ClassVar[str]  # "early-grounding", "refam", "ref-diff"
    requires: ClassVar[tuple[str, ...]]  # component kinds, see COMPONENT_KINDS

    @abstractmethod
    def set_image(self, image: Image.Image) -> None:
        """Prepare ``image`` (RGB) once; later :meth:`predict` calls segment it."""

    @abstractmethod
    def predict(self, expressions: Sequence[str]) -> list[SegmentationResult]:
        """One result per expression, in order, for the current image."""

    def expression_problems(self, expressions: Sequence[str]) -> dict[str, str]:
        """Why each unusable expression would be refused, without running a model:
        ``{expression: message}``. The base checks the text (empty, no words, stop words only; see
        :func:`~editseg.text.normalize_expression`); methods add their models' limits (token counts)."""
        problems = {}
        for expression in dict.fromkeys(expressions):
            try:
                normalize_expression(expression)
            except ExpressionError as error:
                problems[expression] = str(error)
        return problems

    def settings(self) -> dict[str, Any]:
        """What an evaluation records file of this method is tied to (besides data and input size):
        ``{"model": name, "config": {...}}``, JSON-ready. Runs resume into one records file only when
        these agree. The default reads ``model_name`` (or the backbone's name) and ``config.to_dict()``;
        backbone switches set away from their defaults are added; a method with other options (RLFseg:
        sampler, LoRA fingerprint) overrides it."""
        config = getattr(self, "config", None)
        backbone = getattr(self, "backbone", None)
        model = getattr(self, "model_name", "") or getattr(backbone, "name", "")
        settings = {"model": model, "config": config.to_dict() if hasattr(config, "to_dict") else {}}
        return {**settings, **(backbone.switch_settings() if hasattr(backbone, "switch_settings") else {})}

    @classmethod
    @abstractmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        device: Any = None,
        dtype: Any = None,
        offload: str = "none",
        components: Mapping[str, str] | None = None,
        **options: Any,
    ) -> "Method":
        """Load the method's components. ``model`` names the main model (default: the method's);
        ``components`` overrides others by kind, e.g. ``{"sam": "facebook/sam-vit-base"}``;
        ``options`` are the method's own settings."""


@contextmanager
def memory_guard(device: Any) -> Iterator[None]:
    """Turn an out-of-memory failure on ``device`` into an :class:`~editseg.errors.OutOfMemoryError`
    whose message lists ways to need less memory."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise OutOfMemoryError(out_of_memory_message(str(device))) from None
    except RuntimeError as error:
        if "can't allocate memory" in str(error) or "not enough memory" in str(error):
            raise OutOfMemoryError(out_of_memory_message(str(device))) from None
        raise
