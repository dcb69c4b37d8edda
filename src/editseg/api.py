"""The Python API: a small predictor over a big model, in the spirit of ``SamPredictor``.

    seg = Segmenter.from_pretrained("flux2-klein-4b")
    result = seg.segment("photo.jpg", "the zebra on the left")
    result.mask          # bool (H, W) at the input resolution

``set_image`` encodes an image once; ``predict`` then segments any number of expressions for it.
The work is done by a :class:`~editseg.methods.base.Method` (``method="early-grounding"`` by
default; :data:`editseg.methods.registry.METHODS` lists them); :class:`Segmenter` reads images
and hands them to it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from .backbones import Backbone
from .backbones.base import RANDOM_WEIGHTS_NOTICE
from .backbones.text_cache import DEFAULT_TEXT_CACHE_ENTRIES
from .catalog import DEFAULT_MODEL
from .config import MethodConfig
from .errors import ConfigError
from .images import DEFAULT_MAX_PIXELS, ImageInput, load_image, validate_max_pixels
from .methods.base import Method
from .methods.early_grounding import EarlyGroundingMethod, Probe
from .methods.registry import DEFAULT_METHOD, load_method
from .results import SegmentationResult

__all__ = ["DEFAULT_MODEL", "RANDOM_WEIGHTS_NOTICE", "TOY_SHAPES_NOTICE", "SegmentationResult", "Segmenter"]

TOY_SHAPES_NOTICE = (
    "editseg: toy-shapes is a tiny editor trained on synthetic 64x64 shapes scenes (see `editseg demo`); "
    "for photos use a real model, e.g. --model flux2-klein-4b."
)


class Segmenter:
    """Segments what expressions refer to in an image, with one :class:`Method`.

    ``Segmenter(backbone, config=...)`` runs the early-grounding method on a loaded backbone;
    ``Segmenter(method=m)`` runs any method; :meth:`from_pretrained` loads either by name.
    """

    def __init__(
        self,
        backbone: Backbone | None = None,
        config: MethodConfig | None = None,
        batch_size: int = 8,
        instruction_refiner: Callable[[str], str] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_side: int | None = None,
        *,
        method: Method | None = None,
        reduce_oversize: bool = False,
        text_cache_size: int = DEFAULT_TEXT_CACHE_ENTRIES,
    ):
        if (backbone is None) == (method is None):
            raise ConfigError("Give a backbone (for the early-grounding method) or a method, not both.")
        self.max_pixels = validate_max_pixels(max_pixels)  # checked before any encoding
        if method is None:
            method = EarlyGroundingMethod(
                backbone, config, batch_size, instruction_refiner, max_side, text_cache_size=text_cache_size
            )
        self.method = method
        self.reduce_oversize = reduce_oversize

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        method: str = DEFAULT_METHOD,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        offload: str = "none",
        components: Mapping[str, str] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        reduce_oversize: bool = False,
        **options: Any,
    ) -> "Segmenter":
        """Load ``method`` (see :data:`~editseg.methods.registry.METHODS`) over ``model`` (name, hub
        id or local folder; default: the method's). ``options`` go to the method, e.g. ``config``,
        ``batch_size``, ``max_side``, ``text_cache_size`` (0: no text-encoding cache) for early grounding."""
        validate_max_pixels(max_pixels)  # a bad limit fails before the model loads
        loaded = load_method(method, model, device=device, dtype=dtype, offload=offload, components=components, **options)
        return cls(method=loaded, max_pixels=max_pixels, reduce_oversize=reduce_oversize)

    # -- what the method holds --------------------------------------------------------------------
    @property
    def backbone(self) -> Backbone:
        """The method's diffusion backbone."""
        backbone = getattr(self.method, "backbone", None)
        if backbone is None:
            raise ConfigError(f"The {self.method.name} method has no backbone.")
        return backbone

    @property
    def config(self) -> MethodConfig:
        return self._early_grounding("config").config

    @property
    def batch_size(self) -> int:
        """Expressions per forward (1 for methods without batching)."""
        return getattr(self.method, "batch_size", 1)

    @property
    def max_side(self) -> int | None:
        return getattr(self.method, "max_side", None)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the current image."""
        return getattr(self.method, "image_size", None)

    # -- image and expressions --------------------------------------------------------------------
    def set_image(self, image: ImageInput) -> None:
        """Read ``image`` (path, PIL image or array; see :func:`~editseg.images.load_image`) and hand it
        to the method, which encodes it once for later :meth:`predict` calls."""
        self.method.set_image(load_image(image, max_pixels=self.max_pixels, reduce_oversize=self.reduce_oversize))

    def predict(self, expressions: str | Sequence[str], config: MethodConfig | None = None) -> list[SegmentationResult]:
        """Segment each expression in the current image (see :meth:`set_image`).

        Always returns a list, one result per expression in order; a single string counts as a
        list of one (``predict("the dog")[0]``), so batch code never has to branch. :meth:`segment`
        is the one-shot convenience that mirrors its input instead: a string gives one result.
        """
        if isinstance(expressions, str):
            expressions = [expressions]
        if config is None:
            return self.method.predict(list(expressions))
        return self._early_grounding("config=").predict(list(expressions), config)

    def expression_problems(self, expressions: Sequence[str], config: MethodConfig | None = None) -> dict[str, str]:
        """Why each unusable expression would be refused, without running the model:
        ``{expression: message}`` (see :meth:`Method.expression_problems`); ``config`` is early
        grounding's (its instruction template decides the token count)."""
        if config is None:
            return self.method.expression_problems(list(expressions))
        return self._early_grounding("config=").expression_problems(list(expressions), config)

    def segment(
        self, image: ImageInput, expressions: str | Sequence[str], config: MethodConfig | None = None
    ) -> SegmentationResult | list[SegmentationResult]:
        """``set_image`` + ``predict``; a single expression string gives a single result."""
        self.set_image(image)
        results = self.predict(expressions, config)
        return results[0] if isinstance(expressions, str) else results

    # -- early grounding's lower-level calls ------------------------------------------------------
    def instruction_for(self, expression: str, config: MethodConfig | None = None) -> str:
        return self._early_grounding("instruction_for").instruction_for(expression, config)

    def predict_sweep(
        self, expressions: str | Sequence[str], configs: Sequence[MethodConfig]
    ) -> list[list[SegmentationResult]]:
        """See :meth:`EarlyGroundingMethod.predict_sweep`."""
        if isinstance(expressions, str):
            expressions = [expressions]
        return self._early_grounding("predict_sweep").predict_sweep(list(expressions), configs)

    def probe(self, expressions: str | Sequence[str], configs: Sequence[MethodConfig] | None = None, **options: Any) -> Probe:
        """One probed forward → :class:`~editseg.methods.early_grounding.Probe`; see
        :meth:`EarlyGroundingMethod.probe`."""
        if isinstance(expressions, str):
            expressions = [expressions]
        return self._early_grounding("probe").probe(list(expressions), configs, **options)

    def _early_grounding(self, what: str) -> EarlyGroundingMethod:
        if not isinstance(self.method, EarlyGroundingMethod):
            raise ConfigError(f"{what} belongs to the early-grounding method; this segmenter runs {self.method.name}.")
        return self.method
