"""Shared fixtures: one tiny random FLUX.2 [klein] pipeline per test session (no downloads)."""

from __future__ import annotations

import os
import warnings

# Tests never download: set before huggingface_hub is imported (it reads these once).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_pipeline():
    from editseg.backbones.tiny import build_tiny_flux2_klein_pipeline

    return build_tiny_flux2_klein_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_pipeline):
    from editseg.backbones.flux2 import Flux2KleinBackbone

    return Flux2KleinBackbone(tiny_pipeline, name="tiny-random-flux2", is_random=True)


@pytest.fixture(scope="module")
def seg(tiny_backbone):
    """A ``Segmenter`` over the tiny random klein backbone (one per test module)."""
    from editseg import Segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Segmenter(tiny_backbone)


@pytest.fixture()
def segmenter(tiny_backbone):
    from editseg import Segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Segmenter(tiny_backbone)


@pytest.fixture()
def random_image():
    rng = np.random.default_rng(0)
    return (rng.random((64, 80, 3)) * 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def toy_segmenter():
    """The built-in default model (toy-shapes), loaded once per test session."""
    from editseg import Segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Segmenter.from_pretrained()
