"""FLUX.2 [klein] (4B, 9B; distilled and base) through diffusers' ``Flux2KleinPipeline``.

Inputs are prepared with the pipeline's own components and methods (image processor, VAE
encoding with BatchNorm normalisation, patchify/pack, position ids, Qwen3 chat template and
hidden layers 9/18/27), then the transformer runs ONCE at sigma = 1 (timestep 1000) with our
attention processors installed. The joint sequence is ``[text (512, padded) | noisy | clean]``.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers.models.transformers.transformer_flux2 import (
    Flux2AttnProcessor,
    Flux2ParallelSelfAttnProcessor,
    _get_qkv_projections,
)
from PIL import Image

from ..catalog import FLUX2_KLEIN
from ..errors import ExpressionError, ImageLoadError, UnsupportedModelError
from ..geometry import ImageGeometry
from ..probing.recorder import ProbeRecorder, TokenLayout
from ..text import align_prompt, count_tokens
from .base import Backbone, EncodedText, PreparedImage
from ..probing.processors import ProbeProcessor, flux_joint_qkv, swapped_processors
from .flux_inputs import FluxPipelineParts
from .trajectory import denoised_step_inputs

MAX_SEQUENCE_LENGTH = 512
TEXT_ENCODER_LAYERS = (9, 18, 27)
MAX_AREA = 1024 * 1024
MIN_SIDE = 64  # Flux2ImageProcessor refuses smaller images
GUIDANCE_SCALE = 4.0  # Flux2KleinPipeline's default, used by undistilled (base) models


class Flux2DoubleStreamProbeProcessor(ProbeProcessor):
    """``Flux2AttnProcessor`` plus probes (double-stream blocks: separate text/image weights)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        layout = self.recorder.layout
        self.recorder.record_feature("adaln", self.block, hidden_states[:, layout.clean_in_image_stream])
        query, key, value, enc_query, enc_key, enc_value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        added = (enc_query, enc_key, enc_value) if attn.added_kv_proj_dim is not None else None
        query, key, value = flux_joint_qkv(attn, query, key, value, added, image_rotary_emb)

        out = self.attend(query, key, value, attention_mask)
        self.recorder.record_feature("attn", self.block, out[:, layout.clean])

        if encoder_hidden_states is None:
            return attn.to_out[1](attn.to_out[0](out))
        text_len = encoder_hidden_states.shape[1]
        context_out, image_out = out.split_with_sizes([text_len, out.shape[1] - text_len], dim=1)
        return attn.to_out[1](attn.to_out[0](image_out)), attn.to_add_out(context_out)


class Flux2SingleStreamProbeProcessor(ProbeProcessor):
    """``Flux2ParallelSelfAttnProcessor`` plus probes (single-stream blocks, fused attention + MLP)."""

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None):
        layout = self.recorder.layout
        self.recorder.record_feature("adaln", self.block, hidden_states[:, layout.clean])
        projected = attn.to_qkv_mlp_proj(hidden_states)
        qkv_dim = 3 * attn.inner_dim
        mlp_dim = attn.mlp_hidden_dim * attn.mlp_mult_factor
        local_qkv = projected.shape[-1] * qkv_dim // (qkv_dim + mlp_dim)
        qkv, mlp_hidden = torch.split(projected, [local_qkv, projected.shape[-1] - local_qkv], dim=-1)
        query, key, value = flux_joint_qkv(attn, *qkv.chunk(3, dim=-1), image_rotary_emb=image_rotary_emb)

        out = self.attend(query, key, value, attention_mask)
        self.recorder.record_feature("attn", self.block, out[:, layout.clean])
        return attn.to_out(torch.cat([out, attn.mlp_act_fn(mlp_hidden)], dim=-1))


def probes_installed(transformer, recorder: ProbeRecorder):
    """Swap every block's attention processor for a probing one (and hook block outputs) for one forward."""
    double = len(transformer.transformer_blocks)
    layout = recorder.layout

    def make(index: int, original):
        cls = Flux2DoubleStreamProbeProcessor if index < double else Flux2SingleStreamProbeProcessor
        return cls(index, recorder, original)

    def output_rows(index: int, output):
        # double-stream blocks return (text, [noisy | clean]); single-stream ones the joint sequence
        return output[1][:, layout.clean_in_image_stream] if index < double else output[:, layout.clean]

    return swapped_processors(
        list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks),
        recorder,
        make,
        lambda index: Flux2AttnProcessor if index < double else Flux2ParallelSelfAttnProcessor,
        output_rows,
    )


class Flux2KleinBackbone(FluxPipelineParts, Backbone):
    """FLUX.2 [klein] around a loaded ``Flux2KleinPipeline``.

    ``pipeline`` may hold real weights (``load_flux2_klein``) or a tiny random model
    (``editseg.backbones.tiny``); the code path is the same.
    """

    decodes_edits = True
    text_sees_image = False  # the text encoder reads the instruction only
    text_row_tensors = ("embeds", "ids")

    def __init__(
        self,
        pipeline,
        name: str,
        is_random: bool = False,
        default_max_side: int | None = None,
        max_sequence_length: int | None = None,
    ):
        """``max_sequence_length`` is the pipeline's argument of that name: the text stream is padded
        to it. Default: klein's 512, or the tokenizer's ``model_max_length`` where that is shorter
        (the toy shapes model declares 32, the length it was trained with)."""
        self.bind_pipeline(pipeline, name, is_random, default_max_side)
        if max_sequence_length is None:
            declared = getattr(pipeline.tokenizer, "model_max_length", None) or MAX_SEQUENCE_LENGTH
            max_sequence_length = min(MAX_SEQUENCE_LENGTH, int(declared))
        self.max_sequence_length = max_sequence_length

    # -- image ---------------------------------------------------------------------------------
    def preprocess_geometry(self, size: tuple[int, int], max_side: int | None = None) -> ImageGeometry:
        """The pipeline's rule: above 1 MP, resize to 1 MP (aspect kept); then centre-crop each side
        down to a multiple of the patch (16 px). ``max_side`` (ours, optional) first shrinks the
        image so that its longer side is at most ``max_side``, but not its shorter side below 64 px.
        Images with a side under 64 px (which the pipeline refuses) are enlarged to 64 px on that
        side, aspect kept; their masks still come back at the input size."""
        width, height = size
        resized = (width, height)
        if max_side is not None and max(resized) > max_side:
            # never below the pipeline's 64 px minimum on the short side
            scale = max(max_side / max(resized), min(1.0, MIN_SIDE / min(resized)))
            resized = (max(1, round(width * scale)), max(1, round(height * scale)))
        if min(resized) < MIN_SIDE:
            scale = MIN_SIDE / min(resized)
            resized = (max(MIN_SIDE, math.ceil(resized[0] * scale)), max(MIN_SIDE, math.ceil(resized[1] * scale)))
        if resized[0] * resized[1] > MAX_AREA:
            scale = math.sqrt(MAX_AREA / (resized[0] * resized[1]))
            resized = (int(resized[0] * scale), int(resized[1] * scale))
        crop_w = resized[0] // self.patch * self.patch
        crop_h = resized[1] // self.patch * self.patch
        left, top = (resized[0] - crop_w) // 2, (resized[1] - crop_h) // 2
        return ImageGeometry(input_size=size, resized_size=resized, crop=(left, top, crop_w, crop_h), patch=self.patch)

    def prepare_image(self, image: Image.Image, max_side: int | None = None) -> PreparedImage:
        pipe = self.pipeline
        processor = pipe.image_processor
        geometry = self.preprocess_geometry(image.size, max_side or self.default_max_side)
        if geometry.resized_size != image.size:
            if image.width * image.height > MAX_AREA and geometry.resized_size == self.preprocess_geometry(image.size).resized_size:
                image = processor._resize_to_target_area(image, MAX_AREA)  # exactly the pipeline's resize
            else:
                image = image.resize(geometry.resized_size, Image.Resampling.LANCZOS)
        try:
            processor.check_image_input(image)
        except ValueError as error:
            raise ImageLoadError(f"{self.name} cannot take this image: {error}") from None
        _, _, crop_w, crop_h = geometry.crop
        pixels = processor.preprocess(image, height=crop_h, width=crop_w, resize_mode="crop")
        generator = torch.Generator("cpu").manual_seed(0)  # unused: the VAE is read in "argmax" mode
        latents, latent_ids = pipe.prepare_image_latents(
            images=[pixels], batch_size=1, generator=generator, device=self.device, dtype=pipe.vae.dtype
        )
        return PreparedImage(geometry=geometry, tensors={"latents": latents, "ids": latent_ids, "pixels": pixels})

    # -- text ----------------------------------------------------------------------------------
    def chat_text(self, instruction: str) -> str:
        return self.pipeline.tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )

    def text_settings(self) -> tuple[int]:
        return (self.max_sequence_length,)

    def text_token_counts(self, instructions: Sequence[str]) -> tuple[list[int], int]:
        """Tokens of each chat-templated instruction, and :attr:`max_sequence_length`."""
        texts = [self.chat_text(instruction) for instruction in instructions]
        return count_tokens(self.pipeline.tokenizer, texts), self.max_sequence_length

    def encode_text(
        self,
        expressions: Sequence[str],
        instructions: Sequence[str],
        image: PreparedImage | None = None,
        align: bool = True,
    ) -> EncodedText:
        """Qwen3 chat template, padded to ``max_sequence_length`` tokens (512), hidden layers 9/18/27 (the text encoder does not
        see the image, so ``image`` is unused); ``align=False`` skips the word→token map."""
        pipe = self.pipeline
        tokenizer = pipe.tokenizer
        texts = [self.chat_text(instruction) for instruction in instructions]
        full_lengths = count_tokens(tokenizer, texts)  # quietly: the clean error below says it all
        for expression, length in zip(expressions, full_lengths):
            if length > self.max_sequence_length:
                raise ExpressionError(
                    f"Expression too long: its instruction needs {length} text tokens, "
                    f"{self.name} reads at most {self.max_sequence_length}. Shorten it: {expression[:80]!r}..."
                )
        encoded = tokenizer(
            texts,
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=self.max_sequence_length,
            return_offsets_mapping=True,
        )
        prompts = [
            align_prompt(expression, instruction, text, ids, offsets, int(mask.sum()))
            for expression, instruction, text, ids, offsets, mask in zip(
                expressions, instructions, texts, encoded["input_ids"], encoded["offset_mapping"], encoded["attention_mask"]
            )
        ] if align else []
        device = self.device
        output = pipe.text_encoder(
            input_ids=encoded["input_ids"].to(device),
            attention_mask=encoded["attention_mask"].to(device),
            output_hidden_states=True,
            use_cache=False,
        )
        stacked = torch.stack([output.hidden_states[k] for k in TEXT_ENCODER_LAYERS], dim=1)
        stacked = stacked.to(dtype=pipe.text_encoder.dtype, device=device)
        batch, layers, length, width = stacked.shape
        embeds = stacked.permute(0, 2, 1, 3).reshape(batch, length, layers * width)
        text_ids = torch.zeros(batch, length, 4, dtype=torch.long)
        text_ids[..., 3] = torch.arange(length)
        return EncodedText(prompts=prompts, tensors={"embeds": embeds, "ids": text_ids.to(device)})

    # -- forward -------------------------------------------------------------------------------
    def noise_latents(self, geometry: ImageGeometry, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noise, ids)``: the pipeline's ``prepare_latents`` for one image of ``geometry``'s crop,
        packed noise tokens drawn on the CPU from ``seed`` and their position ids."""
        pipe = self.pipeline
        _, _, crop_w, crop_h = geometry.crop
        return pipe.prepare_latents(
            batch_size=1,
            num_latents_channels=pipe.transformer.config.in_channels // 4,
            height=crop_h,
            width=crop_w,
            dtype=dtype,
            device=self.device,
            generator=torch.Generator("cpu").manual_seed(seed),
        )

    def first_step_inputs(self, image: PreparedImage, text: EncodedText, seed: int) -> dict:
        """The transformer's keyword arguments at the first denoising step (sigma 1, timestep 1000)."""
        pipe = self.pipeline
        embeds = text.tensors["embeds"]
        batch = embeds.shape[0]
        # One noise draw shared by the batch: an expression's result must not depend on its batch.
        noise, noise_ids = self.noise_latents(image.geometry, embeds.dtype, seed)
        clean = image.tensors["latents"]
        hidden = torch.cat([noise, clean.to(noise.device)], dim=1).to(pipe.transformer.dtype).expand(batch, -1, -1)
        ids = torch.cat([noise_ids, image.tensors["ids"].to(noise_ids.device)], dim=1).expand(batch, -1, -1)
        timestep = torch.full((batch,), 1000.0, device=noise.device).to(noise.dtype) / 1000
        return {
            "hidden_states": hidden,
            "encoder_hidden_states": embeds,
            "timestep": timestep,
            "img_ids": ids,
            "txt_ids": text.tensors["ids"],
            "guidance": None,
        }

    def step_inputs(
        self, image: PreparedImage, text: EncodedText, seed: int, step_index: int = 0, num_steps: int = 28
    ) -> dict:
        """Transformer kwargs at step ``step_index`` of a ``num_steps`` schedule.

        Step 0 is :meth:`first_step_inputs`. Later steps first denoise with the pipeline's own
        schedule (linear sigmas, empirical shift ``mu``, flow-match Euler; classifier-free
        guidance with an empty negative prompt on undistilled models, as the pipeline does).
        """
        inputs = self.first_step_inputs(image, text, seed)
        if step_index == 0:
            return inputs
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu, retrieve_timesteps

        pipe = self.pipeline
        noisy_len = image.tensors["latents"].shape[1]
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        mu = compute_empirical_mu(image_seq_len=noisy_len, num_steps=num_steps)
        timesteps, _ = retrieve_timesteps(scheduler, num_steps, self.device, sigmas=sigmas, mu=mu)
        batch = inputs["hidden_states"].shape[0]

        def negative_inputs() -> dict:
            negative = self.encode_text([""] * batch, [""] * batch, align=False).tensors
            return {"encoder_hidden_states": negative["embeds"], "txt_ids": negative["ids"]}

        key = self.trajectories.key(image, text, seed, num_steps)
        return denoised_step_inputs(
            pipe.transformer,
            self.trajectories,
            key,
            inputs,
            noisy_len,
            scheduler,
            timesteps,
            step_index,
            hidden_dtype=pipe.transformer.dtype,
            scale_then_cast=True,
            guidance_scale=GUIDANCE_SCALE if not pipe.config.is_distilled else 1.0,
            negative_inputs=negative_inputs,
        )

    def first_step_clean_estimate(self, image: PreparedImage, text: EncodedText, seed: int = 0) -> torch.Tensor:
        """The edited image the model predicts at the first step, as packed latent tokens:
        ``x0 = x1 - v`` (rectified flow at sigma 1), shape (batch, tokens, channels)."""
        inputs = self.first_step_inputs(image, text, seed)
        noisy_len = image.tensors["latents"].shape[1]
        with torch.inference_mode():
            velocity = self.pipeline.transformer(**inputs, return_dict=False)[0][:, :noisy_len]
        return inputs["hidden_states"][:, :noisy_len] - velocity

    def decode_tokens(self, tokens: torch.Tensor, image: PreparedImage) -> list[Image.Image]:
        """Packed latent tokens of ``image``'s grid → RGB images, with the pipeline's own final steps
        (unpack, undo the BatchNorm standardisation, unpatchify, VAE decode, postprocess)."""
        pipe = self.pipeline
        rows, cols = image.geometry.grid
        ids = image.tensors["ids"].to(tokens.device).expand(tokens.shape[0], -1, -1)
        with torch.inference_mode():
            latents = pipe._unpack_latents_with_ids(tokens, ids, rows, cols)
            mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
            latents = pipe._unpatchify_latents(latents * std.to(latents.device, latents.dtype) + mean)
            decoded = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(decoded, output_type="pil")

    def layout_for(self, image: PreparedImage, text: EncodedText) -> TokenLayout:
        clean = image.tensors["latents"].shape[1]
        return TokenLayout(text_len=text.text_len, noisy_len=clean, clean_len=clean, grid=image.geometry.grid)

    def probes_installed(self, recorder: ProbeRecorder):
        return probes_installed(self.pipeline.transformer, recorder)


ALIASES = FLUX2_KLEIN.aliases  # the names live in editseg.catalog (listed without importing this module)
PIPELINE_CLASS_NAMES = FLUX2_KLEIN.pipeline_class_names
WEIGHTS_HINT = (
    "FLUX.2 [klein] weights are gated on the Hugging Face hub: accept the licence on the model page and "
    "log in (`hf auth login`), or copy the weights from a machine that has them."
)


def load_pipeline(source: str, dtype: torch.dtype):
    """``Flux2KleinPipeline.from_pretrained`` (raises OSError/ValueError when weights are missing)."""
    from diffusers import Flux2KleinPipeline

    importlib.import_module("editseg.backbones.pixel_codec")  # diffusers loads a toy model's PixelCodec only once imported

    # diffusers >= 0.42 names the argument ``dtype`` (``torch_dtype`` is deprecated)
    return Flux2KleinPipeline.from_pretrained(source, dtype=dtype)


def make_backbone(pipeline, name: str) -> "Flux2KleinBackbone":
    return Flux2KleinBackbone(pipeline, name=name)


def check_source(source: str) -> None:
    """Refuse the KV-cache variant (see :func:`refuse_kv_variant`)."""
    refuse_kv_variant(source)


def refuse_kv_variant(source: str) -> None:
    """FLUX.2-klein-9B-KV lets reference tokens attend only to themselves: no image→prompt attention."""
    class_name = ""
    index = Path(source) / "model_index.json"
    if index.is_file():
        try:
            class_name = json.loads(index.read_text()).get("_class_name", "")
        except (OSError, ValueError):
            pass
    if class_name == "Flux2KleinKVPipeline" or source.rstrip("/").lower().endswith("-kv"):
        raise UnsupportedModelError(
            f"{source} is the FLUX.2-klein KV-cache variant: its reference-image tokens attend only to "
            "themselves, so no image→prompt attention exists for editseg to read. Use FLUX.2-klein-9B "
            "or FLUX.2-klein-4B (distilled or base) instead."
        )
