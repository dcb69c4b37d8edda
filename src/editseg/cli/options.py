"""Options shared by the command groups (model, method) and the objects built from them."""

from __future__ import annotations

import argparse
import sys
import warnings

EPILOG = """Models: toy-shapes (built in, the default: a tiny editor trained on synthetic shapes
scenes, 64x64), tiny-random-flux2 (built in, random weights), flux2-klein-4b, flux2-klein-9b, flux2-klein-base-4b, flux2-klein-base-9b, any FLUX.2-klein hub
id, or a local folder holding model_index.json. EDITSEG_MODELS_DIR=<dir> makes <dir>/<repo name>
the first place looked; HF_HUB_OFFLINE=1 forbids downloads."""

__all__ = ["EPILOG", "add_method_options", "add_model_options", "config_from_args", "segmenter_from_args"]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--method``, ``--model`` and how to load it (device, dtype, offload, batch size, input limits)."""
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


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """The early-grounding method's settings (defaults follow the paper)."""
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


def config_from_args(args: argparse.Namespace):
    """The :class:`~editseg.config.MethodConfig` of the method options (validated)."""
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


def segmenter_from_args(args: argparse.Namespace):
    """Validate the options, then load the :class:`~editseg.api.Segmenter` they name."""
    import torch

    from ..api import RANDOM_WEIGHTS_NOTICE, TOY_SHAPES_NOTICE, Segmenter
    from ..backbones import TOY_SHAPES
    from ..images import DEFAULT_MAX_PIXELS
    from ..methods.registry import DEFAULT_METHOD

    config = config_from_args(args)  # validate options before loading a big model
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
