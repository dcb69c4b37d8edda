"""Ref-Diff (Ni et al., "Ref-Diff: Zero-shot Referring Image Segmentation with Generative Models",
arXiv:2308.16777) behind editseg's Method interface.

Generative process (§3.2): the image, padded to a black square and resized to 1024 px, is noised
to step ``t`` of Stable Diffusion 1.5's DDIM schedule and denoised for ``t`` steps with the
expression as prompt; the cross-attention of the root/subject token, averaged over heads (eq. 4),
layers and steps, is min-max normalised and resized to the image (eq. 5): the map ``c``.

Proposals (§3.4): SAM's automatic masks, or the weight-free filter ``c >= mu`` (eq. 8).
Generative matching: eq. 9. Discriminative process (§3.3): the image weighted by a positional
bias ``P`` for left/right/top/bottom clues (eq. 6), CLIP embeddings of each proposal by masked
attention and by masked crop (eq. 7), scored against the mean of the expression's and its subject
word's CLIP text embeddings (eq. 10). Final: ``alpha s^G + (1 - alpha) s^D`` (eq. 1), argmax (eq. 2).
Every ambiguity is a :class:`RefDiffConfig` switch (see that class and the README).
"""

from __future__ import annotations

import time
import warnings
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ..backbones.sd15 import TINY_SD15, StableDiffusion15, chars_to_tokens, map_to_input, token_ids
from ..components.clip import ClipComponent
from ..components.sam import SamComponent
from ..components.tiny import TINY_CLIP, TINY_SAM
from ..errors import ConfigError, ExpressionError
from ..probing.cross_attention import CrossAttentionRecorder
from ..results import SegmentationResult
from . import ref_diff_scores as eq
from .ref_diff_config import RefDiffConfig
from .base import Method, memory_guard
from .ref_diff_text import direction_clue, root_word

DEFAULT_COMPONENTS = {"unet": "stable-diffusion-v1-5/stable-diffusion-v1-5", "sam": "facebook/sam-vit-huge",
                      "clip": "openai/clip-vit-base-patch16"}
TINY_COMPONENTS = {"unet": TINY_SD15, "sam": TINY_SAM, "clip": TINY_CLIP}


class RefDiff(Method):
    """Ref-Diff: SD 1.5 cross-attention + SAM proposals + CLIP region scores."""

    name: ClassVar[str] = "ref-diff"
    requires: ClassVar[tuple[str, ...]] = ("unet", "sam", "clip")

    def __init__(
        self,
        unet: StableDiffusion15,
        sam: SamComponent | None = None,
        clip: ClipComponent | None = None,
        config: RefDiffConfig | None = None,
        batch_size: int = 4,
    ):
        self.unet, self.sam, self.clip = unet, sam, clip
        self.config = config or RefDiffConfig()
        self.batch_size = batch_size
        self._check_components(self.config)
        self._image: dict[str, Any] | None = None

    def _check_components(self, config: RefDiffConfig) -> None:
        if config.uses_sam and self.sam is None:
            raise ConfigError("This Ref-Diff setting uses SAM proposals but no SAM component was loaded.")
        if config.uses_clip and self.clip is None:
            raise ConfigError("This Ref-Diff setting uses CLIP scores (alpha < 1) but no CLIP component was loaded.")

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        device=None,
        dtype: torch.dtype | None = None,
        offload: str = "none",
        components: Mapping[str, str] | None = None,
        config: RefDiffConfig | None = None,
        **options,
    ) -> "RefDiff":
        """Load SD 1.5 (``model``: hub id, folder, ``sd15`` or ``tiny-random-sd15``) and the SAM / CLIP that
        ``config`` needs (``components={"sam": ..., "clip": ...}``; defaults: SAM ViT-H, CLIP ViT-B/16 as the
        paper; tiny random ones with ``tiny-random-sd15``).

        ``options``: ``batch_size``, ``preset`` (see :meth:`RefDiffConfig.preset`) and any
        :class:`RefDiffConfig` field, applied over ``config``."""
        if offload != "none":
            raise ConfigError("Ref-Diff loads SD 1.5, SAM and CLIP whole; offload is not supported (they fit in ~6 GB).")
        config = _config_from_options(config, options)
        unknown = set(options) - {"batch_size"}
        if unknown:
            raise ConfigError(f"Unknown Ref-Diff option(s): {', '.join(sorted(unknown))}.")
        components = dict(components or {})
        extra = sorted(set(components) - set(cls.requires))
        if extra:
            raise ConfigError(f"{cls.name} uses components {', '.join(cls.requires)} only; got {', '.join(extra)}.")
        model = components.get("unet", model) or DEFAULT_COMPONENTS["unet"]
        defaults = TINY_COMPONENTS if model == TINY_SD15 else DEFAULT_COMPONENTS
        chosen = {**defaults, **components}
        unet = StableDiffusion15.from_pretrained(model, device=device, dtype=dtype)
        sam = SamComponent.from_pretrained(chosen["sam"], device=unet.device) if config.uses_sam else None
        clip = ClipComponent.from_pretrained(chosen["clip"], device=unet.device) if config.uses_clip else None
        method = cls(unet, sam, clip, config=config, **options)
        if unet.is_random:
            warnings.warn(f"RANDOM WEIGHTS: {model!r} is randomly initialised; Ref-Diff's output is meaningless.", stacklevel=2)
        return method

    # -- image -----------------------------------------------------------------------------------
    def set_image(self, image: Image.Image) -> None:
        """Encode an RGB image: SD latents (seeded posterior sample) and, with SAM proposals, SAM's masks."""
        start = time.perf_counter()
        rgb = image.convert("RGB")
        side = self.config.image_side or self.unet.image_side
        square, frame = self.unet.prepare_image(rgb, side)
        generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        with memory_guard(self.unet.device):
            latents = self.unet.encode_image(square, generator)
            state = {"rgb": np.asarray(rgb), "frame": frame, "latents": latents, "generator_state": generator.get_state()}
            if self.config.uses_sam:
                self.sam.set_image(state["rgb"])
                state["sam"] = self._sam_proposals()
        state["seconds"] = time.perf_counter() - start
        self._image = state

    @property
    def model_name(self) -> str:
        """The generative model's name (SAM and CLIP are in the result's config)."""
        return self.unet.name

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the current image."""
        return None if self._image is None else (self._image["frame"].width, self._image["frame"].height)

    def _sam_proposals(self) -> list[dict]:
        c = self.config
        found = self.sam.proposals(
            points_per_side=c.sam_points_per_side, pred_iou_thresh=c.sam_pred_iou_thresh,
            stability_score_thresh=c.sam_stability_thresh,
        )
        found = [p for p in found if p["area"] > c.sam_min_area] if c.sam_min_area else found
        if c.sam_top_k is not None:
            found = sorted(found, key=lambda p: -p["area"])[: c.sam_top_k]
        return found

    # -- expressions ------------------------------------------------------------------------------
    def predict(self, expressions: Sequence[str] | str) -> list[SegmentationResult]:
        """One result per expression for the current image."""
        if self._image is None:
            raise ConfigError("No image set: call set_image(image) first.")
        if isinstance(expressions, str):
            expressions = [expressions]
        expressions = [e.strip() for e in expressions]
        if not expressions or any(not e for e in expressions):
            raise ExpressionError("Ref-Diff needs non-empty expressions.")
        results = []
        for start in range(0, len(expressions), self.batch_size):
            with memory_guard(self.unet.device):
                results.extend(self._predict_batch(expressions[start : start + self.batch_size]))
        return results

    def token_selection(self, expression: str) -> tuple[list[int], list[str], str]:
        """SD token indices whose maps are averaged, their tokens, and the root word."""
        root = root_word(expression, self.config.parser)
        ids, offsets = token_ids(self.unet.tokenizer, expression)
        words = chars_to_tokens(offsets, *root.span)
        if self.config.token == "all":
            chosen = chars_to_tokens(offsets, 0, len(expression))
        elif self.config.token == "root-mean":
            chosen = words
        else:
            chosen = words[-1:]
        if not chosen:
            raise ExpressionError(f"No token of {expression!r} survives the tokenizer's {len(ids)}-token limit.")
        return chosen, self.unet.tokenizer.convert_ids_to_tokens([ids[i] for i in chosen]), root.text

    def generative_maps(self, expressions: Sequence[str]) -> tuple[torch.Tensor, list[tuple[list[int], list[str], str]]]:
        """(B, rows, cols) eq. 4 maps of the chosen tokens (averaged over heads, layers, steps, levels)."""
        c, state = self.config, self._image
        selections = [self.token_selection(e) for e in expressions]
        width = max(len(s[0]) for s in selections)
        index = torch.tensor([s[0] + [s[0][-1]] * (width - len(s[0])) for s in selections])
        weights = torch.tensor([[1.0] * len(s[0]) + [0.0] * (width - len(s[0])) for s in selections])
        guided = c.guidance_scale > 1.0
        generator = torch.Generator(device="cpu")
        generator.set_state(state["generator_state"])
        prompt, negative = self.unet.encode_prompts(list(expressions), guided)
        recorder = CrossAttentionRecorder(
            token_index=torch.cat([index, index]) if guided else index,
            latent_size=tuple(state["latents"].shape[-2:]),
            levels=frozenset(c.attention_levels),
            mode="logits" if c.attention_mode == "logits-cfg" else "softmax",
            normalize_each=c.normalize_each_map,
            guidance=c.guidance_scale if guided else None,
        )
        self.unet.probe(
            state["latents"], prompt, negative if guided else None, recorder,
            steps=c.steps, num_inference_steps=c.num_inference_steps, guidance_scale=c.guidance_scale, generator=generator,
        )
        grid = None
        total = 0
        for level in sorted(c.attention_levels):
            maps = recorder.mean(level)  # (B, T, r, c)
            maps = (maps * weights[..., None, None]).sum(1) / weights.sum(1)[:, None, None]
            if grid is None:
                grid = maps.shape[-2:]
            else:
                maps = torch.nn.functional.interpolate(maps[:, None], size=grid, mode="bilinear", align_corners=False)[:, 0]
            total = total + maps
        return total / len(c.attention_levels), selections

    def _predict_batch(self, expressions: Sequence[str]) -> list[SegmentationResult]:
        c, state = self.config, self._image
        start = time.perf_counter()
        raw, selections = self.generative_maps(expressions)
        probe_seconds = time.perf_counter() - start
        results = []
        for expression, grid_map, (indices, tokens, root) in zip(expressions, raw, selections):
            t0 = time.perf_counter()
            token_map = eq.normalize_attention(grid_map.float(), c.epsilon)
            cmap = map_to_input(token_map, state["frame"]).cpu().numpy().astype(np.float32)
            masks, sources, extra = self._proposals(cmap)
            s_g = eq.generative_scores(cmap, masks)
            s_d = self._discriminative(expression, root, masks) if c.uses_clip else np.zeros(len(masks))
            scores = eq.combine(s_g, s_d, c.alpha)
            best = eq.select(scores)
            mask = masks[best]
            proposals = [
                {"mask": m, "score": float(s), "generative": float(g), "discriminative": float(d), "source": src, **x}
                for m, s, g, d, src, x in zip(masks, scores, s_g, s_d, sources, extra)
            ]
            results.append(SegmentationResult(
                expression=expression, mask=mask, method=self.name, instruction=expression,
                maps={"generative": cmap, "proposal_scores": eq.proposal_score_map(masks, scores),
                      **({"discriminative": eq.proposal_score_map(masks, s_d)} if c.uses_clip else {})}, token_maps={"generative": token_map.cpu().numpy().astype(np.float32)},
                box=_box(mask), proposals=proposals, prompt_token_indices=indices, prompt_tokens=tokens,
                timings={"image": state["seconds"], "probe_batch": probe_seconds, "scoring": time.perf_counter() - t0},
                model=self.unet.name, config={**c.to_dict(), "root_word": root, "direction": self._direction(expression)},
            ))
        return results

    def _proposals(self, cmap: np.ndarray) -> tuple[np.ndarray, list[str], list[dict]]:
        if self.config.uses_sam and self._image["sam"]:
            found = self._image["sam"]
            extra = [{"sam_score": p["score"], "stability": p["stability"]} for p in found]
            return np.stack([p["mask"] for p in found]), ["sam"] * len(found), extra
        masks = eq.weight_free_proposals(cmap, self.config.thresholds)
        keep = masks.reshape(len(masks), -1).any(1)
        masks = masks[keep] if keep.any() else np.ones((1, *cmap.shape), dtype=bool)
        thresholds = [t for t, k in zip(self.config.thresholds, keep) if k] or [0.0]
        # With SAM selected but no SAM mask passing its filters, the weight-free proposals stand in.
        return masks, ["generative"] * len(masks), [{"threshold": t} for t in thresholds]

    def _direction(self, expression: str) -> str | None:
        return direction_clue(expression, self.config.directions) if self.config.positional_bias else None

    def _discriminative(self, expression: str, root: str, masks: np.ndarray) -> np.ndarray:
        c, rgb = self.config, self._image["rgb"]
        bias = eq.positional_bias(*rgb.shape[:2], self._direction(expression), c.positional_extent)
        biased = eq.apply_bias(rgb, bias)
        attention_image = biased if c.bias_target in ("masked-attention", "both") else rgb
        crop_image = biased if c.bias_target in ("crop", "both") else rgb
        f_masked = self.clip.encode_masked_attention(attention_image, masks, layer=c.clip_masked_layer)
        f_crop = self.clip.encode_crops(crop_image, masks, layer=c.clip_crop_layer)
        regions = eq.region_embedding(f_masked, f_crop, c.beta)
        text = self.clip.encode_text([expression, root])
        return eq.discriminative_scores(regions, eq.text_representation(text[0], text[1]))


def _config_from_options(config: RefDiffConfig | None, options: dict) -> RefDiffConfig:
    """``config`` (or a preset, or the defaults) with the RefDiffConfig fields in ``options`` applied;
    those are removed from ``options`` (the rest go to the constructor)."""
    fields = set(RefDiffConfig.__dataclass_fields__)
    changes = {k: options.pop(k) for k in list(options) if k in fields}
    preset = options.pop("preset", None)
    if preset is not None:
        if config is not None:
            raise ConfigError("Give either a Ref-Diff config or a preset, not both.")
        return RefDiffConfig.preset(preset, **changes)
    return (config or RefDiffConfig()).replace(**changes)


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


__all__ = ["RefDiff", "RefDiffConfig"]
