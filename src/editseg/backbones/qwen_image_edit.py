"""Qwen-Image-Edit (and Qwen-Image-Edit-2509) through diffusers' ``QwenImageEditPipeline`` /
``QwenImageEditPlusPipeline`` and ``QwenImageTransformer2DModel``.

Facts this module relies on (diffusers 0.42.1, ``pipelines/qwenimage/pipeline_qwenimage_edit*.py``
and ``models/transformers/transformer_qwenimage.py``):

- Resolution: the input is resized (no crop) to ``calculate_dimensions(1024*1024, w/h)``: about
  1 MP, aspect kept, each side rounded to a multiple of 32, small images are enlarged too. The
  VAE (``AutoencoderKLQwenImage``, a video VAE with a frame axis) is 8x down, latents are
  normalised with ``latents_mean``/``latents_std`` and packed 2x2, so one token is 16x16 px.
- The text encoder Qwen2.5-VL SEES the image: the prompt template holds a system prefix and
  vision placeholder tokens. The pipeline keeps the last hidden layer of the valid tokens and
  DROPS the first ``prompt_template_encode_start_idx`` (64) tokens, i.e. the system prefix and
  ``<|im_start|>user\\n``. The transformer's text stream is therefore
  ``<|vision_start|> <|image_pad|>xN <|vision_end|> instruction <|im_end|> \\n <|im_start|>
  assistant \\n`` (Edit-2509 adds ``Picture 1: `` before the vision tokens). The VLM looks at the
  same resized image (Edit) or at a ~384x384 copy (2509, ``CONDITION_IMAGE_SIZE``).
- 3-D positions: under transformers 5 Qwen2.5-VL builds its image tokens' M-RoPE positions only
  when given ``mm_token_type_ids``; the pipelines do not pass them (diffusers issue #14194, fix
  pending in PR #14189) and so silently run the VLM with 1-D positions. editseg passes the
  processor's ``mm_token_type_ids`` by default (``mrope=True``: the model as trained, and what the
  fixed pipeline computes), deliberately diverging from today's pipeline; ``mrope=False`` calls the
  pipeline's own encoder (bit-identical to today's ``QwenImageEdit*Pipeline``).
- Text is not padded to a fixed length: a batch is zero-padded to its longest prompt and the
  pipeline passes ``encoder_hidden_states_mask`` (``None`` when nothing is padded), which the
  attention turns into a key mask.
- 60 double-stream blocks, no single-stream blocks; processor ``QwenDoubleStreamAttnProcessor2_0``;
  joint order ``[text | image]`` with the image stream ``[noisy | clean]``, so the layout is
  ``[text | noisy | clean]``. RoPE: ``QwenEmbedRope`` gives complex (video, text) frequencies,
  applied per stream with ``apply_rotary_emb_qwen(use_real=False)``; the text positions start
  after the largest image half-extent and run over the padded length (diffusers 0.42 takes no
  ``txt_seq_lens``: the mask and ``img_shapes`` are all the transformer needs).
- First step: sigma 1 → timestep 1000, passed to the transformer as ``timestep / 1000``.
- ``true_cfg_scale``: the pipeline runs a second, negative-prompt forward only when a negative
  prompt is given. editseg runs the conditional forward only: the probes read the attention of the
  pass that sees the instruction.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers.models.transformers.transformer_qwenimage import (
    QwenDoubleStreamAttnProcessor2_0,
    apply_rotary_emb_qwen,
)
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions
from PIL import Image

from ..config import BlockSelection
from ..catalog import QWEN_IMAGE_EDIT
from ..errors import ConfigError, ExpressionError, ImageLoadError, UnsupportedModelError
from ..geometry import ImageGeometry
from ..probing.recorder import ProbeRecorder, TokenLayout
from ..text import PromptTokens, align_prompt
from .base import Backbone, EncodedText, PreparedImage
from .switches import Switch
from ..probing.processors import ProbeProcessor, swapped_processors
from .flux_inputs import FluxPipelineParts, flux_schedule
from .trajectory import denoised_step_inputs

VAE_AREA = 1024 * 1024  # QwenImageEditPipeline.__call__ and VAE_IMAGE_SIZE of the Plus pipeline
CONDITION_AREA = 384 * 384  # CONDITION_IMAGE_SIZE of QwenImageEditPlusPipeline
PLUS_IMAGE_PROMPT = "Picture 1: <|vision_start|><|image_pad|><|vision_end|>"  # one image
FEATURE_DEPTH = 40 / 57  # paper: block 40 of 57 on Step1X-Edit (20 of 32 on FLUX.2-klein: ~2/3 too)


def _dimensions(area: int, size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) from the pipelines' own ``calculate_dimensions`` (multiples of 32)."""
    width, height = calculate_dimensions(area, size[0] / size[1])[:2]
    return int(width), int(height)


class QwenDoubleStreamProbeProcessor(ProbeProcessor):
    """``QwenDoubleStreamAttnProcessor2_0`` plus probes: same projections, QK-norm, RoPE and mask."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb=None,
    ):
        if encoder_hidden_states is None:
            raise ValueError("QwenDoubleStreamProbeProcessor requires encoder_hidden_states (text stream)")
        if attention_mask is not None:
            raise ValueError("QwenDoubleStreamProbeProcessor does not accept an external attention_mask.")
        layout = self.recorder.layout
        self.recorder.record_feature("adaln", self.block, hidden_states[:, layout.clean_in_image_stream])
        if encoder_hidden_states_mask is not None:
            image_mask = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
            attention_mask = torch.cat([encoder_hidden_states_mask, image_mask], dim=1)[:, None, None, :]
        seq_txt = encoder_hidden_states.shape[1]

        head_dim = attn.inner_dim // attn.heads
        img_q, img_k, img_v = (
            proj(hidden_states).unflatten(-1, (-1, head_dim)) for proj in (attn.to_q, attn.to_k, attn.to_v)
        )
        txt_q, txt_k, txt_v = (
            proj(encoder_hidden_states).unflatten(-1, (-1, head_dim))
            for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        )
        if attn.norm_q is not None:
            img_q = attn.norm_q(img_q)
        if attn.norm_k is not None:
            img_k = attn.norm_k(img_k)
        if attn.norm_added_q is not None:
            txt_q = attn.norm_added_q(txt_q)
        if attn.norm_added_k is not None:
            txt_k = attn.norm_added_k(txt_k)
        if image_rotary_emb is not None:
            img_freqs, txt_freqs = image_rotary_emb
            img_q = apply_rotary_emb_qwen(img_q, img_freqs, use_real=False)
            img_k = apply_rotary_emb_qwen(img_k, img_freqs, use_real=False)
            txt_q = apply_rotary_emb_qwen(txt_q, txt_freqs, use_real=False)
            txt_k = apply_rotary_emb_qwen(txt_k, txt_freqs, use_real=False)
        query = torch.cat([txt_q, img_q], dim=1)  # joint order [text | image]
        key = torch.cat([txt_k, img_k], dim=1)
        value = torch.cat([txt_v, img_v], dim=1)
        out = self.attend(query, key, value, attention_mask)
        self.recorder.record_feature("attn", self.block, out[:, layout.clean])

        txt_out, img_out = out[:, :seq_txt], out[:, seq_txt:]
        img_out = attn.to_out[0](img_out.contiguous())
        if len(attn.to_out) > 1:
            img_out = attn.to_out[1](img_out)
        return img_out, attn.to_add_out(txt_out.contiguous())


def probes_installed(transformer, recorder: ProbeRecorder):
    """Swap every block's attention processor for a probing one (and hook block outputs) for one forward."""
    rows = recorder.layout.clean_in_image_stream  # each block returns (text, [noisy | clean])
    return swapped_processors(
        list(transformer.transformer_blocks),
        recorder,
        lambda index, original: QwenDoubleStreamProbeProcessor(index, recorder, original),
        lambda index: QwenDoubleStreamAttnProcessor2_0,
        lambda index, output: output[1][:, rows],
    )


class QwenImageEditBackbone(FluxPipelineParts, Backbone):
    """Qwen-Image-Edit around a loaded ``QwenImageEditPipeline`` or ``QwenImageEditPlusPipeline``.

    ``vae_area`` / ``condition_area`` are the pipelines' target areas (1024² for the VAE image;
    384² for the image the VLM sees in the Plus pipeline); tests shrink them for tiny models.
    """

    text_sees_image = True  # Qwen2.5-VL encodes the instruction with the image: never cached
    switches = {
        "mrope": Switch(bool, True, "3-D VLM positions for image tokens as the model was trained; false: today's diffusers pipeline"),
    }

    def __init__(
        self,
        pipeline,
        name: str,
        is_random: bool = False,
        default_max_side: int | None = None,
        vae_area: int = VAE_AREA,
        condition_area: int = CONDITION_AREA,
        mrope: bool = True,
    ):
        class_name = type(pipeline).__name__
        if class_name not in PIPELINE_CLASS_NAMES:
            raise UnsupportedModelError(
                f"{name} loaded a {class_name}; editseg's Qwen backbone serves {', '.join(PIPELINE_CLASS_NAMES)}."
            )
        self.bind_pipeline(pipeline, name, is_random, default_max_side)  # no single-stream blocks
        self.vae_area = vae_area
        self.condition_area = condition_area
        self.mrope = mrope
        self.is_plus = class_name == "QwenImageEditPlusPipeline"
        self._last_image: PreparedImage | None = None

    @property
    def default_feature_block(self) -> int:
        """Feature block l' (0-based). The paper gives none for this model; we keep its depth
        fraction 40/57 (Step1X-Edit; 20/32 on FLUX.2-klein is about the same): 42 of 60."""
        return min(self.num_blocks - 1, round(self.num_blocks * FEATURE_DEPTH))

    def resolve_blocks(self, selection: BlockSelection) -> frozenset[int]:
        """As :meth:`Backbone.resolve_blocks`; every block is double-stream, so ``double`` equals
        ``all`` and ``single`` (an empty set here) is refused."""
        if selection == "single":
            raise ConfigError(
                f"{self.name} has no single-stream blocks ({self.num_double_blocks} double-stream blocks only): "
                "use attention_blocks 'all' (= 'double') or explicit block indices."
            )
        return super().resolve_blocks(selection)

    # -- image ---------------------------------------------------------------------------------
    def preprocess_geometry(self, size: tuple[int, int], max_side: int | None = None) -> ImageGeometry:
        """The pipeline's rule: resize (no crop) to ``calculate_dimensions(1 MP, aspect)``. ``max_side``
        (ours, optional; not a pipeline option) lowers the target area so that the longer side is
        about ``max_side`` (still multiples of 32)."""
        area = self.vae_area
        if max_side is not None:
            long_side, short_side = max(size), min(size)
            area = min(area, round(max_side * max_side * short_side / long_side))
        width, height = _dimensions(area, size)
        if width < self.patch or height < self.patch:
            raise ImageLoadError(f"{self.name} cannot take a {size[0]}x{size[1]} image at this size (max_side too small?).")
        return ImageGeometry(input_size=size, resized_size=(width, height), crop=(0, 0, width, height), patch=self.patch)

    def prepare_image(self, image: Image.Image, max_side: int | None = None) -> PreparedImage:
        pipe = self.pipeline
        processor = pipe.image_processor
        geometry = self.preprocess_geometry(image.size, max_side or self.default_max_side)
        width, height = geometry.resized_size
        if self.is_plus:  # the VLM sees a ~384² copy; the VAE the ~1 MP image
            cond_w, cond_h = _dimensions(self.condition_area, image.size)
            condition = processor.resize(image, cond_h, cond_w)
            pixels = processor.preprocess(image, height, width).unsqueeze(2)
        else:  # the VLM and the VAE see the same resized image
            condition = processor.resize(image, height, width)
            pixels = processor.preprocess(condition, height, width).unsqueeze(2)
        dtype = pipe.text_encoder.dtype  # the pipeline casts the image to the prompt embeddings' dtype
        latents = pipe._encode_vae_image(pixels.to(device=self.device, dtype=dtype), generator=None)
        channels, latent_h, latent_w = latents.shape[1], latents.shape[3], latents.shape[4]
        packed = pipe._pack_latents(latents, 1, channels, latent_h, latent_w)
        # the noisy latents: the pipeline floors the target size to multiples of vae_scale_factor * 2
        noisy = (height // self.patch * self.patch, width // self.patch * self.patch)
        vsf = pipe.vae_scale_factor
        img_shapes = [(1, noisy[0] // vsf // 2, noisy[1] // vsf // 2), (1, height // vsf // 2, width // vsf // 2)]
        vision = pipe.processor.image_processor(images=[condition], return_tensors="pt")
        merge = pipe.processor.image_processor.merge_size
        prepared = PreparedImage(
            geometry=geometry,
            tensors={
                "latents": packed,
                "condition": condition,
                "img_shapes": img_shapes,
                "noisy_size": noisy,
                "vision_tokens": int(vision["image_grid_thw"][0].prod()) // merge**2,
            },
        )
        self._last_image = prepared
        return prepared

    # -- text ----------------------------------------------------------------------------------
    def encoder_text(self, instruction: str) -> str:
        """The full text given to the processor (before ``<|image_pad|>`` is expanded)."""
        content = PLUS_IMAGE_PROMPT + instruction if self.is_plus else instruction
        return self.pipeline.prompt_template_encode.format(content)

    def encode_text(
        self, expressions: Sequence[str], instructions: Sequence[str], image: PreparedImage | None = None
    ) -> EncodedText:
        """Encode each instruction with the pipeline's own ``_get_qwen_prompt_embeds`` (one call per
        instruction, i.e. the pipeline's batch-of-one encoding, so results do not depend on the batch),
        then zero-pad to the longest and build the padding mask as ``encode_prompt`` does.

        The VLM sees the image: ``image`` defaults to the latest :meth:`prepare_image` result."""
        image = image or self._last_image
        if image is None:
            raise ConfigError(f"{self.name} encodes text together with the image: call prepare_image first.")
        pipe = self.pipeline
        condition = image.tensors["condition"]
        drop = pipe.prompt_template_encode_start_idx
        embeds, prompts = [], []
        for expression, instruction in zip(expressions, instructions):
            images = [condition] if self.is_plus else condition
            if self.mrope:
                hidden = self.prompt_embeds(instruction, images)
            else:
                hidden, _ = pipe._get_qwen_prompt_embeds([instruction], images, self.device)
            prompts.append(self._align(expression, instruction, image, drop, hidden.shape[1]))
            embeds.append(hidden[0])
        lengths = [e.shape[0] for e in embeds]
        length = max(lengths)
        stacked = torch.stack([torch.cat([e, e.new_zeros(length - e.shape[0], e.shape[1])]) for e in embeds])
        mask = (torch.arange(length)[None] < torch.tensor(lengths)[:, None]).long().to(stacked.device)
        for prompt in prompts:
            pad = length - len(prompt.offsets)
            prompt.offsets.extend([(0, 0)] * pad)
            prompt.input_ids.extend([pipe.tokenizer.pad_token_id or 0] * pad)
        return EncodedText(
            prompts=prompts,
            tensors={"embeds": stacked, "mask": None if bool(mask.all()) else mask, "image": image},
        )

    @torch.no_grad()
    def prompt_embeds(self, instruction: str, images) -> torch.Tensor:
        """(1, L, D) text-stream embeddings of one instruction: the pipeline's
        ``_get_qwen_prompt_embeds`` for a batch of one, plus ``mm_token_type_ids`` so that the VLM
        uses its 3-D image positions (see the module docstring)."""
        pipe = self.pipeline
        encoder = pipe.text_encoder
        inputs = pipe.processor(text=[self.encoder_text(instruction)], images=images, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        token_types = inputs.get("mm_token_type_ids")
        if token_types is None:  # processors before transformers 5 do not return them
            token_types = (inputs["input_ids"] == encoder.config.image_token_id).int()
        output = encoder(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            mm_token_type_ids=token_types,
            output_hidden_states=True,
        )
        keep = inputs["attention_mask"][0].bool()
        hidden = output.hidden_states[-1][0][keep][pipe.prompt_template_encode_start_idx :]
        return hidden[None].to(encoder.dtype)

    def _align(self, expression: str, instruction: str, image: PreparedImage, drop: int, kept: int) -> PromptTokens:
        """Map the instruction's words to positions of the transformer's text stream: the tokens
        left after the pipeline drops the first ``drop`` (system prefix), with the image tokens
        expanded as the processor does."""
        tokenizer = self.pipeline.tokenizer
        image_token = self.pipeline.processor.image_token
        text = self.encoder_text(instruction).replace(image_token, image_token * image.tensors["vision_tokens"])
        encoded = tokenizer(text, return_offsets_mapping=True)
        ids, offsets = list(encoded["input_ids"]), [tuple(map(int, o)) for o in encoded["offset_mapping"]]
        if len(ids) - drop != kept:
            raise ExpressionError(
                f"Token map mismatch for {instruction!r}: {len(ids) - drop} tokens expected in the text stream, "
                f"the pipeline produced {kept}."
            )
        start = offsets[drop][0]  # the text stream begins here; its text and offsets start at 0
        stream_offsets = [(max(a - start, 0), max(b - start, 0)) if b > a else (0, 0) for a, b in offsets[drop:]]
        prompt = align_prompt(expression, instruction, text[start:], ids[drop:], stream_offsets, kept)
        missing = [w.text for w in prompt.words if w.in_expression and not w.token_indices]
        if missing:
            raise ExpressionError(f"Words {missing} of {expression!r} have no tokens in the transformer's text stream.")
        return prompt

    # -- forward -------------------------------------------------------------------------------
    def first_step_inputs(self, image: PreparedImage, text: EncodedText, seed: int) -> dict:
        """The transformer's keyword arguments at the first denoising step (sigma 1, timestep 1000)."""
        if text.tensors["image"] is not image:
            raise ConfigError("The text was encoded with another image; the VLM text encoder sees the image.")
        pipe = self.pipeline
        transformer = pipe.transformer
        if transformer.config.guidance_embeds:
            raise UnsupportedModelError(f"{self.name}: guidance-distilled Qwen-Image transformers are not supported.")
        embeds = text.tensors["embeds"]
        batch = embeds.shape[0]
        height, width = image.tensors["noisy_size"]
        generator = torch.Generator("cpu").manual_seed(seed)
        noise, _ = pipe.prepare_latents(
            None, 1, transformer.config.in_channels // 4, height, width, embeds.dtype, self.device, generator
        )
        # One noise draw shared by the batch: an expression's result must not depend on its batch.
        clean = image.tensors["latents"].to(device=noise.device, dtype=noise.dtype)
        hidden = torch.cat([noise, clean], dim=1).expand(batch, -1, -1)
        timestep = torch.full((batch,), 1000.0, device=noise.device).to(noise.dtype) / 1000
        return {
            "hidden_states": hidden,
            "timestep": timestep,
            "guidance": None,
            "encoder_hidden_states_mask": text.tensors["mask"],
            "encoder_hidden_states": embeds,
            "img_shapes": [list(image.tensors["img_shapes"])] * batch,
            "attention_kwargs": {},
        }

    def step_inputs(
        self, image: PreparedImage, text: EncodedText, seed: int, step_index: int = 0, num_steps: int = 28
    ) -> dict:
        """Transformer kwargs at step ``step_index`` of a ``num_steps`` schedule.

        Step 0 is :meth:`first_step_inputs`. Later steps first denoise with the pipeline's own
        schedule (linear sigmas, ``calculate_shift`` of the noisy-token count, its scheduler), with
        the conditional prediction only: the pipeline applies ``true_cfg_scale`` only when given a
        negative prompt, and by default it is not.
        """
        inputs = self.first_step_inputs(image, text, seed)
        if step_index == 0:
            return inputs
        _, rows, cols = image.tensors["img_shapes"][0]
        noisy_len = rows * cols
        scheduler, timesteps = flux_schedule(self.pipeline.scheduler, noisy_len, num_steps, self.device)  # the same rule
        key = self.trajectories.key(image, text, seed, num_steps)
        return denoised_step_inputs(
            self.pipeline.transformer, self.trajectories, key, inputs, noisy_len, scheduler, timesteps, step_index
        )

    def layout_for(self, image: PreparedImage, text: EncodedText) -> TokenLayout:
        clean = image.tensors["latents"].shape[1]
        _, rows, cols = image.tensors["img_shapes"][0]
        return TokenLayout(text_len=text.text_len, noisy_len=rows * cols, clean_len=clean, grid=image.geometry.grid)

    def probes_installed(self, recorder: ProbeRecorder):
        return probes_installed(self.pipeline.transformer, recorder)


ALIASES = QWEN_IMAGE_EDIT.aliases  # the names live in editseg.catalog (listed without importing this module)
PIPELINE_CLASS_NAMES = QWEN_IMAGE_EDIT.pipeline_class_names
WEIGHTS_HINT = (
    "Qwen-Image-Edit weights (Apache-2.0, not gated; about 58 GB in bfloat16: a 20B transformer and the "
    "Qwen2.5-VL-7B text encoder) download from the Hugging Face hub (`hf download Qwen/Qwen-Image-Edit`). "
    "Loading its Qwen2VLProcessor needs torchvision (transformers' Qwen2-VL video processor imports it)."
)


def load_pipeline(source: str, dtype: torch.dtype):
    """``DiffusionPipeline.from_pretrained`` (the class comes from ``model_index.json``)."""
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(source, dtype=dtype)
    except ImportError as error:  # transformers' Qwen2-VL video processor needs torchvision
        raise OSError(f"{error} (Qwen-Image-Edit's Qwen2VLProcessor needs torchvision: pip install torchvision)") from None


def make_backbone(pipeline, name: str) -> QwenImageEditBackbone:
    return QwenImageEditBackbone(pipeline, name=name)


def check_source(source: str) -> None:
    """Nothing to refuse: both pipelines keep full joint attention between text and image tokens."""
