"""FLUX.1 Kontext [dev] through diffusers' ``FluxKontextPipeline`` / ``FluxTransformer2DModel``.

Facts read from diffusers 0.42.1 (``pipelines/flux/pipeline_flux_kontext.py``,
``models/transformers/transformer_flux.py``):

- 19 double-stream + 38 single-stream blocks (3072 wide, 24 heads of 128); one processor class,
  ``FluxAttnProcessor``, for both kinds; no attention mask.
- Text: the instruction as is (no template), T5-XXL last hidden state over 512 tokens padded
  with ``<pad>`` (``</s>`` after the prompt, no mask given to T5 or the transformer), plus the
  CLIP-L pooled output (77 tokens) as ``pooled_projections``; ``txt_ids`` are zeros (512, 3).
- Reference image: its size is floored to multiples of 16, its aspect snapped to the nearest of
  ``PREFERRED_KONTEXT_RESOLUTIONS`` (``_auto_resize=True``, ~1 MP buckets; a plain resize, not a
  crop), normalised to [-1, 1], VAE-encoded in "argmax" mode, ``(z - shift_factor) * scaling_factor``,
  packed 2x2 (``_pack_latents``); its ids are ``(1, row, col)``, the noisy tokens' ``(0, row, col)``.
- Joint sequence ``[text (512) | noisy | reference]``; the transformer is called with
  ``timestep = sigma = t / 1000`` (1.0 at the first step: ``sigmas = [1.0]`` is unchanged by the
  dynamic shift) and ``guidance = full([B], guidance_scale)`` (float32; default 3.5) at every step.
- The noisy canvas: ``pipe(image, prompt)`` with no size builds a 1024x1024 canvas whatever the
  reference's aspect (``height = width = default_sample_size * vae_scale_factor`` then fitted to
  ``max_area``). BFL's reference sampler (``flux/sampling.py: prepare_kontext``) instead makes the
  canvas the reference's size. Default here: ``noisy_canvas="reference"`` (identical to
  ``pipe(image, prompt, height=h, width=w, max_area=h * w)`` with ``(w, h)`` the reference size);
  ``noisy_canvas="pipeline"`` reproduces the pipeline's bare default.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections
from PIL import Image

from ..catalog import FLUX1_KONTEXT
from ..errors import ExpressionError, ImageLoadError
from ..geometry import ImageGeometry
from ..probing.recorder import ProbeRecorder, TokenLayout
from ..text import align_prompt, count_tokens
from .base import Backbone, EncodedText, PreparedImage
from ..probing.processors import ProbeProcessor, flux_joint_qkv, swapped_processors
from .flux_inputs import FluxPipelineParts, embedded_guidance, flux_schedule, t5_encode
from .trajectory import denoised_step_inputs

MAX_SEQUENCE_LENGTH = 512  # the pipeline's default (and maximum) T5 length
MAX_AREA = 1024 * 1024  # the pipeline's default ``max_area`` for the generated canvas
DEFAULT_GUIDANCE_SCALE = 3.5  # ``FluxKontextPipeline.__call__`` default (BFL's own CLI uses 2.5)
FEATURE_BLOCK = 40  # paper: l' = 40 of 57 on Step1X-Edit, whose DiT has the same 19 + 38 layout
NOISY_CANVASES = ("reference", "pipeline")


class FluxKontextProbeProcessor(ProbeProcessor):
    """``FluxAttnProcessor`` plus probes, for double-stream (text given) and single-stream blocks.

    q, k, v, QK-norm and RoPE exactly as the original; the attention itself goes through
    ``ProbeRecorder.attend`` with diffusers' ``dispatch_attention_fn`` (the processor's backend).
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        layout = self.recorder.layout
        # Double-stream blocks see the image stream [noisy | ref]; single-stream ones [text | noisy | ref].
        rows = layout.clean_in_image_stream if encoder_hidden_states is not None else layout.clean
        self.recorder.record_feature("adaln", self.block, hidden_states[:, rows])
        query, key, value, enc_query, enc_key, enc_value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        added = (enc_query, enc_key, enc_value) if attn.added_kv_proj_dim is not None else None
        query, key, value = flux_joint_qkv(attn, query, key, value, added, image_rotary_emb)
        out = self.attend(query, key, value, attention_mask)
        self.recorder.record_feature("attn", self.block, out[:, layout.clean])

        if encoder_hidden_states is None:
            return out
        text_len = encoder_hidden_states.shape[1]
        context_out, image_out = out.split_with_sizes([text_len, out.shape[1] - text_len], dim=1)
        image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
        return image_out, attn.to_add_out(context_out.contiguous())


def probes_installed(transformer, recorder: ProbeRecorder):
    """Swap every block's attention processor for a probing one (and hook block outputs) for one forward."""
    rows = recorder.layout.clean_in_image_stream  # both block kinds return (text, [noisy | ref])
    return swapped_processors(
        list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks),
        recorder,
        lambda index, original: FluxKontextProbeProcessor(index, recorder, original),
        lambda index: FluxAttnProcessor,
        lambda index, output: output[1][:, rows],
    )


def fit_to_area(width: int, height: int, max_area: int, multiple_of: int) -> tuple[int, int]:
    """The pipeline's rule for the generated canvas: keep the aspect of ``(width, height)``, scale
    to ``max_area`` pixels, floor each side to ``multiple_of``."""
    aspect_ratio = width / height
    fitted_w = round((max_area * aspect_ratio) ** 0.5)
    fitted_h = round((max_area / aspect_ratio) ** 0.5)
    return fitted_w // multiple_of * multiple_of, fitted_h // multiple_of * multiple_of


def preferred_resolution(width: int, height: int) -> tuple[int, int]:
    """The Kontext training bucket (width, height) nearest in aspect ratio (the pipeline's ``_auto_resize``)."""
    aspect_ratio = width / height
    # Imported here: the pipeline module pulls in image processors that log torchvision warnings.
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    _, best_w, best_h = min((abs(aspect_ratio - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    return best_w, best_h


class FluxKontextBackbone(FluxPipelineParts, Backbone):
    """FLUX.1 Kontext around a loaded ``FluxKontextPipeline`` (real weights or a tiny random model).

    ``guidance_scale``: the embedded guidance (pipeline default 3.5). ``auto_resize``: snap the
    reference to the preferred Kontext resolutions as the pipeline does (default True).
    ``noisy_canvas``: ``"reference"`` (noisy grid = reference grid) or ``"pipeline"`` (the
    pipeline's default canvas: 1024x1024, i.e. ``max_area`` pixels, whatever the reference);
    see the module docstring.
    """

    text_sees_image = False  # the text encoder reads the instruction only
    text_row_tensors = ("embeds", "pooled")  # "ids" (tokens, 3) serves the whole batch

    def __init__(
        self,
        pipeline,
        name: str,
        is_random: bool = False,
        default_max_side: int | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        auto_resize: bool = True,
        noisy_canvas: str = "reference",
        max_area: int = MAX_AREA,
    ):
        if noisy_canvas not in NOISY_CANVASES:
            raise ValueError(f"noisy_canvas must be one of {NOISY_CANVASES}, got {noisy_canvas!r}")
        self.bind_pipeline(pipeline, name, is_random, default_max_side)
        self.guidance_scale = guidance_scale
        self.auto_resize = auto_resize
        self.noisy_canvas = noisy_canvas
        self.max_area = max_area

    @property
    def default_feature_block(self) -> int:
        """l' = 40 (0-based, global: double-stream blocks 0-18, single-stream 19-56). The paper uses
        40 of 57 for Step1X-Edit, whose DiT is FLUX.1's 19 + 38 layout; other depths keep 40/57."""
        if self.num_blocks == 57:
            return FEATURE_BLOCK
        return min(self.num_blocks - 1, round(self.num_blocks * FEATURE_BLOCK / 57))

    # -- image ---------------------------------------------------------------------------------
    def preprocess_geometry(self, size: tuple[int, int], max_side: int | None = None) -> ImageGeometry:
        """The pipeline's rule: floor the size to multiples of 16, snap the aspect to the nearest
        preferred Kontext resolution (``auto_resize``), resize (no crop). ``max_side`` (ours,
        optional) then shrinks the result so that its longer side is at most ``max_side``
        (aspect kept, sides floored to multiples of 16)."""
        m = self.patch
        width, height = (side - side % m for side in size)  # get_default_height_width
        if width <= 0 or height <= 0:
            raise ImageLoadError(f"{self.name} needs images of at least {m}x{m} pixels; got {size[0]}x{size[1]}.")
        if self.auto_resize:
            width, height = preferred_resolution(width, height)
        width, height = width // m * m, height // m * m
        if max_side is not None and max(width, height) > max_side:
            scale = max_side / max(width, height)
            width = max(m, int(width * scale) // m * m)
            height = max(m, int(height * scale) // m * m)
        return ImageGeometry(input_size=size, resized_size=(width, height), crop=(0, 0, width, height), patch=m)

    def prepare_image(self, image: Image.Image, max_side: int | None = None) -> PreparedImage:
        pipe = self.pipeline
        processor = pipe.image_processor
        geometry = self.preprocess_geometry(image.size, max_side or self.default_max_side)
        width, height = geometry.resized_size
        resized = processor.resize(image, height, width)
        pixels = processor.preprocess(resized, height, width)
        dtype = pipe.text_encoder_2.dtype  # the pipeline encodes the image in prompt_embeds.dtype
        with torch.no_grad():
            _, latents, _, ids = pipe.prepare_latents(
                pixels,
                1,
                pipe.transformer.config.in_channels // 4,
                height,
                width,
                dtype,
                self.device,
                torch.Generator("cpu").manual_seed(0),  # unused for the image: the VAE is read in "argmax" mode
            )
        return PreparedImage(geometry=geometry, tensors={"latents": latents, "ids": ids, "pixels": pixels})

    def canvas_size(self, geometry: ImageGeometry) -> tuple[int, int]:
        """(width, height) in pixels of the noisy canvas (see ``noisy_canvas``)."""
        if self.noisy_canvas == "pipeline":
            side = self.pipeline.default_sample_size * self.pipeline.vae_scale_factor
            return fit_to_area(side, side, self.max_area, self.patch)
        width, height = geometry.resized_size
        return fit_to_area(width, height, width * height, self.patch)

    # -- text ----------------------------------------------------------------------------------
    def text_token_counts(self, instructions: Sequence[str]) -> tuple[list[int], int]:
        """T5 tokens of each instruction, and the 512 the pipeline reads."""
        return count_tokens(self.pipeline.tokenizer_2, list(instructions)), MAX_SEQUENCE_LENGTH

    def encode_text(
        self, expressions: Sequence[str], instructions: Sequence[str], image: PreparedImage | None = None
    ) -> EncodedText:
        """T5 embeddings (512 tokens), CLIP pooled embedding and text ids via the pipeline's
        ``encode_prompt``; token offsets from the same T5 tokenisation."""
        pipe = self.pipeline
        texts = list(instructions)
        full_lengths = count_tokens(pipe.tokenizer_2, texts)  # quietly: the clean error below says it all
        for expression, length in zip(expressions, full_lengths):
            if length > MAX_SEQUENCE_LENGTH:
                raise ExpressionError(
                    f"Expression too long: its instruction needs {length} T5 tokens, "
                    f"{self.name} reads at most {MAX_SEQUENCE_LENGTH}. Shorten it: {expression[:80]!r}..."
                )
        encoded, embeds, pooled, text_ids = t5_encode(pipe, texts, self.device, MAX_SEQUENCE_LENGTH)
        prompts = [
            align_prompt(expression, instruction, text, ids, offsets, int(mask.sum()))
            for expression, instruction, text, ids, offsets, mask in zip(
                expressions, instructions, texts, encoded["input_ids"], encoded["offset_mapping"], encoded["attention_mask"]
            )
        ]
        return EncodedText(prompts=prompts, tensors={"embeds": embeds, "pooled": pooled, "ids": text_ids})

    # -- forward -------------------------------------------------------------------------------
    def first_step_inputs(self, image: PreparedImage, text: EncodedText, seed: int) -> dict:
        """The transformer's keyword arguments at the first denoising step (sigma 1, timestep 1000)."""
        pipe = self.pipeline
        embeds = text.tensors["embeds"]
        batch = embeds.shape[0]
        canvas_w, canvas_h = self.canvas_size(image.geometry)
        generator = torch.Generator("cpu").manual_seed(seed)
        # One noise draw shared by the batch: an expression's result must not depend on its batch.
        noise, _, noise_ids, _ = pipe.prepare_latents(
            None,
            1,
            pipe.transformer.config.in_channels // 4,
            canvas_h,
            canvas_w,
            embeds.dtype,
            self.device,
            generator,
        )
        clean = image.tensors["latents"].to(noise.device, noise.dtype)
        hidden = torch.cat([noise, clean], dim=1).expand(batch, -1, -1)
        ids = torch.cat([noise_ids, image.tensors["ids"].to(noise_ids.device)], dim=0)
        timestep = torch.full((batch,), 1000.0, device=noise.device).to(noise.dtype) / 1000
        guidance = embedded_guidance(pipe.transformer, self.guidance_scale, batch, noise.device)
        return {
            "hidden_states": hidden,
            "timestep": timestep,
            "guidance": guidance,
            "pooled_projections": text.tensors["pooled"],
            "encoder_hidden_states": embeds,
            "txt_ids": text.tensors["ids"],
            "img_ids": ids,
        }

    def step_inputs(
        self, image: PreparedImage, text: EncodedText, seed: int, step_index: int = 0, num_steps: int = 28
    ) -> dict:
        """Transformer kwargs at step ``step_index`` of a ``num_steps`` schedule.

        Step 0 is :meth:`first_step_inputs`. Later steps first denoise with the pipeline's own
        sampler: sigmas ``linspace(1, 1/n, n)`` shifted by ``mu = calculate_shift(noisy tokens)``,
        flow-match Euler, embedded guidance only (Kontext [dev] is guidance-distilled; the
        pipeline's true CFG needs a negative prompt and is off by default).
        """
        inputs = self.first_step_inputs(image, text, seed)
        if step_index == 0:
            return inputs
        layout = self.layout_for(image, text)
        scheduler, timesteps = flux_schedule(self.pipeline.scheduler, layout.noisy_len, num_steps, self.device)
        key = self.trajectories.key(image, text, seed, num_steps)
        return denoised_step_inputs(
            self.pipeline.transformer, self.trajectories, key, inputs, layout.noisy_len, scheduler, timesteps, step_index
        )

    def layout_for(self, image: PreparedImage, text: EncodedText) -> TokenLayout:
        canvas_w, canvas_h = self.canvas_size(image.geometry)
        noisy = (canvas_h // self.patch) * (canvas_w // self.patch)
        clean = image.tensors["latents"].shape[1]
        return TokenLayout(text_len=text.text_len, noisy_len=noisy, clean_len=clean, grid=image.geometry.grid)

    def probes_installed(self, recorder: ProbeRecorder):
        return probes_installed(self.pipeline.transformer, recorder)


ALIASES = FLUX1_KONTEXT.aliases  # the names live in editseg.catalog (listed without importing this module)
PIPELINE_CLASS_NAMES = FLUX1_KONTEXT.pipeline_class_names
WEIGHTS_HINT = (
    "FLUX.1 Kontext [dev] weights are gated on the Hugging Face hub (FLUX.1 [dev] Non-Commercial License): "
    "accept the licence on the model page and log in (`hf auth login`), or copy the weights from a machine "
    "that has them."
)


def check_source(source: str) -> None:
    """Every ``FluxKontextPipeline`` checkpoint can be served."""


def load_pipeline(source: str, dtype: torch.dtype):
    """``FluxKontextPipeline.from_pretrained`` (raises OSError/ValueError when weights are missing)."""
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline.from_pretrained(source, dtype=dtype)


def make_backbone(pipeline, name: str) -> FluxKontextBackbone:
    return FluxKontextBackbone(pipeline, name=name)
