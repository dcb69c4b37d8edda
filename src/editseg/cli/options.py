"""Options shared by the command groups (model, method) and the objects built from them."""

from __future__ import annotations

import argparse
import sys
import warnings

EPILOG = "{models}"  # filled in when help is printed (listing the models imports their families)


def models_epilog() -> str:
    """The help epilog: every name ``editseg models`` lists, then how models are found."""
    import textwrap

    from ..catalog import known_models

    names = ", ".join(known_models())
    return "\n".join(textwrap.wrap(
        f"Models: {names} (details: `editseg models`), any hub id of a supported family, or a local folder "
        "holding model_index.json. EDITSEG_MODELS_DIR=<dir> makes <dir>/<repo name> the first place looked; "
        "HF_HUB_OFFLINE=1 forbids downloads.", width=100,
    ))  # fmt: skip


class HelpParser(argparse.ArgumentParser):
    """An ArgumentParser whose ``{models}`` epilog (:data:`EPILOG`) is computed only when help is shown."""

    def format_help(self) -> str:
        if self.epilog == EPILOG:
            self.epilog = models_epilog()
        return super().format_help()

__all__ = [
    "EPILOG",
    "HelpParser",
    "add_method_options",
    "add_model_options",
    "config_from_args",
    "max_pixels_from_args",
    "models_epilog",
    "parse_method_options",
    "refiner_from_args",
    "segmenter_from_args",
]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--method``, ``--model`` and how to load it (device, dtype, offload, batch size, input limits)."""
    from ..catalog import DEFAULT_MODEL
    from ..methods.registry import DEFAULT_METHOD, METHODS

    group = parser.add_argument_group("model")
    group.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help=f"segmentation method (default: {DEFAULT_METHOD})")
    group.add_argument("--lora", default=None, help="rlfseg: LoRA folder written by `editseg train rlfseg` (its rlfseg_config.json names the base model; default with toy-shapes: the LoRA shipped in the package)")
    group.add_argument("--sampler", default="aos", choices=["one-step", "aos", "multi-step", "hss"],
                       help="rlfseg: one step with adaptive rescaling (aos, the paper's), plain one step, Euler steps, or hybrid (default: aos)")
    group.add_argument("--model", default=None, help=f"model name, hub id or local folder (default: the method's; {DEFAULT_MODEL} for {DEFAULT_METHOD})")
    group.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE", help="a setting of a method other than early grounding, repeatable; VALUE is JSON where it parses (true, 750, 0.5, [\"a\"]), else text; e.g. --method refam --method-option inversion=true (RefAMConfig fields; Ref-Diff: RefDiffConfig fields or preset=...)")
    group.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE", help="a switch of the model family, repeatable, set after loading; e.g. Step1X-Edit: vae_latent=sample, vae_seed=3, mrope=false, add_vision_id=true, id_zero_padding=false; Qwen-Image-Edit: mrope=false (the model's declared switches are listed on a wrong name)")
    group.add_argument("--device", default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    group.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)")
    group.add_argument("--offload", default="none", choices=["none", "model", "sequential"], help="CPU offload: none; model (components move to the GPU in turn); sequential (layer by layer, least memory)")
    group.add_argument("--batch-size", type=int, default=8, help="expressions per transformer forward (default: 8)")
    group.add_argument("--text-cache", type=int, default=None, metavar="N", help="early grounding: keep the text encodings of the N most recent instructions for reuse on any image, on models whose text encoder does not see the image (FLUX.2 klein, FLUX.1 Kontext); 0 disables (default: 256)")
    group.add_argument("--max-pixels", type=int, default=None, help="refuse images with more pixels than this (default: 50,000,000)")
    group.add_argument("--reduce-large", action="store_true", help="decode images above --max-pixels reduced by a power of two (JPEG at 1/2, 1/4, 1/8 directly) instead of refusing them; outputs are then at the reduced size")
    group.add_argument("--max-side", type=int, default=None, help="shrink the input so its longer side is at most this many pixels before the model's own resize rule (masks stay at input resolution; default: none, 128 for tiny-random-flux2)")


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """The early-grounding method's settings (defaults follow the paper)."""
    from ..config import BLOCK_SETS, FEATURE_SITES, MODES, SIMILARITIES
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
    group.add_argument("--refine", default="none", choices=["none", "sam"], help="sam: sharpen each mask with SAM (box + RAM peak -> SAM); editseg's extension, not the paper's (default: none)")
    group.add_argument("--sam-model", default=None, help="SAM for --refine sam and for methods using SAM: hub id, alias (sam-vit-base/large/huge), folder or tiny-random-sam (default: facebook/sam-vit-huge)")
    refine = parser.add_argument_group("MLLM instruction refinement (paper §3.2, A3)")
    refine.add_argument("--refine-instruction", action="store_true", help="let a Qwen2.5-VL rewrite 'remove <expression>' into a clear editing instruction (the backbone's own VLM when it has one; cached on disk)")
    refine.add_argument("--refiner-model", default=None, help="Qwen2.5-VL hub id or folder for --refine-instruction (default: the backbone's own, e.g. Step1X-Edit's / Qwen-Image-Edit's)")
    refine.add_argument("--refiner-cache", default=None, help="JSONL cache of refinements (default: $EDITSEG_CACHE_DIR/refinements.jsonl or ~/.cache/editseg/refinements.jsonl)")


def max_pixels_from_args(args: argparse.Namespace) -> int:
    """``--max-pixels`` validated (default :data:`~editseg.images.DEFAULT_MAX_PIXELS`)."""
    from ..images import DEFAULT_MAX_PIXELS, validate_max_pixels

    value = getattr(args, "max_pixels", None)
    return validate_max_pixels(DEFAULT_MAX_PIXELS if value is None else value)


def config_from_args(args: argparse.Namespace):
    """The :class:`~editseg.config.MethodConfig` of the method options (validated), after checking
    the options that need no model: ``--max-pixels``, ``--max-side``, ``--device``."""
    from ..config import MethodConfig, parse_block_selection
    from ..images import validate_max_side

    max_pixels_from_args(args)
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
        refine=getattr(args, "refine", "none"),
    )


def parse_method_options(items, flag: str = "--method-option") -> dict:
    """``["inversion=true", "timestep=750"]`` → ``{"inversion": True, "timestep": 750}`` (JSON values, else text)."""
    import json

    from ..errors import ConfigError

    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}.")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        options[key.strip().replace("-", "_")] = tuple(parsed) if isinstance(parsed, list) else parsed
    return options


def segmenter_from_args(args: argparse.Namespace):
    """Validate the options, then load the :class:`~editseg.api.Segmenter` they name.
    ``args.photo_hint = False`` (shapes-only runs: demo, eval on shapes) skips toy-shapes'
    "for photos use a real model" notice."""
    photo_hint = getattr(args, "photo_hint", True)
    import torch

    from ..api import RANDOM_WEIGHTS_NOTICE, TOY_SHAPES_NOTICE, Segmenter
    from ..catalog import TOY_SHAPES
    from ..errors import ConfigError
    from ..methods.registry import DEFAULT_METHOD

    config = config_from_args(args)  # validate options before loading a big model
    dtype = getattr(torch, args.dtype) if args.dtype else None
    print(f"editseg: loading {args.model or 'the default model'} for {args.method} ...", file=sys.stderr)
    options = parse_method_options(getattr(args, "method_option", []))
    switches = parse_method_options(getattr(args, "backbone_option", []), flag="--backbone-option")
    if args.method == DEFAULT_METHOD:  # the method options above are early grounding's
        if options:
            raise ConfigError("--method-option is for methods other than early-grounding (use its own flags).")
        options = {"config": config, "batch_size": args.batch_size, "max_side": args.max_side}
        if getattr(args, "text_cache", None) is not None:
            if args.text_cache < 0:
                raise ConfigError(f"--text-cache must be 0 (off) or more, got {args.text_cache}.")
            options["text_cache_size"] = args.text_cache
    elif args.method == "rlfseg":
        options = {**options, "lora": args.lora, "sampler": args.sampler}
    sam_model = getattr(args, "sam_model", None)
    components = {"sam": sam_model} if sam_model and (args.method != DEFAULT_METHOD or config.refine == "sam") else None
    if config.refine == "sam" and args.method == DEFAULT_METHOD:
        print(f"editseg: --refine sam loads SAM ({sam_model or 'facebook/sam-vit-huge'}) ...", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenter = Segmenter.from_pretrained(
            args.model, args.method, device=args.device, dtype=dtype, offload=args.offload, components=components,
            max_pixels=max_pixels_from_args(args), reduce_oversize=getattr(args, "reduce_large", False), **options,
        )  # fmt: skip
    backbone = getattr(segmenter.method, "backbone", None)
    if switches:
        if backbone is None:
            raise ConfigError(f"--backbone-option: the {args.method} method has no editing backbone to switch.")
        backbone.set_switches(switches)
    if backbone is not None and backbone.is_random:
        banner = "!" * 78
        print(f"{banner}\n{RANDOM_WEIGHTS_NOTICE.format(name=backbone.name)}\n{banner}", file=sys.stderr)
    elif backbone is not None and backbone.name == TOY_SHAPES and photo_hint:
        print(TOY_SHAPES_NOTICE, file=sys.stderr)
    refiner = refiner_from_args(args, backbone, dtype)
    if refiner is not None:
        if not hasattr(segmenter.method, "instruction_refiner"):
            raise ConfigError(f"--refine-instruction is for the early-grounding method, not {args.method}.")
        segmenter.method.instruction_refiner = refiner
    return segmenter


def refiner_from_args(args: argparse.Namespace, backbone, dtype):
    """The MLLM instruction refiner of ``--refine-instruction`` (None without the flag)."""
    if not getattr(args, "refine_instruction", False):
        return None
    from ..components.refiner import InstructionRefiner, RefinementCache

    cache = RefinementCache(args.refiner_cache)
    if args.refiner_model:
        print(f"editseg: loading the refiner {args.refiner_model} ...", file=sys.stderr)
        return InstructionRefiner.from_pretrained(args.refiner_model, device=args.device, dtype=dtype, cache=cache)
    return InstructionRefiner.from_backbone(backbone, cache=cache)
