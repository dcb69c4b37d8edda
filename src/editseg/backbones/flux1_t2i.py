"""FLUX.1 text-to-image (FLUX.1 [dev]) through diffusers' ``FluxPipeline`` / ``FluxTransformer2DModel``,
as RefAM reads it: a real image brought to a timestep (noising or inversion), then one probed forward.

Facts read from diffusers 0.42.1 (``pipelines/flux/pipeline_flux.py``):

- Text: T5-XXL last hidden state over ``max_sequence_length`` (512) tokens padded with ``<pad>``
  (``</s>`` ends the prompt; no attention mask reaches T5 or the transformer), plus the CLIP-L
  pooled output as ``pooled_projections``; ``txt_ids`` are zeros (512, 3).
- Latents: VAE 8x down, ``(z - shift_factor) * scaling_factor``, packed 2x2 (``_pack_latents``);
  ids ``(0, row, col)``; joint sequence ``[text | image]``.
- Schedule: ``sigmas = linspace(1, 1/n, n)`` shifted with ``mu = calculate_shift(image tokens)``;
  the transformer gets ``timestep = t / 1000`` and ``guidance = full([B], guidance_scale)``
  (float32; pipeline default 3.5); flow-match Euler ``x ← x + (σ_next − σ) v``.

The image is resized (aspect kept) to at most ``max_area`` pixels (default 1024², FLUX.1's
native size), sides floored to multiples of 16 — our choice: RefAM does not state its resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections
from PIL import Image

from ..errors import ExpressionError, ImageLoadError
from ..geometry import ImageGeometry
from ..probing.token_attention import T2ILayout, TokenAttentionRecorder, TokenProbePlan
from ..probing.processors import flux_joint_qkv, swapped_processors
from .flux_inputs import FluxPipelineParts, embedded_guidance, flux_schedule, t5_encode

MAX_SEQUENCE_LENGTH = 512
DEFAULT_GUIDANCE_SCALE = 3.5
MAX_AREA = 1024 * 1024

ALIASES = {"flux1-dev": "black-forest-labs/FLUX.1-dev"}
PIPELINE_CLASS_NAMES = ("FluxPipeline",)
WEIGHTS_HINT = (
    "FLUX.1 [dev] weights are gated on the Hugging Face hub (FLUX.1 [dev] Non-Commercial License): accept the "
    "licence on https://huggingface.co/black-forest-labs/FLUX.1-dev and log in (`hf auth login`), or point "
    "--t2i-model / EDITSEG_MODELS_DIR at a local copy."
)


@dataclass
class T2IImage:
    """An image encoded once: geometry, packed clean latents ``x0`` (1, N, C) and their ids."""

    geometry: ImageGeometry
    latents: torch.Tensor
    ids: torch.Tensor


@dataclass
class T2IText:
    """Encoded prompts: ``embeds`` (B, L, D), ``pooled`` (B, D) or None, ``ids``, and per prompt the
    tokenisation of the text the encoder saw (``encoder_texts``; ``input_ids``, character ``offsets``,
    ``num_real`` real tokens), where the prompt starts in it (``starts``), the ``tracked`` token
    positions (the prompt's own tokens and its end-of-sequence token) and that ``eos`` position.

    FLUX.1: the encoder text is the prompt itself; tracked = every real T5 token, ``</s>`` last."""

    texts: list[str]
    embeds: torch.Tensor
    pooled: torch.Tensor | None
    ids: torch.Tensor
    input_ids: list[list[int]]
    offsets: list[list[tuple[int, int]]]
    num_real: list[int]
    encoder_texts: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    tracked: list[list[int]] = field(default_factory=list)
    eos: list[int | None] = field(default_factory=list)

    @property
    def text_len(self) -> int:
        return self.embeds.shape[1]


class FluxT2IProbeProcessor:
    """``FluxAttnProcessor`` (q, k, v, QK-norm, RoPE and attention exactly as the original, through
    the model's own ``dispatch_attention_fn`` backend) plus the per-token probe on q and k."""

    def __init__(self, block: int, recorder: TokenAttentionRecorder, original) -> None:
        self.block = block
        self.recorder = recorder
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        query, key, value, enc_query, enc_key, enc_value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        added = (enc_query, enc_key, enc_value) if attn.added_kv_proj_dim is not None else None
        query, key, value = flux_joint_qkv(attn, query, key, value, added, image_rotary_emb)
        self.recorder.record(self.block, query, key)
        out = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, backend=self._attention_backend, parallel_config=self._parallel_config
        )
        out = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        text_len = encoder_hidden_states.shape[1]
        context_out, image_out = out.split_with_sizes([text_len, out.shape[1] - text_len], dim=1)
        image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
        return image_out, attn.to_add_out(context_out.contiguous())


class _NoFeatures:
    """Adapter: ``swapped_processors`` asks the recorder whether block outputs are wanted."""

    @staticmethod
    def wants_feature(site: str, block: int) -> bool:
        return False


def token_probes_installed(transformer, recorder: TokenAttentionRecorder):
    """Swap every block's attention processor for a probing one for one forward (restored after)."""
    return swapped_processors(
        list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks),
        _NoFeatures(),
        lambda index, original: FluxT2IProbeProcessor(index, recorder, original),
        lambda index: FluxAttnProcessor,
        lambda index, output: output,
    )


class FluxT2IBackbone(FluxPipelineParts):
    """FLUX.1 text-to-image around a loaded ``FluxPipeline`` (real weights or a tiny random model)."""

    kind = "t2i-dit"

    def __init__(
        self,
        pipeline,
        name: str,
        is_random: bool = False,
        default_max_side: int | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        max_area: int = MAX_AREA,
    ):
        self.bind_pipeline(pipeline, name, is_random, default_max_side)
        self.guidance_scale = guidance_scale
        self.max_area = max_area

    @property
    def num_blocks(self) -> int:
        return self.num_double_blocks + self.num_single_blocks

    # -- image ---------------------------------------------------------------------------------
    def preprocess_geometry(self, size: tuple[int, int], max_side: int | None = None) -> ImageGeometry:
        """Aspect kept, scaled down (never up) to at most ``max_area`` pixels and ``max_side`` on the
        longer side, each side floored to a multiple of 16 (no crop)."""
        m = self.patch
        width, height = size
        scale = min(1.0, (self.max_area / (width * height)) ** 0.5)
        if max_side is not None:
            scale = min(scale, max_side / max(width, height))
        width, height = int(width * scale) // m * m, int(height * scale) // m * m
        if width <= 0 or height <= 0:
            raise ImageLoadError(f"{self.name} needs images of at least {m}x{m} pixels after resizing; got {size}.")
        return ImageGeometry(input_size=size, resized_size=(width, height), crop=(0, 0, width, height), patch=m)

    def prepare_image(self, image: Image.Image, max_side: int | None = None) -> T2IImage:
        """Resize, normalise to [-1, 1], VAE-encode (mode of the posterior), shift/scale and pack."""
        pipe = self.pipeline
        geometry = self.preprocess_geometry(image.size, max_side or self.default_max_side)
        width, height = geometry.resized_size
        pixels = pipe.image_processor.preprocess(image, height, width).to(self.device, pipe.vae.dtype)
        with torch.no_grad():
            z = pipe.vae.encode(pixels).latent_dist.mode()
        z = (z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        channels, rows, cols = z.shape[1:]
        packed = pipe._pack_latents(z, 1, channels, rows, cols).to(self.dtype)
        ids = pipe._prepare_latent_image_ids(1, rows // 2, cols // 2, self.device, self.dtype)
        return T2IImage(geometry=geometry, latents=packed, ids=ids)

    # -- text ----------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> T2IText:
        """T5 + CLIP embeddings via the pipeline's ``encode_prompt``; T5 token offsets of the same tokenisation."""
        pipe = self.pipeline
        texts = list(texts)
        for text, ids in zip(texts, pipe.tokenizer_2(texts)["input_ids"]):
            if len(ids) > MAX_SEQUENCE_LENGTH:
                raise ExpressionError(f"Text too long: {len(ids)} T5 tokens, at most {MAX_SEQUENCE_LENGTH}: {text[:80]!r}...")
        encoded, embeds, pooled, ids = t5_encode(pipe, texts, self.device, MAX_SEQUENCE_LENGTH)
        num_real = [int(m.sum()) for m in encoded["attention_mask"]]
        return T2IText(
            texts=texts,
            embeds=embeds,
            pooled=pooled,
            ids=ids,
            input_ids=encoded["input_ids"].tolist(),
            offsets=[[tuple(map(int, o)) for o in row] for row in encoded["offset_mapping"].tolist()],
            num_real=num_real,
            encoder_texts=texts,
            starts=[0] * len(texts),
            tracked=[list(range(n)) for n in num_real],
            eos=[n - 1 for n in num_real],
        )

    # -- schedule and trajectory ----------------------------------------------------------------
    def schedule(self, image_len: int, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's ``(timesteps, sigmas)`` for ``num_steps`` steps at ``image_len`` tokens
        (``sigmas`` has the terminal 0 appended, as the scheduler keeps it)."""
        scheduler, timesteps = flux_schedule(self.pipeline.scheduler, image_len, num_steps, self.device)
        return timesteps, scheduler.sigmas.to(self.device)

    def velocity(self, latents: torch.Tensor, timestep: torch.Tensor, text: T2IText, image: T2IImage) -> torch.Tensor:
        """The transformer's output ``v`` at ``timestep`` (in [0, 1000]), exactly as the pipeline calls it."""
        batch = latents.shape[0]
        guidance = embedded_guidance(self.pipeline.transformer, self.guidance_scale, batch, latents.device)
        t = timestep.expand(batch).to(latents.dtype)
        return self.pipeline.transformer(
            hidden_states=latents,
            timestep=t / 1000,
            guidance=guidance,
            pooled_projections=text.pooled.expand(batch, -1),
            encoder_hidden_states=text.embeds.expand(batch, -1, -1),
            txt_ids=text.ids,
            img_ids=image.ids,
            return_dict=False,
        )[0]

    def noise(self, image: T2IImage, seed: int) -> torch.Tensor:
        """ε ~ N(0, I) of the packed latent shape, drawn on the CPU from ``seed``."""
        generator = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(image.latents.shape, generator=generator, dtype=torch.float32).to(self.device, self.dtype)

    def invert(
        self,
        image: T2IImage,
        text: T2IText,
        timesteps: torch.Tensor,
        sigmas: torch.Tensor,
        stop_index: int,
        gamma: float = 0.0,
        seed: int = 0,
    ) -> torch.Tensor:
        """Rectified-flow inversion of ``x0`` up the schedule to ``sigmas[stop_index]``.

        Euler steps from σ = 0 through the schedule's sigmas in reverse, ``Y ← Y + (σ' − σ) v̂``,
        with Rout et al.'s controlled field ``v̂ = v + γ (u − v)``, ``u = (y₁ − Y) / (1 − σ)`` towards
        a fixed noise sample ``y₁`` (seeded). ``γ = 0`` is the plain (naive) Euler reversal."""
        latents = image.latents.clone()
        target = self.noise(image, seed) if gamma else None
        n = len(timesteps)
        path = list(range(n, stop_index, -1))  # scheduler indices from the clean end (σ_n = 0) upwards
        with torch.inference_mode():
            for index in path:
                sigma, sigma_next = sigmas[index], sigmas[index - 1]
                timestep = timesteps[index] if index < n else torch.zeros((), device=latents.device)
                v = self.velocity(latents, timestep, text, image).float()
                if gamma:
                    u = (target.float() - latents.float()) / (1 - sigma)
                    v = v + gamma * (u - v)
                latents = (latents.float() + (sigma_next - sigma) * v).to(latents.dtype)
        return latents

    def noised(self, image: T2IImage, sigma: torch.Tensor, seed: int) -> torch.Tensor:
        """The forward process without inversion: ``X_σ = (1 − σ) X₀ + σ ε``."""
        noise = self.noise(image, seed)
        return ((1 - sigma) * image.latents.float() + sigma * noise.float()).to(self.dtype)

    # -- probed forward --------------------------------------------------------------------------
    def layout_for(self, image: T2IImage, text: T2IText) -> T2ILayout:
        return T2ILayout(text_len=text.text_len, image_len=image.latents.shape[1], grid=image.geometry.grid)

    def probe_forward(
        self, latents: torch.Tensor, timestep: torch.Tensor, text: T2IText, image: T2IImage, plan: TokenProbePlan
    ) -> TokenAttentionRecorder:
        """One transformer forward on ``latents`` at ``timestep`` conditioned on ``text`` (batch B),
        with the per-token probes installed."""
        recorder = TokenAttentionRecorder(plan)
        batch = text.embeds.shape[0]
        with torch.inference_mode(), token_probes_installed(self.pipeline.transformer, recorder):
            self.velocity(latents.expand(batch, -1, -1), timestep, text, image)
        return recorder


def check_source(source: str) -> None:
    """Every ``FluxPipeline`` checkpoint (FLUX.1 [dev] / [schnell] layouts) can be served."""


def load_pipeline(source: str, dtype: torch.dtype):
    """``FluxPipeline.from_pretrained`` (raises OSError/ValueError when weights are missing)."""
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(source, dtype=dtype)
