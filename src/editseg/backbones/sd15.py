"""Stable Diffusion 1.5 as a text-to-image attention backbone (Ref-Diff's generative model).

A real image enters the diffusion process as in diffusers' ``StableDiffusionImg2ImgPipeline``:
the image is VAE-encoded (a posterior sample, times the VAE's scaling factor), noised with
``scheduler.add_noise`` to the first of the last ``t`` timesteps of a ``num_inference_steps``
DDIM schedule, and denoised for those ``t`` steps with classifier-free guidance, while
cross-attention probes (``editseg.probing.cross_attention``) record the maps of chosen text
tokens. Text encoding is the pipeline's own ``encode_prompt``. With the same generator, the
latents after the loop equal the img2img pipeline's (``strength = t / num_inference_steps``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..components.loading import default_device, load_resolved
from ..probing.cross_attention import CrossAttentionRecorder, probing_cross_attention

SD15_ALIASES = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd-1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}
DEFAULT_SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY_SD15 = "tiny-random-sd15"
TINY_SD15_SIDE = 64
PAPER_SIDE = 1024  # Ref-Diff: "All test images are resized and padded to the resolution of 1024 x 1024"


@dataclass(frozen=True)
class SquareFrame:
    """Where the input (``width`` x ``height``) sits in the padded square of side ``side``."""

    width: int
    height: int
    side: int
    left: int
    top: int

    @classmethod
    def for_size(cls, width: int, height: int) -> "SquareFrame":
        side = max(width, height)
        return cls(width, height, side, (side - width) // 2, (side - height) // 2)


def pad_to_square(image: Image.Image, fill: tuple[int, int, int] = (0, 0, 0)) -> tuple[Image.Image, SquareFrame]:
    """The image centred on a ``fill`` square of side ``max(width, height)``."""
    frame = SquareFrame.for_size(*image.size)
    square = Image.new("RGB", (frame.side, frame.side), fill)
    square.paste(image.convert("RGB"), (frame.left, frame.top))
    return square, frame


def map_to_input(token_map: torch.Tensor, frame: SquareFrame) -> torch.Tensor:
    """(rows, cols) map over the padded square → bilinear to ``side`` x ``side`` → the input's crop (H, W)."""
    full = torch.nn.functional.interpolate(
        token_map[None, None].float(), size=(frame.side, frame.side), mode="bilinear", align_corners=False
    )[0, 0]
    return full[frame.top : frame.top + frame.height, frame.left : frame.left + frame.width]


def sd15_scheduler_config() -> dict:
    """The noise schedule of Stable Diffusion 1.x (its ``scheduler_config.json``)."""
    return dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
    )


def build_tiny_sd15_pipeline(seed: int = 0):
    """A ``StableDiffusionPipeline`` with tiny random components (CPU, float32, no downloads):
    3-level UNet with cross-attention at every level, 2x VAE, CLIP text encoder, DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..components.tiny import tiny_clip_tokenizer

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).eval()
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32), latent_channels=4, norm_num_groups=16, layers_per_block=1, sample_size=64,
    ).eval()
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**sd15_scheduler_config()), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class StableDiffusion15:
    """SD 1.x weights and the img2img-style probed denoising that Ref-Diff's generative process needs."""

    kind = "unet"

    def __init__(self, pipeline, name: str = "", is_random: bool = False, image_side: int = PAPER_SIDE):
        from diffusers import DDIMScheduler

        self.pipeline = pipeline
        self.name = name
        self.is_random = is_random
        self.image_side = image_side
        self.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)

    @classmethod
    def from_pretrained(
        cls, model: str = DEFAULT_SD15, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> "StableDiffusion15":
        """Load SD 1.x (hub id, alias ``sd15``, local folder or ``tiny-random-sd15``)."""
        device = default_device(device)
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        if model == TINY_SD15:
            pipeline = build_tiny_sd15_pipeline().to(device)
            if dtype != torch.float32:
                pipeline = pipeline.to(dtype=dtype)
            return cls(pipeline, name=TINY_SD15, is_random=True, image_side=TINY_SD15_SIDE)
        from diffusers import StableDiffusionPipeline

        pipeline = load_resolved(
            "Stable Diffusion 1.5 pipeline", model, SD15_ALIASES,
            lambda src: StableDiffusionPipeline.from_pretrained(src, dtype=dtype, safety_checker=None, requires_safety_checker=False),
        ).to(device)  # fmt: skip
        pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline, name=model)

    @property
    def device(self) -> torch.device:
        return self.pipeline.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.unet.dtype

    @property
    def tokenizer(self):
        return self.pipeline.tokenizer

    def prepare_image(self, image: Image.Image, side: int | None = None) -> tuple[Image.Image, SquareFrame]:
        """Pad to a black square and resize to ``side`` (default ``image_side``; Lanczos), as Ref-Diff does."""
        square, frame = pad_to_square(image)
        side = side or self.image_side
        return square.resize((side, side), Image.LANCZOS), frame

    @torch.no_grad()
    def encode_image(self, square: Image.Image, generator: torch.Generator) -> torch.Tensor:
        """(1, C, h, w) scaled latents: a VAE posterior sample drawn with ``generator`` (img2img's order)."""
        pixels = self.pipeline.image_processor.preprocess(square).to(device=self.device, dtype=self.dtype)
        posterior = self.pipeline.vae.encode(pixels).latent_dist
        return posterior.sample(generator) * self.pipeline.vae.config.scaling_factor

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], guidance: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(prompt_embeds, negative_embeds)`` from the pipeline's own ``encode_prompt`` (empty negative prompt)."""
        return self.pipeline.encode_prompt(prompts, self.device, 1, guidance, negative_prompt=None)

    def timesteps(self, num_inference_steps: int, steps: int) -> torch.Tensor:
        """The last ``steps`` timesteps of a ``num_inference_steps`` DDIM schedule (img2img's slice)."""
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        return self.scheduler.timesteps[num_inference_steps - steps :]

    @torch.no_grad()
    def probe(
        self,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        recorder: CrossAttentionRecorder,
        *,
        steps: int,
        num_inference_steps: int,
        guidance_scale: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Noise ``latents`` (1, C, h, w) to the start of the last ``steps`` steps and denoise them for
        every prompt (batch B) with ``recorder`` installed; returns the final (B, C, h, w) latents.

        With guidance the UNet batch is ``[negative (B) | prompt (B)]``, as in diffusers.
        """
        if not 1 <= steps <= num_inference_steps:
            raise ValueError(f"steps must be in [1, {num_inference_steps}], got {steps}")
        timesteps = self.timesteps(num_inference_steps, steps)
        noise = torch.randn(latents.shape, generator=generator, device=generator.device, dtype=latents.dtype).to(self.device)
        batch = prompt_embeds.shape[0]
        current = self.scheduler.add_noise(latents, noise, timesteps[:1]).expand(batch, -1, -1, -1)
        guided = negative_embeds is not None
        context = torch.cat([negative_embeds, prompt_embeds]) if guided else prompt_embeds
        with probing_cross_attention(self.pipeline.unet, recorder):
            for t in timesteps:
                model_input = torch.cat([current, current]) if guided else current
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise_pred = self.pipeline.unet(model_input, t, encoder_hidden_states=context).sample
                if guided:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                current = self.scheduler.step(noise_pred, t, current, eta=0.0).prev_sample
        return current


def token_ids(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` as the SD pipeline tokenises it (BOS first) and each token's character span."""
    encoded = tokenizer(text, truncation=True, max_length=tokenizer.model_max_length, return_offsets_mapping=True)
    return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]


def chars_to_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens whose character span overlaps ``[start, end)`` (special tokens excluded)."""
    return [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]


def image_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))
