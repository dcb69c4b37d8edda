"""Step1X-Edit as an editseg :class:`~editseg.backbones.base.Backbone`.

One DiT forward at the first denoising step (t = 1): joint sequence
``[text (640: VLM image tokens, instruction, template tail, zero padding) | noisy | reference]``.
Only the conditional branch is run (the official sampler adds a negative-prompt branch for CFG).

Switches (``Backbone.switches``; set after loading with ``backbone.set_switches({...})`` or
``--backbone-option KEY=VALUE``):

- ``vae_latent``: ``"mean"`` (default: the posterior mean, deterministic) or ``"sample"`` (the
  official ``mean + std * noise`` draw, seeded with ``vae_seed``);
- ``mrope``: True (default) gives the VLM's image tokens their 3-D positions, as the official
  environment did; False is transformers 5's 1-D fall-back (for comparison only);
- ``add_vision_id``: False (default, the official text) or True ("Picture 1: " before the image).
- ``id_zero_padding``: True (default, official) treats "!" (Qwen token id 0) as padding in the
  VLM, as the official ``ids > 0`` attention mask under FlashAttention-2 does (an unintended
  side-effect there: no token attends to "!", and its own attention output is zero in every
  layer; see :mod:`.id_zero`); False makes "!" an ordinary token. No effect without "!".
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from ...errors import ConfigError, ExpressionError
from ...geometry import ImageGeometry
from ...probing.recorder import ProbeRecorder, TokenLayout
from ...text import align_prompt
from ..base import Backbone, EncodedText, PreparedImage
from ..flux_inputs import FluxPipelineParts
from ..switches import Switch
from .model import probes_installed
from .pipeline import grid_ids, official_size, pack_latents, unit_pixels, vlm_inputs, vlm_view

PAPER_FEATURE_BLOCK = 40  # paper: feature block 40 of 57 (0-based, global) on Step1X-Edit


class Step1XEditBackbone(FluxPipelineParts, Backbone):
    """Step1X-Edit around a :class:`~editseg.backbones.step1x.pipeline.Step1XPipeline`."""

    text_sees_image = True  # its Qwen2.5-VL encodes the instruction with the image: never cached
    block_lists = ("double_blocks", "single_blocks")  # the official DiT's names
    switches = {
        "vae_latent": Switch(str, "mean", "the VAE posterior mean, or the official seeded sample", ("mean", "sample")),
        "vae_seed": Switch(int, 0, "seed of the VAE latent draw when vae_latent=sample"),
        "mrope": Switch(bool, True, "3-D VLM positions for image tokens as the official environment; false: 1-D"),
        "add_vision_id": Switch(bool, False, "insert 'Picture 1: ' before the image (not the official text)"),
        "id_zero_padding": Switch(bool, True, "'!' (token id 0) is padding to the VLM as in the official code; false: an ordinary token"),
    }

    vae_latent: str
    vae_seed: int
    mrope: bool
    add_vision_id: bool
    id_zero_padding: bool

    def __init__(self, pipeline, name: str, is_random: bool = False, default_max_side: int | None = None) -> None:
        self.bind_pipeline(pipeline, name, is_random, default_max_side)
        for switch_name, switch in self.switches.items():  # every switch starts at its declared default
            setattr(self, switch_name, switch.default)

    @property
    def default_feature_block(self) -> int:
        """40 (the paper's choice) on the 57-block model; the same depth fraction elsewhere."""
        if self.num_blocks == 57:
            return PAPER_FEATURE_BLOCK
        return min(self.num_blocks - 1, round(self.num_blocks * PAPER_FEATURE_BLOCK / 57))

    # -- image ---------------------------------------------------------------------------------
    def preprocess_geometry(self, size: tuple[int, int], max_side: int | None = None) -> ImageGeometry:
        """The official resize (no crop) to ≈ size_level² pixels, sides multiples of 16; ``max_side``
        (ours) first shrinks the longer side."""
        width, height = size
        if max_side is not None and max(size) > max_side:
            scale = max_side / max(size)
            width, height = max(1, round(width * scale)), max(1, round(height * scale))
        new_w, new_h = official_size(width, height, self.pipeline.size_level)
        return ImageGeometry(input_size=size, resized_size=(new_w, new_h), crop=(0, 0, new_w, new_h), patch=self.patch)

    def prepare_image(self, image: Image.Image, max_side: int | None = None) -> PreparedImage:
        geometry = self.preprocess_geometry(image.size, max_side or self.default_max_side)
        source = image.convert("RGB")
        if max_side or self.default_max_side:
            limit = max_side or self.default_max_side
            if max(source.size) > limit:
                scale = limit / max(source.size)
                source = source.resize((max(1, round(source.width * scale)), max(1, round(source.height * scale))), Image.Resampling.LANCZOS)
        resized = source.resize(geometry.resized_size)  # PIL's default filter (bicubic), as the official code
        pixels = unit_pixels(resized)
        if self.vae_latent not in ("mean", "sample"):
            raise ConfigError(f"vae_latent must be 'mean' or 'sample'; got {self.vae_latent!r}.")
        latents = self.pipeline.encode_image(pixels[None], sample=self.vae_latent == "sample", seed=self.vae_seed)
        rows, cols = geometry.grid
        prepared = PreparedImage(
            geometry=geometry,
            tensors={"latents": latents, "ids": grid_ids(rows, cols), "pixels": pixels, "vlm_image": vlm_view(pixels)},
        )
        self._last_image = prepared  # encode_text needs the image: the VLM sees it with the instruction
        return prepared

    # -- text ----------------------------------------------------------------------------------
    def encode_text(self, expressions: Sequence[str], instructions: Sequence[str], image: PreparedImage | None = None) -> EncodedText:
        """The official Qwen2.5-VL encoding; it needs the image (the VLM sees it): pass ``image`` or
        call :meth:`prepare_image` first (the last prepared image is used)."""
        image = image or getattr(self, "_last_image", None)
        if image is None:
            raise ExpressionError("Step1X-Edit encodes instructions together with the image: prepare an image first.")
        pipe = self.pipeline
        tokenizer = pipe.processor.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        prompts, embeds, masks = [], [], []
        for expression, instruction in zip(expressions, instructions):
            inputs = vlm_inputs(pipe.processor, instruction, image.tensors["vlm_image"], add_vision_id=self.add_vision_id)
            embed, mask = pipe.encode_prompt(inputs, mrope=self.mrope, id_zero_padding=self.id_zero_padding)
            start, length = pipe.drop_tokens, int(mask.sum())
            ids = inputs.input_ids[0, start : start + length].tolist()
            spans = inputs.spans[start : start + length]
            padding = pipe.max_length - length
            prompt = align_prompt(expression, instruction, inputs.text, ids + [pad_id] * padding, spans + [(0, 0)] * padding, length)
            if not prompt.indices("expression") or any(not w.token_indices for w in prompt.words if w.in_expression):
                raise ExpressionError(
                    f"Expression too long: {self.name} reads {pipe.max_length} text tokens after the first "
                    f"{pipe.drop_tokens}; shorten it: {expression[:80]!r}..."
                )
            prompts.append(prompt)
            embeds.append(embed)
            masks.append(mask)
        tensors = {"embeds": torch.stack(embeds), "mask": torch.stack(masks)}
        return EncodedText(prompts=prompts, tensors=tensors)

    # -- forward -------------------------------------------------------------------------------
    def first_step_inputs(self, image: PreparedImage, text: EncodedText, seed: int) -> dict:
        """Keyword arguments of the DiT at the first denoising step (t = 1, pure-noise noisy tokens)."""
        pipe = self.pipeline
        transformer = pipe.transformer
        clean = image.tensors["latents"]
        batch = text.tensors["embeds"].shape[0]
        rows, cols = image.geometry.grid
        channels = pipe.vae.config.latent_channels
        generator = torch.Generator("cpu").manual_seed(seed)
        # One noise draw shared by the batch (as flux2): results must not depend on the batch.
        noise = torch.randn(1, channels, 2 * rows, 2 * cols, generator=generator)
        noisy = pack_latents(noise).to(clean.device, transformer.dtype)
        img = torch.cat([noisy, clean.to(transformer.dtype)], dim=1).expand(batch, -1, -1)
        ids = image.tensors["ids"]
        img_ids = torch.cat([ids, ids], dim=0)[None].expand(batch, -1, -1).to(clean.device)
        embeds = text.tensors["embeds"]
        return {
            "img": img,
            "img_ids": img_ids,
            "txt_ids": torch.zeros(batch, embeds.shape[1], 3, device=clean.device),
            "timesteps": torch.ones(batch, device=clean.device, dtype=transformer.dtype),
            "llm_embedding": embeds.to(clean.device, transformer.dtype),
            "mask": text.tensors["mask"].to(clean.device),
        }

    def layout_for(self, image: PreparedImage, text: EncodedText) -> TokenLayout:
        clean = image.tensors["latents"].shape[1]
        return TokenLayout(text_len=text.text_len, noisy_len=clean, clean_len=clean, grid=image.geometry.grid)

    def probes_installed(self, recorder: ProbeRecorder):
        return probes_installed(self.pipeline.transformer, recorder)

    def run_transformer(self, inputs: dict) -> torch.Tensor:
        return self.pipeline.transformer(**inputs)
