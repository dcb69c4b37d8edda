"""Scoring a model on the shapes benchmark through the real API (``editseg.Segmenter``)."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..config import MethodConfig
from ..data.shapes import ShapesSample, shapes_benchmark
from ..evaluation.metrics import MetricAccumulator, argmax_in_mask
from ..probing.recorder import TokenLayout
from ..text import PromptTokens


@dataclass
class ToyScores:
    """Metrics of one method configuration on a sample set (rates are fractions)."""

    label: str
    n: int
    mIoU: float
    oIoU: float
    ram_point_accuracy: float
    cam_point_accuracy: float
    chance: float  # mean GT mask area fraction: what a random point scores
    seconds: float
    extra: dict = field(default_factory=dict)

    def row(self) -> str:
        return (
            f"| {self.label} | {self.mIoU:.3f} | {self.oIoU:.3f} | {self.ram_point_accuracy:.3f} | "
            f"{self.cam_point_accuracy:.3f} |"
        )


TABLE_HEADER = "| configuration | mIoU | oIoU | RAM PA | CAM PA |\n|---|---|---|---|---|"


def load_segmenter(model: str = "toy-shapes", config: MethodConfig | None = None):
    """A CPU float32 ``Segmenter`` for ``model`` (registry name or pipeline folder)."""
    from ..api import Segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Segmenter.from_pretrained(model, device="cpu", config=config)


def score(
    segmenter,
    samples: Sequence[ShapesSample],
    config: MethodConfig,
    label: str = "",
) -> ToyScores:
    """Segment every sample's expression with ``config`` and score mask, RAM and CAM."""
    start = time.perf_counter()
    accumulator = MetricAccumulator()
    ram_hits, cam_hits, ious = [], [], []
    for sample in samples:
        segmenter.set_image(sample.image)
        result = segmenter.predict(sample.expression, config)[0]
        record = accumulator.add_masks(result.mask, sample.mask, sample_id=sample.id)
        ious.append(record.iou)
        ram_hits.append(argmax_in_mask(result.ram_tokens, sample.mask))
        cam_hits.append(argmax_in_mask(result.cam_tokens, sample.mask))
    summary = accumulator.summary()
    by_kind = {}
    for kind in sorted({s.kind for s in samples}):
        rows = [i for i, s in enumerate(samples) if s.kind == kind]
        by_kind[kind] = {"n": len(rows), "mIoU": float(np.mean([ious[i] for i in rows])),
                         "ram_point_accuracy": float(np.mean([ram_hits[i] for i in rows]))}
    return ToyScores(
        label=label or config.mode,
        n=len(samples),
        mIoU=float(summary["mIoU"]),
        oIoU=float(summary["oIoU"]),
        ram_point_accuracy=float(np.mean(ram_hits)),
        cam_point_accuracy=float(np.mean(cam_hits)),
        chance=float(np.mean([s.mask.mean() for s in samples])),
        seconds=time.perf_counter() - start,
        extra={**{k: float(v) for k, v in summary.items() if k.startswith("Pr@")}, "by_kind": by_kind},
    )


def ablation_configs(num_blocks: int, default_block: int) -> list[tuple[str, MethodConfig]]:
    """The ablation table's rows: mode, tau, prompt token set, feature block."""
    base = MethodConfig()
    rows = [
        (f"full (tau 0.8, block {default_block}, expression tokens)", base),
        ("RAM only (map > 0.5)", base.replace(mode="ram")),
        ("CAM only (map > 0.5)", base.replace(mode="cam")),
        ("full, tau 0.5", base.replace(tau=0.5)),
        ("full, attention blocks = double-stream only", base.replace(attention_blocks="double")),
        ("full, attention blocks = single-stream only", base.replace(attention_blocks="single")),
        ("full, prompt tokens = expression-content (no stop words)", base.replace(prompt_tokens="expression-content")),
        ("full, prompt tokens = instruction (adds 'remove')", base.replace(prompt_tokens="instruction")),
        ("full, prompt tokens = all (adds the chat template)", base.replace(prompt_tokens="all")),
    ]
    rows += [(f"full, feature block {b}", base.replace(feature_block=b)) for b in range(num_blocks) if b != default_block]
    return rows


def run_ablation(model: str, n: int, configs: Iterable[tuple[str, MethodConfig]] | None = None) -> list[ToyScores]:
    """Score every ablation row on the first ``n`` benchmark samples."""
    segmenter = load_segmenter(model)
    backbone = segmenter.backbone
    samples = shapes_benchmark(n)
    rows = configs or ablation_configs(backbone.num_blocks, backbone.default_feature_block)
    return [score(segmenter, samples, config, label) for label, config in rows]


def _variant(segmenter, **hooks):
    """A segmenter sharing ``segmenter``'s loaded backbone and settings, with diagnostic hooks
    (``layout_override``, ``prompt_indices``) added to those it already has."""
    from ..api import Segmenter
    from ..methods.early_grounding import EarlyGroundingMethod

    method = segmenter.method
    kept = {"layout_override": method.layout_override, "prompt_indices": method.prompt_indices}
    broken = EarlyGroundingMethod(
        method.backbone, method.config, method.batch_size, method.instruction_refiner, method.max_side, **{**kept, **hooks}
    )
    return Segmenter(method=broken, max_pixels=segmenter.max_pixels)


def padding_as_prompt(segmenter):
    """Broken variant: eqs. 3-4 summed over padding positions instead of the prompt's tokens."""
    text_length = segmenter.backbone.max_sequence_length

    def padding_indices(prompt: PromptTokens, token_set: str) -> list[int]:
        count = len(prompt.indices(token_set))
        padding = list(range(prompt.num_real_tokens, text_length))
        if not padding:
            raise ValueError("this instruction leaves no padding tokens")
        return padding[:count]

    return _variant(segmenter, prompt_indices=padding_indices)


class NoisyAsClean(TokenLayout):
    """A layout whose clean range is the noisy one (pure noise at step 1)."""

    @property
    def clean(self) -> slice:
        return self.noisy

    @property
    def clean_in_image_stream(self) -> slice:
        return slice(0, self.noisy_len)


def noisy_as_clean(segmenter):
    """Broken variant: the probes read the noisy tokens (pure noise at step 1) as the image."""

    def swapped(layout: TokenLayout) -> TokenLayout:
        return NoisyAsClean(layout.text_len, layout.noisy_len, layout.clean_len, layout.grid)

    return _variant(segmenter, layout_override=swapped)


def broken_variant_scores(segmenter, samples: Sequence[ShapesSample]) -> list[ToyScores]:
    """The full method, then the two deliberately broken token layouts (oracle: both must be worse)."""
    config = MethodConfig()
    return [
        score(segmenter, samples, config, "full method"),
        score(padding_as_prompt(segmenter), samples, config, "broken: padding tokens as the prompt"),
        score(noisy_as_clean(segmenter), samples, config, "broken: noisy tokens read as the clean ones"),
    ]


def markdown_table(rows: Sequence[ToyScores]) -> str:
    """The rows as a Markdown table (with the chance level of the point accuracy)."""
    lines = [TABLE_HEADER] + [r.row() for r in rows]
    if rows:
        lines.append(f"\nn = {rows[0].n} benchmark samples; point-accuracy chance level (mean mask area) = {rows[0].chance:.3f}.")
    return "\n".join(lines)


def edit_localisation(backbone, samples: Sequence[ShapesSample], seed: int = 0) -> dict[str, float]:
    """Does the model *edit* the right object? At the first step (the method's exact inputs), the
    predicted clean target is ``x0 = noise - v``; per token, ``|x0 - source|^2`` is how much the
    model changes it. Returns ``point_accuracy`` (the most-changed token lies inside the referred
    object) and ``object_accuracy`` (of the scene's objects, the referred one has the largest mean
    change). A check of what the model learned, independent of its attention."""
    import torch.nn.functional as F
    from PIL import Image

    points, objects = [], []
    for sample in samples:
        image = backbone.prepare_image(Image.fromarray(sample.image))
        text = backbone.encode_text([sample.expression], [sample.instruction])
        predicted = backbone.first_step_clean_estimate(image, text, seed)
        clean = image.tensors["latents"].to(predicted.device)
        change = (predicted - clean).pow(2).mean(-1)[0].view(*image.geometry.grid).float()
        points.append(argmax_in_mask(change.cpu().numpy(), sample.mask))
        pixels = F.interpolate(change[None, None], size=sample.mask.shape, mode="nearest")[0, 0].cpu().numpy()
        means = [pixels[m].mean() if m.any() else -np.inf for m in sample.object_masks]
        objects.append(int(np.argmax(means)) == sample.target_index)
    return {
        "point_accuracy": float(np.mean(points)),
        "object_accuracy": float(np.mean(objects)),
        "object_chance": float(np.mean([1 / len(s.objects) for s in samples])),
    }
