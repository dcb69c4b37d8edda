"""The early-grounding method (He et al., §3.2, eqs. 3-6) and :class:`EarlyGroundingMethod`.

The maths are pure functions of probe results: inputs are the per-block CAM/RAM terms and
clean-token features that a backbone's probes recorded, outputs are token-grid maps and masks.
:class:`EarlyGroundingMethod` runs them on a :class:`~editseg.backbones.base.Backbone`: one probed
forward per expression batch (:meth:`EarlyGroundingMethod.probe`), then the maths per config.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..backbones import TOY_SHAPES, load_backbone
from ..backbones.base import RANDOM_WEIGHTS_NOTICE, Backbone, EncodedText, PreparedImage
from ..backbones.text_cache import DEFAULT_TEXT_CACHE_ENTRIES, TextEncodingCache
from ..config import MethodConfig
from ..errors import ConfigError, ExpressionError
from ..geometry import ImageGeometry
from ..images import validate_max_side
from ..probing.recorder import FEATURE_SITES, ProbePlan, ProbeRecorder, TokenLayout
from ..results import SegmentationResult
from ..text import PromptTokens, make_instruction, normalize_expression
from .base import Method, memory_guard


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """𝒩(·): per-sample min-max normalisation over all but the first dimension (constant maps → 0)."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return ((flat - low) / safe * (span > 0)).view_as(maps)


def aggregate_attention(per_block: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Eqs. 3-4 outer part: 𝒩(Σ_l 𝓕⁻¹(term_l)) for terms stacked as (blocks, batch, tokens)."""
    summed = per_block.sum(dim=0)
    return minmax(summed.view(summed.shape[0], *grid))


def prototypes(features: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5: masked means of unit-norm ``features`` (batch, tokens, dim) over ``region`` and its complement."""
    weights = region.to(features.dtype)
    fg = (weights[..., None] * features).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)
    bg = ((1 - weights)[..., None] * features).sum(1) / (1 - weights).sum(1, keepdim=True).clamp_min(1)
    return fg, bg


def foreground_score(
    features: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, similarity: str = "cosine"
) -> torch.Tensor:
    """Per-token ``sim(P_fg, f) - sim(P_bg, f)`` (batch, tokens); eq. 6 labels a pixel fg where > 0.

    Pixel features are unit vectors, so cosine similarity differs from the dot product only by the
    prototype norms (``similarity="cosine"`` divides by them; ``"dot"`` is eq. 6 as typeset).
    Because the score is linear in the feature, upsampling the score equals scoring the upsampled
    features: the (dim × H × W) upsampled feature map of the paper is never built.
    """
    if similarity == "cosine":
        fg, bg = F.normalize(fg, dim=-1), F.normalize(bg, dim=-1)
    return torch.einsum("btd,bd->bt", features, fg - bg)


@dataclass
class GroundingMaps:
    """Token-grid results of one batch: maps in [0, 1], the prototype region and fg scores."""

    cam: torch.Tensor  # (batch, rows, cols)
    ram: torch.Tensor
    region: torch.Tensor | None = None  # (batch, rows, cols) bool: RAM > tau
    score: torch.Tensor | None = None  # (batch, rows, cols): fg minus bg similarity


def ground(
    cam_terms: torch.Tensor,
    ram_terms: torch.Tensor,
    features: torch.Tensor | None,
    grid: tuple[int, int],
    config: MethodConfig,
) -> GroundingMaps:
    """CAM and RAM from per-block terms (blocks, batch, tokens); with ``mode="full"``, also FSL scores."""
    maps = GroundingMaps(cam=aggregate_attention(cam_terms, grid), ram=aggregate_attention(ram_terms, grid))
    if config.mode != "full":
        return maps
    if features is None:
        raise ValueError("mode 'full' needs clean-token features")
    unit = F.normalize(features.float(), dim=-1)
    region = maps.ram.flatten(1) > config.tau
    fg, bg = prototypes(unit, region)
    score = foreground_score(unit, fg, bg, config.similarity)
    # Degenerate region covering every token: no background prototype exists; everything is fg.
    everything = region.all(dim=1, keepdim=True)
    score = torch.where(everything, torch.ones_like(score), score)
    maps.region = region.view(-1, *grid)
    maps.score = score.view(-1, *grid)
    return maps


def masks_at_input(maps: GroundingMaps, geometry: ImageGeometry, config: MethodConfig) -> torch.Tensor:
    """Binary masks (batch, H, W) at the input resolution for the configured mode.

    Upsampled one map at a time, so the float temporary is one (H, W) map, not a batch of them.
    """
    if config.mode == "full":
        chosen, threshold = maps.score, 0.0
    else:
        chosen, threshold = (maps.cam if config.mode == "cam" else maps.ram), config.map_threshold
    return torch.cat([geometry.to_input(chosen[i : i + 1]) > threshold for i in range(chosen.shape[0])])


# -- the method ------------------------------------------------------------------------------------

PromptIndices = Callable[[PromptTokens, str], list[int]]
LayoutOverride = Callable[[TokenLayout], TokenLayout]


@dataclass
class Probe:
    """One probed forward for a batch of expressions: the encoded text, the plan and what was recorded.

    ``recorder.cam`` / ``ram`` / ``features`` hold the per-block probe results (see
    :class:`~editseg.probing.recorder.ProbeRecorder`); ``token_sets[i]`` are the text positions
    counted as expression ``i``'s prompt.
    """

    expressions: list[str]
    text: EncodedText
    token_sets: list[list[int]]
    plan: ProbePlan
    recorder: ProbeRecorder
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def instructions(self) -> list[str]:
        return [prompt.instruction for prompt in self.text.prompts]


class EarlyGroundingMethod(Method):
    """The paper's method on an editing backbone: one probed forward per expression batch.

    ``predict_sweep`` evaluates several :class:`MethodConfig` from one forward where they share a
    :meth:`~MethodConfig.forward_key`; :meth:`probe` is the lower-level call (one probed forward →
    :class:`Probe`) that sweeps and studies build on.

    ``layout_override`` and ``prompt_indices`` exist for diagnostics (deliberately broken variants
    whose scores must drop): they replace the token layout the probes read and the text positions
    counted as the prompt.

    ``text_cache_size``: instruction encodings kept for reuse across images and calls where the
    backbone's text encoder ignores the image (:class:`~editseg.backbones.text_cache.TextEncodingCache`;
    0 disables it). Results are bit-identical with and without it.
    """

    name: ClassVar[str] = "early-grounding"
    requires: ClassVar[tuple[str, ...]] = ("editing-dit",)

    def __init__(
        self,
        backbone: Backbone,
        config: MethodConfig | None = None,
        batch_size: int = 8,
        instruction_refiner: Callable[[str], str] | None = None,
        max_side: int | None = None,
        *,
        layout_override: LayoutOverride | None = None,
        prompt_indices: PromptIndices | None = None,
        text_cache_size: int = DEFAULT_TEXT_CACHE_ENTRIES,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size!r}.")
        self.backbone = backbone
        self.config = config or MethodConfig()
        self.batch_size = batch_size
        self.instruction_refiner = instruction_refiner
        self.max_side = validate_max_side(max_side)
        self.layout_override = layout_override
        self.prompt_indices = prompt_indices
        # encodings of single instructions, reused where the backbone's text encoder ignores the image
        # (text_cache_size=0 disables it; see editseg.backbones.text_cache)
        self.text_cache = TextEncodingCache(text_cache_size)
        self.sam = None  # a SamComponent for config.refine == "sam" (editseg's extension)
        self.image: PreparedImage | None = None
        self.image_seconds = 0.0
        if backbone.is_random:
            warnings.warn(RANDOM_WEIGHTS_NOTICE.format(name=backbone.name), stacklevel=3)

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        offload: str = "none",
        components: Mapping[str, str] | None = None,
        **options: Any,
    ) -> "EarlyGroundingMethod":
        """Load ``model`` (name, hub id or local folder; default toy-shapes) with
        :func:`~editseg.backbones.load_backbone`. ``options``: ``config``, ``batch_size``,
        ``instruction_refiner``, ``max_side``, ``text_cache_size``. ``components`` may name the ``editing-dit`` only."""
        components = dict(components or {})
        config = options.get("config") or MethodConfig()
        sam_model = components.pop("sam", None) if config.refine == "sam" else None  # --refine sam (our extension)
        extra = sorted(set(components) - set(cls.requires))
        if extra:
            hint = " (a 'sam' component is taken with MethodConfig(refine='sam'))" if "sam" in extra else ""
            raise ConfigError(f"{cls.name} uses components {', '.join(cls.requires)} only; got {', '.join(extra)}.{hint}")
        model = components.get("editing-dit", model) or TOY_SHAPES
        method = cls(load_backbone(model, device=device, dtype=dtype, offload=offload), **options)
        if method.config.refine == "sam":
            from ..components.sam import DEFAULT_SAM, SamComponent

            method.sam = SamComponent.from_pretrained(sam_model or DEFAULT_SAM, device=method.backbone.device)
        return method

    # -- image -----------------------------------------------------------------------------------
    def set_image(self, image: Image.Image) -> None:
        """Pre-process and encode ``image`` (RGB) once; later predictions reuse it."""
        start = time.perf_counter()
        if hasattr(self.instruction_refiner, "set_image"):  # an MLLM refiner looks at the image
            self.instruction_refiner.set_image(image)
        if self.sam is not None:
            self.sam.set_image(np.asarray(image.convert("RGB")))
        with memory_guard(self.backbone.device), torch.inference_mode():
            self.image = self.backbone.prepare_image(image, max_side=self.max_side)
        self.image_seconds = _elapsed(start, self.backbone.device)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the current image."""
        return None if self.image is None else self.image.geometry.input_size

    # -- settings ---------------------------------------------------------------------------------
    def instruction_for(self, expression: str, config: MethodConfig | None = None) -> str:
        """The instruction the editing model reads for ``expression``."""
        config = config or self.config
        if self.instruction_refiner is not None:
            refined = self.instruction_refiner(expression)
            if expression not in refined:
                raise ExpressionError(
                    f"The instruction refiner returned {refined!r}, which no longer contains the expression "
                    f"{expression!r}; its tokens could not be located."
                )
            return refined
        return make_instruction(expression, config.instruction_template)

    def _refiner_record(self, expression: str) -> dict:
        """The refined instruction and the refiner's identity, when an MLLM refiner is in use."""
        record_for = getattr(self.instruction_refiner, "record_for", None)
        return record_for(expression) if record_for is not None else {}

    def expression_problems(self, expressions: Sequence[str], config: MethodConfig | None = None) -> dict[str, str]:
        """The text checks of :meth:`Method.expression_problems`, plus, where the backbone can count
        tokens from its tokenizer alone, instructions over the text encoder's limit. Cheap enough
        for every sample of a dataset (no encoder, no forward)."""
        problems = super().expression_problems(expressions)
        usable: dict[str, str] = {}
        for expression in dict.fromkeys(expressions):
            if expression in problems:
                continue
            try:
                usable[expression] = self.instruction_for(normalize_expression(expression), config)
            except (ExpressionError, ConfigError) as error:
                problems[expression] = str(error)
        counted = self.backbone.text_token_counts(list(usable.values())) if usable else None
        if counted is not None:
            counts, limit = counted
            for expression, count in zip(usable, counts):
                if count > limit:
                    problems[expression] = (
                        f"Expression too long: its instruction needs {count} text tokens, "
                        f"{self.backbone.name} reads at most {limit}."
                    )
        return problems

    def resolved(self, config: MethodConfig | None = None) -> MethodConfig:
        """``config`` (default: this method's) checked against the backbone, defaults filled in."""
        return (config or self.config).resolved(self.backbone)

    # -- prediction -------------------------------------------------------------------------------
    def predict(self, expressions: Sequence[str], config: MethodConfig | None = None) -> list[SegmentationResult]:
        """One result per expression for the current image (see :meth:`set_image`)."""
        return self.predict_sweep(expressions, [config or self.config])[0]

    def predict_sweep(
        self, expressions: Sequence[str], configs: Sequence[MethodConfig]
    ) -> list[list[SegmentationResult]]:
        """Results for every config (outer list) and expression (inner list).

        Configs that differ only in what is computed from the probes (mode, blocks summed, feature
        site/block, tau, similarity, thresholds) share one probed forward per batch, so an ablation
        sweep costs one forward, not one per setting.
        """
        self._require_image()
        expressions = [normalize_expression(e) for e in expressions]
        if not expressions:
            raise ExpressionError("No expressions given.")
        if not configs:
            raise ConfigError("No method configs given.")
        configs = [self.resolved(c) for c in configs]
        results: list[list[SegmentationResult]] = [[] for _ in configs]
        groups: dict[tuple, list[int]] = {}
        for index, config in enumerate(configs):
            groups.setdefault(config.forward_key(), []).append(index)
        for indices in groups.values():
            shared = [configs[i] for i in indices]
            for start in range(0, len(expressions), self.batch_size):
                probe = self.probe(expressions[start : start + self.batch_size], shared)
                for i, config in zip(indices, shared):
                    results[i].extend(self.results(probe, config))
        return results

    def probe(
        self,
        expressions: Sequence[str],
        configs: Sequence[MethodConfig] | None = None,
        *,
        attention: bool = True,
        features: Mapping[str, Iterable[int]] | None = None,
        reuse_text: Probe | None = None,
    ) -> Probe:
        """One probed forward of the current image with ``expressions`` (one batch).

        Records what ``configs`` (default: this method's; they must share a ``forward_key``) need:
        CAM/RAM terms at the union of their attention blocks (none with ``attention=False``) and
        clean-token features where a config's mode is ``full``, plus ``features`` (site → blocks).
        ``reuse_text`` skips text encoding by taking the text of an earlier probe of the same
        expressions (e.g. the same batch at another timestep).
        """
        image = self._require_image()
        backbone = self.backbone
        configs = [self.resolved(c) for c in (configs or [self.config])]
        head = configs[0]
        if any(c.forward_key() != head.forward_key() for c in configs):
            raise ConfigError("configs probed together must share a forward_key (prompt tokens, template, seed, timestep).")
        expressions = [normalize_expression(e) for e in expressions]
        wanted: dict[str, set[int]] = {}
        for config in configs:
            if config.mode == "full":
                wanted.setdefault(config.feature_site, set()).add(config.feature_block)
        for site, blocks in (features or {}).items():
            if site not in FEATURE_SITES:
                raise ConfigError(f"feature site must be one of {', '.join(FEATURE_SITES)}, got {site!r}.")
            chosen = {int(b) for b in blocks}
            bad = sorted(b for b in chosen if not 0 <= b < backbone.num_blocks)
            if bad:
                raise ConfigError(f"Blocks {bad} do not exist: {backbone.name} has blocks 0-{backbone.num_blocks - 1}.")
            wanted.setdefault(site, set()).update(chosen)
        device = backbone.device
        with memory_guard(device), torch.inference_mode():
            start = time.perf_counter()
            if reuse_text is not None:
                if reuse_text.expressions != expressions:
                    raise ConfigError("reuse_text belongs to other expressions.")
                text, token_sets = reuse_text.text, reuse_text.token_sets
            else:
                instructions = [self.instruction_for(e, head) for e in expressions]
                text = self.text_cache.encode(backbone, expressions, instructions, image=image)
                token_sets = [self._prompt_indices(p, head.prompt_tokens) for p in text.prompts]
            text_seconds = _elapsed(start, device)
            prompt_mask = torch.zeros(len(expressions), text.text_len)
            for row, indices in enumerate(token_sets):
                prompt_mask[row, indices] = 1.0
            layout = backbone.layout_for(image, text)
            if self.layout_override is not None:
                layout = self.layout_override(layout)
            blocks = frozenset().union(*(backbone.resolve_blocks(c.attention_blocks) for c in configs)) if attention else frozenset()
            plan = ProbePlan(
                layout=layout,
                prompt_mask=prompt_mask,
                attention_blocks=blocks,
                features={site: frozenset(b) for site, b in wanted.items()},
            )
            start = time.perf_counter()
            recorder = backbone.probe_forward(
                image, text, plan, seed=head.seed, step_index=head.timestep_index, num_steps=head.num_inference_steps
            )
            forward_seconds = _elapsed(start, device)
        timings = {"text_encode_s": text_seconds, "transformer_s": forward_seconds}
        return Probe(expressions, text, token_sets, plan, recorder, timings)

    def results(self, probe: Probe, config: MethodConfig | None = None) -> list[SegmentationResult]:
        """The method's results for one probed batch under ``config`` (whose blocks and features
        the probe recorded)."""
        config = self.resolved(config)
        image = self._require_image()
        backbone, device = self.backbone, self.backbone.device
        with memory_guard(device), torch.inference_mode():
            start = time.perf_counter()
            ordered = sorted(backbone.resolve_blocks(config.attention_blocks))
            maps = ground(
                probe.recorder.stacked("cam", ordered),
                probe.recorder.stacked("ram", ordered),
                probe.recorder.features.get((config.feature_site, config.feature_block)),
                image.geometry.grid,
                config,
            )
            masks = masks_at_input(maps, image.geometry, config).cpu().numpy()
            cam = image.geometry.to_input(maps.cam).cpu().numpy()
            ram = image.geometry.to_input(maps.ram).cpu().numpy()
            cam_tokens, ram_tokens = maps.cam.cpu().numpy(), maps.ram.cpu().numpy()
            method_seconds = _elapsed(start, device)
        timings = {
            "image_encode_s": self.image_seconds,
            **probe.timings,
            "method_s": method_seconds,
            "batch_size": float(len(probe.expressions)),
        }
        prompts = probe.text.prompts
        switched = backbone.switch_settings()
        results = [
            SegmentationResult(
                expression=expression,
                mask=masks[i],
                method=self.name,
                instruction=prompts[i].instruction,
                maps={"cam": cam[i], "ram": ram[i]},
                token_maps={"cam": cam_tokens[i], "ram": ram_tokens[i]},
                point=_argmax_xy(ram[i]),
                prompt_token_indices=probe.token_sets[i],
                prompt_tokens=prompts[i].token_strings(probe.token_sets[i]),
                timings=dict(timings),
                model=backbone.name,
                config={**config.to_dict(), **self._refiner_record(expression), **switched},
            )
            for i, expression in enumerate(probe.expressions)
        ]
        if config.refine == "sam":
            if self.sam is None:
                raise ConfigError("refine='sam' needs a SAM component: load with components={'sam': ...} or set method.sam.")
            from .sam_refine import refine_result

            for result in results:
                refine_result(self.sam, result)
        return results

    # -- internals --------------------------------------------------------------------------------
    def _require_image(self) -> PreparedImage:
        if self.image is None:
            raise ConfigError("No image set: call set_image(image) first, or use segment(image, expressions).")
        return self.image

    def _prompt_indices(self, prompt: PromptTokens, token_set: str) -> list[int]:
        if self.prompt_indices is not None:
            return self.prompt_indices(prompt, token_set)
        return prompt.indices(token_set)


def _argmax_xy(values: np.ndarray) -> tuple[int, int]:
    """(x, y) of the first maximum of an (H, W) map."""
    row, col = np.unravel_index(int(np.argmax(values)), values.shape)
    return int(col), int(row)


def _elapsed(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
