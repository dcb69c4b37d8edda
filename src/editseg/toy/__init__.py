"""A tiny FLUX.2 [klein] editor trained on the synthetic shapes world (for end-to-end checks on CPU).

``build_toy_pipeline`` makes the untrained pipeline from the real diffusers/transformers classes
(with :class:`~editseg.backbones.pixel_codec.PixelCodec` as its VAE), ``editseg.toy.train`` trains it, and the
shipped weights live in ``editseg/assets/toy-shapes``.
"""

from __future__ import annotations

from typing import Any

from .config import ToyConfig, TrainConfig

__all__ = ["TOY_ASSET_DIR", "ToyConfig", "TrainConfig", "build_toy_pipeline", "toy_tokenizer"]
_LAZY = {"TOY_ASSET_DIR", "build_toy_pipeline", "toy_tokenizer"}  # need torch: imported on first use


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
