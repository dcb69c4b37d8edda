"""CLIP region scoring as a component, on transformers' ``CLIPModel`` / ``CLIPProcessor``.

Two ways to embed a region (mask proposal) of an image, as Ref-Diff's discriminative process does
(its eq. 7):

- :meth:`ClipComponent.encode_crops` -- ``f(x ⊙ M)``: the image with everything outside the mask
  set to black, cropped to the mask's box, padded to a square (black) and embedded by vanilla CLIP;
- :meth:`ClipComponent.encode_masked_attention` -- ``f_M(x)``: the whole image through CLIP's
  vision transformer with one extra class token per mask, whose attention to the patch tokens
  outside its mask is removed (weight 0) in every layer; patch tokens never attend to the extra
  tokens, so they are exactly those of the vanilla forward, and a full mask reproduces the
  vanilla class token. The token is read after ``layer`` (-2: the penultimate layer, as Ref-Diff),
  then CLIP's post-layernorm and projection are applied.

Embeddings are unit vectors; ``encode_text`` gives CLIP's projected text embeddings, unit length.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ConfigError
from .loading import PretrainedComponent
from .tiny import TINY_CLIP, build_tiny_clip

CLIP_ALIASES = {
    "clip": "openai/clip-vit-base-patch16",
    "clip-vit-base-patch16": "openai/clip-vit-base-patch16",
    "clip-vit-base-patch32": "openai/clip-vit-base-patch32",
    "clip-vit-large-patch14": "openai/clip-vit-large-patch14",
}
DEFAULT_CLIP = "openai/clip-vit-base-patch16"  # Ref-Diff: "CLIP of ViT-B/16"

__all__ = ["CLIP_ALIASES", "DEFAULT_CLIP", "ClipComponent", "crop_to_mask", "patch_coverage"]


def crop_to_mask(image: np.ndarray, mask: np.ndarray, background: int = 0) -> np.ndarray:
    """``image ⊙ mask`` (outside set to ``background``) cropped to the mask's box and padded
    (centred, ``background``) to a square. An empty mask gives the whole image."""
    if not mask.any():
        return image.copy()
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.where(mask[y0:y1, x0:x1, None], image[y0:y1, x0:x1], background).astype(np.uint8)
    h, w = crop.shape[:2]
    side = max(h, w)
    square = np.full((side, side, image.shape[2]), background, dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = crop
    return square


def patch_coverage(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(n, rows*cols) fraction of each patch that each (n, H, W) mask covers (area-weighted resize)."""
    return F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0].flatten(1)


class ClipComponent(PretrainedComponent):
    """CLIP image/text embeddings for scoring mask proposals against an expression."""

    kind = "clip"

    @classmethod
    def from_pretrained(
        cls, model: str = DEFAULT_CLIP, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> "ClipComponent":
        """Load CLIP weights (hub id, alias such as ``clip-vit-base-patch16``, local folder or ``tiny-random-clip``)."""
        return cls.load(
            model, device, dtype, label="CLIP model", aliases=CLIP_ALIASES,
            classes=("CLIPModel", "CLIPProcessor"), tiny=TINY_CLIP, build_tiny=build_tiny_clip,
        )  # fmt: skip

    @property
    def vision(self):
        return self.model.vision_model

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    # -- text ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, d) unit-length projected text embeddings (CLIP's tokenizer, truncated to its context)."""
        inputs = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        features = self.model.get_text_features(**inputs)
        features = getattr(features, "pooler_output", features)
        return F.normalize(features.float(), dim=-1)

    # -- images ----------------------------------------------------------------------------------
    def _pixels(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        pixels = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixels.to(device=self.device, dtype=self.dtype)

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.visual_projection(self.vision.post_layernorm(tokens)).float(), dim=-1)

    def _run_layers(self, hidden: torch.Tensor, layer: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        layers = self.vision.encoder.layers
        stop = len(layers) + layer + 1 if layer < 0 else layer + 1
        if not 1 <= stop <= len(layers):
            raise ConfigError(f"CLIP layer {layer} is outside its {len(layers)} layers.")
        for block in layers[:stop]:
            hidden = block(hidden, attention_mask)
        return hidden

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image | np.ndarray], layer: int = -1) -> torch.Tensor:
        """(n, d) unit embeddings of whole images (vanilla CLIP; ``layer`` -1 = CLIP's own image features)."""
        pixels = self._pixels(images)
        hidden = self.vision.pre_layrnorm(self.vision.embeddings(pixels))
        return self._project(self._run_layers(hidden, layer)[:, 0])

    @torch.no_grad()
    def encode_crops(
        self, image: np.ndarray, masks: np.ndarray, layer: int = -1, batch_size: int = 32, background: int = 0
    ) -> torch.Tensor:
        """``f(x ⊙ M_i)`` for each (n, H, W) mask: masked, box-cropped, square-padded regions; (n, d)."""
        crops = [crop_to_mask(image, m, background) for m in masks]
        out = [self.encode_images(crops[i : i + batch_size], layer) for i in range(0, len(crops), batch_size)]
        return torch.cat(out) if out else torch.zeros((0, self.model.config.projection_dim))

    def masked_attention_inputs(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pixels for :meth:`encode_masked_attention`: the shorter side resized to CLIP's input side
        (bicubic), the longer to the nearest multiple of the patch; and the patch grid (rows, cols)."""
        height, width = image.shape[:2]
        scale = self.image_size / min(height, width)
        patch = self.patch_size
        rows = max(1, round(height * scale / patch))
        cols = max(1, round(width * scale / patch))
        resized = Image.fromarray(image).resize((cols * patch, rows * patch), Image.BICUBIC)
        processor = self.processor.image_processor
        array = np.asarray(resized, dtype=np.float32) / 255.0
        array = (array - np.asarray(processor.image_mean)) / np.asarray(processor.image_std)
        pixels = torch.from_numpy(array.transpose(2, 0, 1)[None].astype(np.float32))
        return pixels.to(device=self.device, dtype=self.dtype), (rows, cols)

    @torch.no_grad()
    def encode_masked_attention(
        self, image: np.ndarray, masks: np.ndarray, layer: int = -2, min_coverage: float = 0.5
    ) -> torch.Tensor:
        """``f_M(x)`` for each (n, H, W) mask, all in one forward (see the module docstring); (n, d).

        A patch is inside a mask when the mask covers at least ``min_coverage`` of it; a mask
        covering no patch that much keeps its best-covered patch.
        """
        pixels, grid = self.masked_attention_inputs(image)
        n = len(masks)
        if n == 0:
            return torch.zeros((0, self.model.config.projection_dim))
        coverage = patch_coverage(torch.as_tensor(np.asarray(masks)), grid).to(self.device)
        inside = coverage >= min_coverage
        best = coverage.argmax(dim=1)
        inside[torch.arange(n), best] |= ~inside.any(dim=1)
        native = self.image_size // self.patch_size
        embedded = self.vision.embeddings(pixels, interpolate_pos_encoding=grid != (native, native))
        hidden = self.vision.pre_layrnorm(embedded)  # (1, 1 + P, D)
        extra = hidden[:, :1].expand(1, n, -1)
        hidden = torch.cat([hidden, extra], dim=1)  # [CLS | patches | n mask tokens]
        allowed = mask_token_attention(inside)
        bias = torch.zeros(allowed.shape, dtype=hidden.dtype, device=self.device)
        bias.masked_fill_(~allowed, torch.finfo(hidden.dtype).min)
        out = self._run_layers(hidden, layer, bias[None, None])
        return self._project(out[0, -n:])


def mask_token_attention(inside: torch.Tensor) -> torch.Tensor:
    """(S, S) boolean "query may attend to key" for ``[CLS | P patches | n mask tokens]``.

    CLS and patches attend as in vanilla CLIP (to CLS and patches, never to mask tokens); mask
    token ``i`` attends to itself and to the patches inside mask ``i`` (``inside``: (n, P) bool).
    """
    n, patches = inside.shape
    size = 1 + patches + n
    allowed = torch.zeros((size, size), dtype=torch.bool, device=inside.device)
    allowed[: 1 + patches, : 1 + patches] = True
    rows = torch.arange(1 + patches, size, device=inside.device)
    allowed[rows, rows] = True
    allowed[1 + patches :, 1 : 1 + patches] = inside
    return allowed
