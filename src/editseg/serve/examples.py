"""Built-in example scenes from the shapes world, so the page works out of the box on toy-shapes.

Each example is a fixed test-split scene (seeded, rendered in memory) with one suggested
expression per object. The default model ``toy-shapes`` was trained on this world at 64x64;
other models get the same scenes at 512x512.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from ..data import shapes_grammar
from ..data.shapes import ShapesWorld

EXAMPLE_SEED = 7
EXAMPLE_INDICES = (11, 3, 5, 8, 13, 21)
KIND_ORDER = ("attribute", "superlative", "spatial", "relational")


@dataclass(frozen=True)
class Example:
    """A scene the client names by ``id`` (never by a path)."""

    id: str
    image: Image.Image
    png: bytes
    expressions: tuple[str, ...]


def _suggestions(sample) -> tuple[str, ...]:
    rng = np.random.default_rng(0)
    out = []
    for target in range(len(sample.objects)):
        options = shapes_grammar.valid_expressions(sample.objects, target)
        for kind in KIND_ORDER:
            if options.get(kind):
                out.append(shapes_grammar.realize_expression(options[kind][0], rng))
                break
    return tuple(out)


@lru_cache(maxsize=4)
def load_examples(image_size: int = 64) -> dict[str, Example]:
    """The examples at ``image_size`` pixels, by id (``shapes-1`` ...)."""
    world = ShapesWorld(image_size=image_size, seed=EXAMPLE_SEED)
    examples = {}
    for number, index in enumerate(EXAMPLE_INDICES, start=1):
        sample = world.sample("test", index)
        image = Image.fromarray(np.asarray(sample.image))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        key = f"shapes-{number}"
        examples[key] = Example(key, image, buffer.getvalue(), _suggestions(sample))
    return examples


def example_size_for(model_name: str) -> int:
    """64 px for toy-shapes (its training size), 512 px for other models."""
    return 64 if model_name == "toy-shapes" else 512
