"""FLUX.2 [klein] as a text-to-image DiT for RefAM (our option; the paper uses FLUX.1 [dev]).

The image is encoded exactly as ``Flux2KleinPipeline`` encodes a reference image (its own image
processor, VAE with BatchNorm normalisation, patchify and pack, via :class:`Flux2KleinBackbone`),
and is then treated as the *generated* latent: position ids are the generated canvas's
``(0, row, col, 0)`` (``prepare_latents``), not the reference's time-offset ids. Text is the
pipeline's Qwen3 chat template (hidden layers 9/18/27, 512 tokens); the schedule is the pipeline's
(linear sigmas, ``compute_empirical_mu``); distilled models run without guidance, base models with
the pipeline's classifier-free guidance (empty negative prompt, scale 4.0).

The expression's tokens sit inside the chat template: the tracked tokens are the prompt's own
tokens plus the ``<|im_end|>`` that closes the user turn (the end-of-sequence analogue, filtered).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..probing.recorder import TokenLayout
from ..probing.token_attention import EditorTokenProbe, TokenAttentionRecorder, TokenProbePlan
from .flux1_t2i import FluxT2IBackbone, T2IImage, T2IText
from .flux2 import GUIDANCE_SCALE, Flux2KleinBackbone, probes_installed

ALIASES = {
    "flux2-klein-4b-t2i": "black-forest-labs/FLUX.2-klein-4B",
    "flux2-klein-9b-t2i": "black-forest-labs/FLUX.2-klein-9B",
}


class Flux2T2IBackbone(FluxT2IBackbone):
    """FLUX.2 [klein] text-to-image around a loaded ``Flux2KleinPipeline``."""

    def __init__(self, pipeline, name: str, is_random: bool = False, default_max_side: int | None = None):
        self.editor = Flux2KleinBackbone(pipeline, name=name, is_random=is_random, default_max_side=default_max_side)
        self.pipeline = pipeline
        self.name = name
        self.is_random = is_random
        self.default_max_side = default_max_side
        self.num_double_blocks = self.editor.num_double_blocks
        self.num_single_blocks = self.editor.num_single_blocks
        self.guidance_scale = 1.0 if pipeline.config.is_distilled else GUIDANCE_SCALE
        self._negative: T2IText | None = None

    @property
    def device(self) -> torch.device:
        return self.editor.device

    def prepare_image(self, image: Image.Image, max_side: int | None = None) -> T2IImage:
        prepared = self.editor.prepare_image(image, max_side)
        _, ids = self.editor.noise_latents(prepared.geometry, self.dtype, seed=0)
        return T2IImage(geometry=prepared.geometry, latents=prepared.tensors["latents"].to(self.dtype), ids=ids)

    def encode_text(self, texts: Sequence[str]) -> T2IText:
        texts = list(texts)
        encoded = self.editor.encode_text(texts, texts)
        prompts = encoded.prompts
        tracked, eos = [], []
        for prompt in prompts:
            own = list(prompt.indices("instruction"))
            closing = own[-1] + 1 if own and own[-1] + 1 < prompt.num_real_tokens else None
            tracked.append(own + ([closing] if closing is not None else []))
            eos.append(closing)
        return T2IText(
            texts=texts,
            embeds=encoded.tensors["embeds"],
            pooled=None,
            ids=encoded.tensors["ids"],
            input_ids=[p.input_ids for p in prompts],
            offsets=[p.offsets for p in prompts],
            num_real=[p.num_real_tokens for p in prompts],
            encoder_texts=[p.text for p in prompts],
            starts=[p.instruction_span[0] for p in prompts],
            tracked=tracked,
            eos=eos,
        )

    def schedule(self, image_len: int, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu, retrieve_timesteps

        scheduler = type(self.pipeline.scheduler).from_config(self.pipeline.scheduler.config)
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        mu = compute_empirical_mu(image_seq_len=image_len, num_steps=num_steps)
        timesteps, _ = retrieve_timesteps(scheduler, num_steps, self.device, sigmas=sigmas, mu=mu)
        return timesteps, scheduler.sigmas.to(self.device)

    def _call(self, latents: torch.Tensor, timestep: torch.Tensor, text: T2IText, image: T2IImage) -> torch.Tensor:
        batch = latents.shape[0]
        t = timestep.expand(batch).to(latents.dtype)
        return self.pipeline.transformer(
            hidden_states=latents.to(self.pipeline.transformer.dtype),
            timestep=t / 1000,
            guidance=None,
            encoder_hidden_states=text.embeds.expand(batch, -1, -1),
            txt_ids=text.ids.expand(batch, -1, -1),
            img_ids=image.ids.expand(batch, -1, -1),
            return_dict=False,
        )[0]

    def velocity(self, latents: torch.Tensor, timestep: torch.Tensor, text: T2IText, image: T2IImage) -> torch.Tensor:
        """The pipeline's prediction (with its CFG on undistilled models)."""
        prediction = self._call(latents, timestep, text, image)
        if self.guidance_scale <= 1:
            return prediction
        if self._negative is None:
            self._negative = self.encode_text([""])
        uncond = self._call(latents, timestep, self._negative, image)
        return uncond + self.guidance_scale * (prediction - uncond)

    def probe_forward(self, latents, timestep, text: T2IText, image: T2IImage, plan: TokenProbePlan) -> TokenAttentionRecorder:
        """One conditional forward (no CFG: the probes read the expression branch) with per-token probes."""
        recorder = TokenAttentionRecorder(plan)
        batch = text.embeds.shape[0]
        layout = TokenLayout(text_len=text.text_len, noisy_len=0, clean_len=image.latents.shape[1], grid=image.geometry.grid)
        with torch.inference_mode(), probes_installed(self.pipeline.transformer, EditorTokenProbe(layout, recorder)):
            self._call(latents.expand(batch, -1, -1), timestep, text, image)
        return recorder
