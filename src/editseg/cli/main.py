"""Command line: ``editseg segment | demo | shapes | models`` (and the eval and toy groups).

Errors print one ``editseg: error:`` line, exit status 2, no traceback; every check that needs no
model (options, device, image, expressions, output folder) runs before the model loads.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..errors import EditsegError

EPILOG = "{models}"  # filled in when help is printed (listing the models imports their families)


def models_epilog() -> str:
    """The help epilog: every name ``editseg models`` lists, then how models are found."""
    import textwrap

    from ..backbones import known_models

    names = ", ".join(known_models())
    return "\n".join(textwrap.wrap(
        f"Models: {names} (details: `editseg models`), any hub id of a supported family, or a local folder "
        "holding model_index.json. EDITSEG_MODELS_DIR=<dir> makes <dir>/<repo name> the first place looked; "
        "HF_HUB_OFFLINE=1 forbids downloads.", width=100,
    ))  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose ``{models}`` epilog is computed only when help is shown."""

    def format_help(self) -> str:
        if self.epilog == EPILOG:
            self.epilog = models_epilog()
        return super().format_help()


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
    group.add_argument("--max-pixels", type=int, default=None, help="refuse images with more pixels than this (default: 50,000,000)")
    group.add_argument("--reduce-large", action="store_true", help="decode images above --max-pixels reduced by a power of two (JPEG at 1/2, 1/4, 1/8 directly) instead of refusing them; outputs are then at the reduced size")
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
    parser = _Parser(
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

    shapes = commands.add_parser(
        "shapes",
        help="write shapes scenes (images, masks, expressions) to try `editseg segment` on",
        description="Write held-out scenes of the shapes world the built-in toy-shapes model knows: images/<id>.png, "
        "masks/<id>.png (ground truth) and manifest.jsonl (one expression per line, usable with "
        "`editseg eval --dataset manifest`), and print a segment command for the first one.",
    )
    shapes.add_argument("--out", default="editseg-shapes", help="output folder (default: editseg-shapes)")
    shapes.add_argument("--count", type=int, default=4, help="number of scenes (default: 4)")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64, what toy-shapes was trained on)")

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


def _max_pixels(args: argparse.Namespace) -> int:
    from ..images import DEFAULT_MAX_PIXELS, validate_max_pixels

    value = getattr(args, "max_pixels", None)
    return validate_max_pixels(DEFAULT_MAX_PIXELS if value is None else value)


def _config_from_args(args: argparse.Namespace):
    from ..config import MethodConfig, parse_block_selection
    from ..images import validate_max_side

    _max_pixels(args)  # input-size options are checked with the method options, before any loading
    validate_max_side(getattr(args, "max_side", None))
    if getattr(args, "device", None) is not None:
        from ..backbones import resolve_device

        resolve_device(args.device)
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
    """Load the model the options name. ``args.photo_hint = False`` (shapes-only runs: demo, eval
    on shapes) skips toy-shapes' "for photos use a real model" notice."""
    photo_hint = getattr(args, "photo_hint", True)
    import torch

    from ..api import RANDOM_WEIGHTS_NOTICE, TOY_SHAPES_NOTICE, Segmenter
    from ..backbones import TOY_SHAPES
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
            max_pixels=_max_pixels(args), reduce_oversize=getattr(args, "reduce_large", False), **options,
        )  # fmt: skip
    backbone = getattr(segmenter.method, "backbone", None)
    if backbone is not None and backbone.is_random:
        banner = "!" * 78
        print(f"{banner}\n{RANDOM_WEIGHTS_NOTICE.format(name=backbone.name)}\n{banner}", file=sys.stderr)
    elif backbone is not None and backbone.name == TOY_SHAPES and photo_hint:
        print(TOY_SHAPES_NOTICE, file=sys.stderr)
    return segmenter


def run_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..images import load_image
    from ..text import normalize_expression
    from .writers import check_output_dir, output_stem, write_result

    # Everything that can be judged without the model, before the seconds-long load.
    _config_from_args(args)
    image = load_image(args.image, max_pixels=_max_pixels(args), reduce_oversize=args.reduce_large)
    for expression in args.expressions:
        normalize_expression(expression)
    out_dir = check_output_dir(args.out)
    segmenter = _segmenter_from_args(args)
    segmenter.set_image(image)
    expressions = list(args.expressions)
    batches = range(0, len(expressions), segmenter.batch_size)
    with tqdm(total=len(expressions), unit="expr", desc="segmenting", disable=len(expressions) < 2) as progress:
        for start in batches:
            for offset, result in enumerate(segmenter.predict(expressions[start : start + segmenter.batch_size])):
                index = start + offset
                stem = output_stem(args.image, index, result.expression)
                paths = write_result(result, image, out_dir, stem, str(args.image))
                progress.write(f"{result.expression!r}: {result.area} px -> {paths['mask']}")
                progress.update(1)
    print(f"editseg: wrote {len(expressions)} result(s) to {out_dir}", file=sys.stderr)
    return 0


def _no_photo_hint(args: argparse.Namespace) -> argparse.Namespace:
    args.photo_hint = False
    return args


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo
    from .writers import check_output_dir

    _config_from_args(args)
    out_dir = check_output_dir(args.out)
    out = demo(_segmenter_from_args(_no_photo_hint(args)), out_dir)
    print(f"editseg: demo picture written to {out}", file=sys.stderr)
    return 0


def run_shapes(args: argparse.Namespace) -> int:
    import json
    import shlex

    from ..data.shapes import save_samples_as_manifest, shapes_benchmark
    from ..errors import ConfigError
    from .writers import check_output_dir

    if args.count < 1:
        raise ConfigError(f"--count must be at least 1, got {args.count}.")
    if args.size < 32:
        raise ConfigError(f"--size must be at least 32 pixels, got {args.size}.")
    out_dir = check_output_dir(args.out)
    manifest = save_samples_as_manifest(shapes_benchmark(args.count, image_size=args.size), out_dir)
    first = json.loads(manifest.read_text(encoding="utf-8").splitlines()[0])
    image = out_dir / first["image"]
    print(f"editseg: wrote {args.count} scene(s) to {out_dir} (images/, masks/, manifest.jsonl). Try:", file=sys.stderr)
    print(f"editseg segment {shlex.quote(str(image))} {shlex.quote(first['expression'])} --out {shlex.quote(str(out_dir / 'masks-predicted'))}")
    return 0


def run_models(_: argparse.Namespace) -> int:
    from ..backbones import known_models

    for name, description in known_models().items():
        print(f"{name:24s} {description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"segment": run_segment, "demo": run_demo, "shapes": run_shapes, "models": run_models}
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
