"""Command line: ``editseg segment | demo | models``. Errors print a message, not a traceback."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..errors import EditsegError

EPILOG = """Models: toy-shapes (built in, the default: a tiny editor trained on synthetic shapes
scenes, 64x64), tiny-random-flux2 (built in, random weights), flux2-klein-4b, flux2-klein-9b, flux2-klein-base-4b, flux2-klein-base-9b, any FLUX.2-klein hub
id, or a local folder holding model_index.json. EDITSEG_MODELS_DIR=<dir> makes <dir>/<repo name>
the first place looked; HF_HUB_OFFLINE=1 forbids downloads."""


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    from ..api import DEFAULT_MODEL
    from ..methods.registry import DEFAULT_METHOD, METHODS

    group = parser.add_argument_group("model")
    group.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help=f"segmentation method (default: {DEFAULT_METHOD})")
    group.add_argument("--model", default=None, help=f"model name, hub id or local folder (default: the method's; {DEFAULT_MODEL} for {DEFAULT_METHOD})")
    group.add_argument("--device", default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    group.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)")
    group.add_argument("--offload", default="none", choices=["none", "model", "sequential"], help="CPU offload: none; model (components move to the GPU in turn); sequential (layer by layer, least memory)")
    group.add_argument("--batch-size", type=int, default=8, help="expressions per transformer forward (default: 8)")
    group.add_argument("--max-pixels", type=int, default=None, help="refuse images with more pixels than this (default: 178,956,970)")
    group.add_argument("--max-side", type=int, default=None, help="shrink the input so its longer side is at most this many pixels before the model's own resize rule (masks stay at input resolution; default: none, 128 for tiny-random-flux2)")


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    from ..config import BLOCK_SETS, MODES, SIMILARITIES
    from ..probing.recorder import FEATURE_SITES
    from ..text import INSTRUCTION_TEMPLATES, PROMPT_TOKEN_SETS

    group = parser.add_argument_group("method (defaults follow the paper)")
    group.add_argument("--mode", default="full", choices=MODES, help="full: RAM + feature prototypes (eqs. 3-6); ram / cam: the attention map alone, thresholded at --map-threshold")
    group.add_argument("--attention-blocks", default="all", help=f"blocks summed for CAM/RAM: {', '.join(BLOCK_SETS)}, or indices like 0-7,20 (default: all)")
    group.add_argument("--feature-site", default="attn", choices=FEATURE_SITES, help="where FSL features are read: attn (MMSA output A·V), adaln (post-AdaLN input), block (block output)")
    group.add_argument("--feature-block", type=int, default=None, help="0-based block for FSL features (default: the backbone's, 20 of 32 on klein-9B)")
    group.add_argument("--tau", type=float, default=0.8, help="RAM threshold for the prototype region (default: 0.8)")
    group.add_argument("--map-threshold", type=float, default=0.5, help="binarisation threshold in cam/ram modes (default: 0.5)")
    group.add_argument("--prompt-tokens", default="expression", choices=PROMPT_TOKEN_SETS, help="text tokens counted as the prompt: the expression's words (default), without stop words, the whole instruction, or all non-padding tokens")
    group.add_argument("--template", default="remove", help=f"instruction template: {', '.join(INSTRUCTION_TEMPLATES)}, or a format string with {{expression}} (default: remove)")
    group.add_argument("--similarity", default="cosine", choices=SIMILARITIES, help="eq. 6 scoring: cosine (normalised prototypes, the paper's text) or dot (eq. 6 as typeset)")
    group.add_argument("--seed", type=int, default=0, help="seed of the first-step noise (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="editseg",
        description="Segment what a sentence refers to in a photo, from the grounding inside an image-editing model (one denoising step, no training).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"editseg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    segment = commands.add_parser(
        "segment",
        help="masks for expressions in one image",
        description="Write, per expression: a mask PNG, an overlay PNG, CAM and RAM heatmaps and a JSON record (COCO RLE mask, settings, timings).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    segment.add_argument("image", help="image file (any Pillow format; grayscale, alpha and 16-bit are converted)")
    segment.add_argument("expressions", nargs="+", metavar="EXPR", help="referring expressions, e.g. 'the zebra on the left'")
    segment.add_argument("--out", default="editseg-out", help="output folder (default: editseg-out)")
    _add_model_options(segment)
    _add_method_options(segment)

    demo = commands.add_parser("demo", help="segment a built-in scene and write a picture to look at")
    demo.add_argument("--out", default="editseg-demo", help="output folder (default: editseg-demo)")
    _add_model_options(demo)
    _add_method_options(demo)

    commands.add_parser("models", help="list the models editseg knows")
    for module in _command_modules():
        module.register(commands)
    return parser


COMMAND_MODULES = ("editseg.cli.evaluation", "editseg.cli.toy")


def _command_modules():
    """Modules that add sub-commands: each has ``register(subparsers)`` and ``HANDLERS``."""
    import importlib

    modules = []
    for name in COMMAND_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as error:
            if error.name is None or not name.startswith(error.name):
                raise
    return modules


def _config_from_args(args: argparse.Namespace):
    from ..config import MethodConfig, parse_block_selection

    return MethodConfig(
        mode=args.mode,
        attention_blocks=parse_block_selection(args.attention_blocks),
        feature_site=args.feature_site,
        feature_block=args.feature_block,
        tau=args.tau,
        map_threshold=args.map_threshold,
        prompt_tokens=args.prompt_tokens,
        instruction_template=args.template,
        similarity=args.similarity,
        seed=args.seed,
    )


def _segmenter_from_args(args: argparse.Namespace):
    import torch

    from ..api import RANDOM_WEIGHTS_NOTICE, TOY_SHAPES_NOTICE, Segmenter
    from ..backbones import TOY_SHAPES
    from ..images import DEFAULT_MAX_PIXELS
    from ..methods.registry import DEFAULT_METHOD

    config = _config_from_args(args)  # validate options before loading a big model
    dtype = getattr(torch, args.dtype) if args.dtype else None
    print(f"editseg: loading {args.model or 'the default model'} for {args.method} ...", file=sys.stderr)
    options = {}
    if args.method == DEFAULT_METHOD:  # the method options above are early grounding's
        options = {"config": config, "batch_size": args.batch_size, "max_side": args.max_side}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenter = Segmenter.from_pretrained(
            args.model, args.method, device=args.device, dtype=dtype, offload=args.offload,
            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, **options,
        )  # fmt: skip
    backbone = getattr(segmenter.method, "backbone", None)
    if backbone is not None and backbone.is_random:
        banner = "!" * 78
        print(f"{banner}\n{RANDOM_WEIGHTS_NOTICE.format(name=backbone.name)}\n{banner}", file=sys.stderr)
    elif backbone is not None and backbone.name == TOY_SHAPES:
        print(TOY_SHAPES_NOTICE, file=sys.stderr)
    return segmenter


def run_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..images import DEFAULT_MAX_PIXELS, load_image
    from ..text import normalize_expression
    from .writers import slug, write_result

    image = load_image(args.image, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)  # fail fast, before loading
    for expression in args.expressions:
        normalize_expression(expression)
    segmenter = _segmenter_from_args(args)
    segmenter.set_image(image)
    out_dir = Path(args.out)
    expressions = list(args.expressions)
    batches = range(0, len(expressions), segmenter.batch_size)
    with tqdm(total=len(expressions), unit="expr", desc="segmenting", disable=len(expressions) < 2) as progress:
        for start in batches:
            for offset, result in enumerate(segmenter.predict(expressions[start : start + segmenter.batch_size])):
                index = start + offset
                paths = write_result(result, image, out_dir, f"{index:02d}-{slug(result.expression)}", str(args.image))
                progress.write(f"{result.expression!r}: {result.area} px -> {paths['mask']}")
                progress.update(1)
    print(f"editseg: wrote {len(expressions)} result(s) to {out_dir}", file=sys.stderr)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo

    out = demo(_segmenter_from_args(args), Path(args.out))
    print(f"editseg: demo picture written to {out}", file=sys.stderr)
    return 0


def run_models(_: argparse.Namespace) -> int:
    from ..backbones import known_models

    for name, description in known_models().items():
        print(f"{name:24s} {description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"segment": run_segment, "demo": run_demo, "models": run_models}
    for module in _command_modules():
        handlers.update(module.HANDLERS)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return handlers[args.command](args)
    except EditsegError as error:
        print(f"editseg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
