"""Input preparation shared by the FLUX-style backbones, written once.

* :class:`FluxPipelineParts`: what every backbone around a diffusers FLUX-style pipeline (FLUX.1
  text-to-image, FLUX.1 Kontext, FLUX.2 [klein], Step1X-Edit's FLUX.1-style DiT, and Qwen-Image-Edit,
  double-stream blocks only) reads from it: block counts, the patch size in pixels, its device and dtype.
* :func:`embedded_guidance`: FLUX.1's guidance-distilled ``guidance`` input.
* :func:`t5_encode`: FLUX.1's text input (T5 tokens with character offsets, and the pipeline's own
  ``encode_prompt``: T5 embeddings, CLIP pooled embedding, text ids).
* :func:`flux_schedule`: the flow-match schedule of the FLUX.1, Kontext and Qwen-Image pipelines
  (linear sigmas ``1 … 1/n`` shifted by ``mu = calculate_shift(image tokens)``; diffusers 0.42.1
  copies ``calculate_shift`` and ``retrieve_timesteps`` verbatim into each of those pipelines).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
import torch


class FluxPipelineParts:
    """Mixin for backbones around a loaded FLUX-style ``pipeline`` (double-stream blocks, and
    single-stream ones where the transformer has them)."""

    pipeline: Any
    # the transformer's (double-stream, single-stream) block lists; Step1X-Edit's DiT keeps BFL's names
    block_lists: ClassVar[tuple[str, str]] = ("transformer_blocks", "single_transformer_blocks")

    def bind_pipeline(self, pipeline: Any, name: str, is_random: bool, default_max_side: int | None) -> None:
        """Keep ``pipeline`` and the attributes read from it (block counts, ``patch``: pixels per token side)."""
        self.pipeline = pipeline
        self.name = name
        self.is_random = is_random
        self.default_max_side = default_max_side
        double, single = self.block_lists
        self.num_double_blocks = len(getattr(pipeline.transformer, double))
        self.num_single_blocks = len(getattr(pipeline.transformer, single, ()))  # none in Qwen-Image
        self.patch = pipeline.vae_scale_factor * 2  # 16 for the real VAE

    @property
    def device(self) -> torch.device:
        return self.pipeline._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.transformer.dtype


def embedded_guidance(transformer: Any, scale: float, batch: int, device: torch.device) -> torch.Tensor | None:
    """``guidance = full([batch], scale)`` (float32) where the transformer embeds guidance, else None."""
    if not transformer.config.guidance_embeds:
        return None
    return torch.full([1], scale, device=device, dtype=torch.float32).expand(batch)


def t5_encode(pipeline: Any, texts: Sequence[str], device: torch.device, max_length: int) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens, embeds, pooled, ids)``: ``tokenizer_2``'s tokenisation padded to ``max_length``
    with character offsets, and the pipeline's ``encode_prompt`` of the same texts (no grad, as in
    its ``__call__``: grad mode changes kernels, hence rounding)."""
    texts = list(texts)
    tokens = pipeline.tokenizer_2(
        texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt",
        return_offsets_mapping=True,
    )  # fmt: skip
    with torch.no_grad():
        embeds, pooled, ids = pipeline.encode_prompt(prompt=texts, prompt_2=None, device=device, max_sequence_length=max_length)
    return tokens, embeds, pooled, ids


def flux_schedule(scheduler: Any, image_len: int, num_steps: int, device: torch.device) -> tuple[Any, torch.Tensor]:
    """``(fresh scheduler, timesteps)``: a new scheduler of ``scheduler``'s class and config, set to
    the pipelines' ``num_steps`` shifted sigmas for ``image_len`` image tokens (the given scheduler
    is left untouched)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    config = scheduler.config
    fresh = type(scheduler).from_config(config)
    mu = calculate_shift(
        image_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    timesteps, _ = retrieve_timesteps(fresh, num_steps, device, sigmas=sigmas, mu=mu)
    return fresh, timesteps
