"""``editseg demo``: segment expressions in two synthetic shapes scenes and write a picture.

The scenes are fixed in code (``DEMO_SEED``, ``DEMO_INDEX``, ``MIN_BASIC_OBJECTS``; a rule chosen
without looking at any result on the scene it picks): the first basic-tier scene from ``DEMO_INDEX``
on with at least three objects, each object (up to four) referred to by an attribute expression,
then a full-tier scene with its own benchmark expression.
Each row shows the scene, the CAM, the RAM, the predicted mask and the ground truth for one
expression, and, for FLUX.2 backbones, the edit the model itself predicts at that first step
(``x0 = noise - v``, decoded): what "remove <expression>" would do after one step. The scene comes from the shapes world (``editseg.data.shapes``) that the built-in
``toy-shapes`` model was trained on; other models get the same scene at a larger size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import options

if TYPE_CHECKING:  # the scene and picture code loads when the demo runs, not to build the parser
    import numpy as np
    from PIL import Image

    from ..api import Segmenter
    from ..data.shapes import ShapesSample

DEMO_SEED = 7
DEMO_INDEX = 11
# The basic scene at DEMO_INDEX has two objects; the issue asks for 3-4 expressions on one scene, so
# the demo takes the first basic scene from DEMO_INDEX on with at least this many objects (a rule
# fixed before looking at its results, not a re-draw towards a good-looking scene).
MIN_BASIC_OBJECTS = 3
KIND_ORDER = ("attribute", "superlative", "spatial", "relational")  # simplest expression that singles the object out


def register(subparsers: Any) -> None:
    """Add ``demo`` to the ``editseg`` sub-command parser."""
    demo = subparsers.add_parser("demo", help="segment a built-in scene and write a picture to look at")
    demo.add_argument("--out", default="editseg-demo", help="output folder (default: editseg-demo)")
    options.add_model_options(demo)
    options.add_method_options(demo)


def demo_scene(image_size: int = 64, tier: str = "basic") -> ShapesSample:
    """The fixed demo scene of a benchmark tier: basic, the first "val" scene from ``DEMO_INDEX`` on
    with at least ``MIN_BASIC_OBJECTS`` objects; full, "test" scene ``DEMO_INDEX``."""
    from ..data.shapes import tier_world

    world = tier_world(tier, DEMO_SEED, image_size)
    if tier != "basic":
        return world.sample("test", DEMO_INDEX)
    index = DEMO_INDEX
    while len((scene := world.sample("val", index)).objects) < MIN_BASIC_OBJECTS:
        index += 1
    return scene


def demo_expressions(scene: ShapesSample, seed: int = 0, limit: int = 4) -> list[tuple[str, np.ndarray]]:
    """Up to ``limit`` objects, each with one expression (the first kind of ``KIND_ORDER`` that
    singles it out) and its ground-truth mask."""
    import numpy as np

    from ..data import shapes_grammar

    rng = np.random.default_rng(seed)
    pairs = []
    for target in range(len(scene.objects)):
        options = shapes_grammar.valid_expressions(scene.objects, target)
        for kind in KIND_ORDER:
            if options.get(kind):
                pairs.append((shapes_grammar.realize_expression(options[kind][0], rng), scene.object_masks[target]))
                break
    return pairs[:limit]


def first_step_edits(segmenter: Segmenter, image: Image.Image, results) -> list[Image.Image]:
    """The model's own first-step edit per result (empty where the backbone cannot decode one)."""
    from PIL import Image

    backbone = segmenter.backbone
    if not backbone.decodes_edits:
        return []
    prepared = backbone.prepare_image(image, max_side=segmenter.max_side)  # the geometry the masks used
    text = backbone.encode_text([r.expression for r in results], [r.instruction for r in results])
    estimate = backbone.first_step_clean_estimate(prepared, text, segmenter.config.seed)
    return [edit.resize(image.size, Image.Resampling.NEAREST) for edit in backbone.decode_tokens(estimate, prepared)]


def run_demo(segmenter: Segmenter, out_dir: Path) -> Path:
    """Segment every object of the demo scene by an expression; write ``demo.png``."""
    from ..viz import stack_rows

    out_dir.mkdir(parents=True, exist_ok=True)
    size = 64 if segmenter.backbone.name == "toy-shapes" else 512
    basic, full = demo_scene(size, "basic"), demo_scene(size, "full")
    rows = []
    for tier, scene, pairs in (("basic", basic, demo_expressions(basic)),
                               ("full", full, [(full.expression, full.mask)])):
        rows += _scene_rows(segmenter, tier, scene, pairs)
    path = out_dir / "demo.png"
    stack_rows(rows).save(path)
    return path


def _scene_rows(segmenter: Segmenter, tier: str, scene: ShapesSample, pairs: list[tuple[str, np.ndarray]]) -> list:
    from PIL import Image

    from ..evaluation.metrics import mask_iou
    from ..viz import heatmap, overlay, panel_row

    image = Image.fromarray(scene.image)
    results = segmenter.segment(image, [expression for expression, _ in pairs])
    edits = first_step_edits(segmenter, image, results)
    rows = []
    for index, (result, (_, truth)) in enumerate(zip(results, pairs)):
        caption = f"[{tier}] {result.expression!r}   IoU {mask_iou(result.mask, truth):.2f}"
        if segmenter.backbone.is_random:
            caption += "   [RANDOM WEIGHTS: meaningless]"
        rows.append(
            panel_row(
                [
                    ("image", image),
                    ("CAM", heatmap(result.cam)),
                    ("RAM", heatmap(result.ram)),
                    ("mask", overlay(image, result.mask)),
                    ("ground truth", overlay(image, truth, color=(40, 200, 40))),
                ] + ([("model's edit, step 1", edits[index])] if edits else []),
                height=160,
                caption=caption,
            )
        )
    return rows


def run_demo_command(args: argparse.Namespace) -> int:
    """``editseg demo``."""
    from .writers import check_output_dir

    options.config_from_args(args)
    out_dir = check_output_dir(args.out)  # before the model loads
    args.photo_hint = False  # a shapes scene: no "for photos use a real model" notice
    out = run_demo(options.segmenter_from_args(args), out_dir)
    print(f"editseg: demo picture written to {out}", file=sys.stderr)
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"demo": run_demo_command}
