"""The Python API: a small predictor over a big model, in the spirit of ``SamPredictor``.

    seg = Segmenter.from_pretrained("flux2-klein-4b")
    result = seg.segment("photo.jpg", "the zebra on the left")
    result.mask          # bool (H, W) at the input resolution

``set_image`` encodes an image once; ``predict`` then segments any number of expressions for it,
``batch_size`` at a time, each batch one transformer forward.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .backbones import TOY_SHAPES, Backbone, PreparedImage, load_backbone
from .config import MethodConfig
from .errors import ConfigError, ExpressionError, OutOfMemoryError, out_of_memory_message
from .images import DEFAULT_MAX_PIXELS, ImageInput, load_image
from .methods.early_grounding import ground, masks_at_input
from .probing.recorder import ProbePlan
from .results import SegmentationResult
from .text import make_instruction, normalize_expression

DEFAULT_MODEL = TOY_SHAPES  # built in: the tiny editor trained on the synthetic shapes world
RANDOM_WEIGHTS_NOTICE = (
    "RANDOM WEIGHTS: model {name!r} is randomly initialised, so its output is meaningless. "
    "It exists to try editseg offline; use a real model (e.g. --model flux2-klein-4b) for real masks."
)
TOY_SHAPES_NOTICE = (
    "editseg: toy-shapes is a tiny editor trained on synthetic 64x64 shapes scenes (see `editseg demo`); "
    "for photos use a real model, e.g. --model flux2-klein-4b."
)


class Segmenter:
    """Segments what expressions refer to in an image, from one probed forward of an editing model."""

    def __init__(
        self,
        backbone: Backbone,
        config: MethodConfig | None = None,
        batch_size: int = 8,
        instruction_refiner: Callable[[str], str] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_side: int | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        self.backbone = backbone
        self.config = config or MethodConfig()
        self.batch_size = batch_size
        self.instruction_refiner = instruction_refiner
        self.max_pixels = max_pixels
        self.max_side = max_side
        self._image: PreparedImage | None = None
        self._image_seconds = 0.0
        if backbone.is_random:
            warnings.warn(RANDOM_WEIGHTS_NOTICE.format(name=backbone.name), stacklevel=2)

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        offload: str = "none",
        config: MethodConfig | None = None,
        **kwargs,
    ) -> "Segmenter":
        """Load ``model`` (name, hub id or local folder); see :func:`editseg.backbones.load_backbone`."""
        return cls(load_backbone(model, device=device, dtype=dtype, offload=offload), config=config, **kwargs)

    # -- image -----------------------------------------------------------------------------------
    def set_image(self, image: ImageInput) -> None:
        """Load, pre-process and encode ``image``; later :meth:`predict` calls reuse it."""
        start = time.perf_counter()
        rgb = load_image(image, max_pixels=self.max_pixels)
        with self._memory_guard(), torch.inference_mode():
            self._image = self.backbone.prepare_image(rgb, max_side=self.max_side)
        self._image_seconds = _elapsed(start, self.backbone.device)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the current image."""
        return None if self._image is None else self._image.geometry.input_size

    # -- expressions ------------------------------------------------------------------------------
    def instruction_for(self, expression: str, config: MethodConfig | None = None) -> str:
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

    def predict(
        self, expressions: str | Sequence[str], config: MethodConfig | None = None
    ) -> list[SegmentationResult]:
        """Segment each expression in the current image (see :meth:`set_image`)."""
        return self.predict_sweep(expressions, [config or self.config])[0]

    def predict_sweep(
        self, expressions: str | Sequence[str], configs: Sequence[MethodConfig]
    ) -> list[list[SegmentationResult]]:
        """Results for every config (outer list) and expression (inner list).

        Configs that differ only in what is computed from the probes (mode, blocks summed,
        feature site/block, tau, similarity, thresholds) share one transformer forward per batch,
        so an ablation sweep costs one forward, not one per setting.
        """
        if self._image is None:
            raise ConfigError("No image set: call set_image(image) first, or use segment(image, expressions).")
        if isinstance(expressions, str):
            expressions = [expressions]
        expressions = [normalize_expression(e) for e in expressions]
        if not expressions:
            raise ExpressionError("No expressions given.")
        if not configs:
            raise ConfigError("No method configs given.")
        for config in configs:
            self._check_config(config)
        results: list[list[SegmentationResult]] = [[] for _ in configs]
        groups: dict[tuple, list[int]] = {}
        for index, config in enumerate(configs):
            groups.setdefault(config.forward_key(), []).append(index)
        for indices in groups.values():
            for start in range(0, len(expressions), self.batch_size):
                batch = self._predict_batch(expressions[start : start + self.batch_size], [configs[i] for i in indices])
                for i, batch_results in zip(indices, batch):
                    results[i].extend(batch_results)
        return results

    def segment(
        self, image: ImageInput, expressions: str | Sequence[str], config: MethodConfig | None = None
    ) -> SegmentationResult | list[SegmentationResult]:
        """``set_image`` + ``predict``; a single expression string gives a single result."""
        self.set_image(image)
        results = self.predict(expressions, config)
        return results[0] if isinstance(expressions, str) else results

    # -- internals -------------------------------------------------------------------------------
    def _check_config(self, config: MethodConfig) -> None:
        self.backbone.resolve_blocks(config.attention_blocks)
        block = self._feature_block(config)
        if not 0 <= block < self.backbone.num_blocks:
            raise ConfigError(
                f"feature_block {block} does not exist: {self.backbone.name} has blocks 0-{self.backbone.num_blocks - 1}."
            )

    def _feature_block(self, config: MethodConfig) -> int:
        return self.backbone.default_feature_block if config.feature_block is None else config.feature_block

    def _predict_batch(self, expressions: list[str], configs: list[MethodConfig]) -> list[list[SegmentationResult]]:
        """One probed forward for ``expressions``, evaluated under each of ``configs`` (same forward_key)."""
        backbone, image = self.backbone, self._image
        device = backbone.device
        head = configs[0]
        instructions = [self.instruction_for(e, head) for e in expressions]
        with self._memory_guard(), torch.inference_mode():
            start = time.perf_counter()
            text = backbone.encode_text(expressions, instructions, image=image)
            text_seconds = _elapsed(start, device)

            token_sets = [p.indices(head.prompt_tokens) for p in text.prompts]
            prompt_mask = torch.zeros(len(expressions), text.text_len)
            for row, indices in enumerate(token_sets):
                prompt_mask[row, indices] = 1.0
            block_sets = [backbone.resolve_blocks(c.attention_blocks) for c in configs]
            features: dict[str, set[int]] = {}
            for config in configs:
                if config.mode == "full":
                    features.setdefault(config.feature_site, set()).add(self._feature_block(config))
            plan = ProbePlan(
                layout=backbone.layout_for(image, text),
                prompt_mask=prompt_mask,
                attention_blocks=frozenset().union(*block_sets),
                features={site: frozenset(blocks) for site, blocks in features.items()},
            )
            start = time.perf_counter()
            recorder = backbone.probe_forward(
                image, text, plan, seed=head.seed, step_index=head.timestep_index, num_steps=head.num_inference_steps
            )
            forward_seconds = _elapsed(start, device)
            outputs = []
            for config, blocks in zip(configs, block_sets):
                start = time.perf_counter()
                feature_block = self._feature_block(config)
                ordered = sorted(blocks)
                maps = ground(
                    recorder.stacked("cam", ordered),
                    recorder.stacked("ram", ordered),
                    recorder.features.get((config.feature_site, feature_block)),
                    image.geometry.grid,
                    config,
                )
                masks = masks_at_input(maps, image.geometry, config).cpu().numpy()
                cam = image.geometry.to_input(maps.cam).cpu().numpy()
                ram = image.geometry.to_input(maps.ram).cpu().numpy()
                timings = {
                    "image_encode_s": self._image_seconds,
                    "text_encode_s": text_seconds,
                    "transformer_s": forward_seconds,
                    "method_s": _elapsed(start, device),
                    "batch_size": float(len(expressions)),
                }
                outputs.append([
                    SegmentationResult(
                        expression=expression,
                        instruction=text.prompts[i].instruction,
                        mask=masks[i],
                        cam=cam[i],
                        ram=ram[i],
                        cam_tokens=maps.cam[i].cpu().numpy(),
                        ram_tokens=maps.ram[i].cpu().numpy(),
                        prompt_token_indices=token_sets[i],
                        prompt_tokens=text.prompts[i].token_strings(token_sets[i]),
                        timings=dict(timings),
                        model=backbone.name,
                        config={**config.to_dict(), "feature_block": feature_block},
                    )
                    for i, expression in enumerate(expressions)
                ])
        return outputs

    @contextmanager
    def _memory_guard(self) -> Iterator[None]:
        try:
            yield
        except torch.cuda.OutOfMemoryError:
            raise OutOfMemoryError(out_of_memory_message(str(self.backbone.device))) from None
        except RuntimeError as error:
            if "can't allocate memory" in str(error) or "not enough memory" in str(error):
                raise OutOfMemoryError(out_of_memory_message(str(self.backbone.device))) from None
            raise


def _elapsed(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
