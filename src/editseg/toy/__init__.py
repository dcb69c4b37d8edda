"""A tiny FLUX.2 [klein] editor trained on the synthetic shapes world (for end-to-end checks on CPU).

``build_toy_pipeline`` makes the untrained pipeline from the real diffusers/transformers classes,
``editseg.toy.train`` trains it, and the shipped weights live in ``editseg/assets/toy-shapes``.
"""

from __future__ import annotations

from .model import TOY_ASSET_DIR, ToyConfig, build_toy_pipeline, toy_tokenizer

__all__ = ["TOY_ASSET_DIR", "ToyConfig", "build_toy_pipeline", "toy_tokenizer"]
