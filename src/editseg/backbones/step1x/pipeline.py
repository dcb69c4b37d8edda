"""Step1X-Edit inputs, prepared as the official inference code does (stepfun-ai/Step1X-Edit,
``inference.py`` and ``modules/conditioner.py``), and the weights loaders.

Image (``ImageGenerator.input_process_image``, ``generate_image``):
  resize (PIL default filter, bicubic; no crop) to about ``size_level``² pixels, each side floored
  to a multiple of 16; pixels in [0, 1] → ``2x - 1`` → FLUX.1 VAE (16 latent channels, 8x down,
  ``(z - 0.1159) * 0.3611``) → 2x2 packing ``(c ph pw)`` → 64 channels, one token per 16 px.
  Noisy and reference tokens get the SAME position ids ``(0, row, col)``; text ids are zeros.

Text (``Qwen25VL_7b_Embedder.forward``), one prompt at a time:
  chat = processor chat template of one user turn ``[PREFIX text, the image, instruction]``
  (default system prompt). The official call passes ``add_vision_id=True``, but its pinned
  transformers 4.49 drops that keyword silently, so the official text has NO "Picture 1: " before
  the vision tokens; editseg renders the template without it (5 tokens fewer than a
  transformers >= 4.56 rendering would give; ``add_vision_id=True`` is kept as an option). The VLM sees
  the reference image after ``ToPILImage`` (truncating ``x*255``) and qwen-vl-utils' resize to
  multiples of 28, then the processor's own resize within 256..324 × 28² pixels. Everything after
  the vision-end token is re-tokenised piecewise (double quotes — and apostrophes, turned into
  double quotes — after character 155 switch to one piece per character); the attention mask is
  ``ids > 0``, so "!" (id 0) is treated as padding: with the official FlashAttention-2 it is
  un-padded away in every layer (no token attends to it, it takes no position, its own attention
  output is zero), which :mod:`.id_zero` reproduces (``id_zero_padding=False`` on
  :meth:`Step1XPipeline.encode_prompt`: "!" as an ordinary token instead). The last hidden state (after the final norm) from token 217 on, at most 640 tokens,
  zero-padded to 640 with a 0/1 mask, goes to the connector. The DiT's text stream therefore holds
  the VLM's image tokens (from ``<|vision_start|>``), the instruction and the chat-template tail.
  The VLM runs with its 3-D (M-RoPE) positions for the image tokens, as under transformers 4.49:
  transformers 5 builds them only when given ``mm_token_type_ids`` (1 on image tokens), so
  :meth:`Step1XPipeline.encode_prompt` passes them (without, it silently falls back to 1-D positions).

VAE latent: the official autoencoder SAMPLES its posterior (``mean + std * randn``, unseeded);
editseg takes the mean by default (deterministic) and offers the official draw, seeded
(:meth:`Step1XPipeline.encode_image` ``sample=True``; ``Step1XEditBackbone.vae_latent``).

Timestep: sigma = t = 1.0 at the first step (the DiT multiplies by 1000 for its embedding).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from .id_zero import zero_masked_attention

SIZE_LEVEL = 512
MAX_LENGTH = 640
DROP_TOKENS = 217
QUOTE_SWITCH_AFTER = 155
VLM_MIN_PIXELS = 256 * 28 * 28
VLM_MAX_PIXELS = 324 * 28 * 28
FETCH_FACTOR = 28
FETCH_MIN_PIXELS = 4 * 28 * 28
FETCH_MAX_PIXELS = 16384 * 28 * 28
VISION_END = "<|vision_end|>"
VAE_SCALING = 0.3611
VAE_SHIFT = 0.1159
DIT_FILENAME = "step1x-edit-i1258.safetensors"
VAE_FILENAME = "vae.safetensors"
QWEN_FOLDER = "Qwen2.5-VL-7B-Instruct"
QWEN_HUB_ID = "Qwen/Qwen2.5-VL-7B-Instruct"

PREFIX = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for '
    "image generation. Evaluate the level of detail in the user prompt:\n"
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial "
    "relationships to create vivid and concrete scenes.\n"
    "- If the prompt is already detailed, refine and enhance the existing details slightly without "
    "overcomplicating.\n\n"
    "Here are examples of how to transform or refine prompts:\n"
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping "
    "peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.\n"
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street "
    "lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass "
    "skyscrapers.\n\n"
    "Please generate only the enhanced description for the prompt below and avoid including any additional "
    "commentary or evaluations:\n"
    "User Prompt:"
)


# -- image ------------------------------------------------------------------------------------------
def official_size(width: int, height: int, size_level: int = SIZE_LEVEL) -> tuple[int, int]:
    """(width, height) after ``input_process_image``: area ≈ size_level², sides floored to 16."""
    ratio = width / height
    if width > height:
        new_w = math.ceil(math.sqrt(size_level * size_level * ratio))
        new_h = math.ceil(new_w / ratio)
    else:
        new_h = math.ceil(math.sqrt(size_level * size_level / ratio))
        new_w = math.ceil(new_h * ratio)
    return new_w // 16 * 16, new_h // 16 * 16


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen-vl-utils' rule: sides rounded to ``factor``, area brought within [min, max] pixels."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def unit_pixels(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1], as ``to_tensor`` makes them."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


def vlm_view(pixels: torch.Tensor) -> Image.Image:
    """The image the VLM is given: ``ToPILImage`` of the [0, 1] tensor (``x*255`` truncated to
    uint8), then qwen-vl-utils' ``fetch_image`` resize to multiples of 28."""
    array = pixels.mul(255).byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(array, mode="RGB")
    h, w = smart_resize(image.height, image.width, FETCH_FACTOR, FETCH_MIN_PIXELS, FETCH_MAX_PIXELS)
    return image.resize((w, h))


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H/2 * W/2, C*4) with channel order (c, ph, pw)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def grid_ids(rows: int, cols: int) -> torch.Tensor:
    """(rows*cols, 3) position ids (0, row, col), row-major."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows, dtype=torch.float32)[:, None]
    ids[..., 2] = torch.arange(cols, dtype=torch.float32)[None, :]
    return ids.reshape(rows * cols, 3)


# -- text -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """A piece of the chat text tokenised on its own: ``text`` starts at ``start`` in the chat
    text; ``char`` pieces are one quoted character wrapped in Chinese quotes."""

    text: str
    start: int
    char: bool = False


def split_quoted(text: str) -> list[Piece]:
    """The official ``split_string``: after position 155, a double quote (or an apostrophe, which
    is first turned into one; Chinese quotes too) closes the current piece on opening, and each
    character inside quotes becomes its own ``“c”`` piece."""
    s = text.replace("“", '"').replace("”", '"').replace("'", '"')
    pieces: list[Piece] = []
    buffer, buffer_start, quoted = "", 0, False
    for index, char in enumerate(s):
        if char == '"' and index > QUOTE_SWITCH_AFTER:
            if not buffer:
                buffer_start = index
            buffer += char
            if not quoted:
                pieces.append(Piece(buffer, buffer_start))
                buffer = ""
            quoted = not quoted
            continue
        if quoted:
            pieces.append(Piece("“" + char + "”", index, char=True))
        else:
            if not buffer:
                buffer_start = index
            buffer += char
    if buffer:
        pieces.append(Piece(buffer, buffer_start))
    return pieces


def piecewise_tokens(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` tokenised piece by piece (see :func:`split_quoted`), with each token's
    character span in ``text`` (a quoted character's tokens all span that character).

    The official code tokenises each piece with the processor (text only), which in transformers
    4.49 is the tokenizer; transformers 5 refuses a text-only processor call holding an image pad,
    so the tokenizer is called directly (same ids). A piece tokenised as ``“ … ”`` loses both."""
    open_ids = tokenizer("“", add_special_tokens=False)["input_ids"]
    close_ids = tokenizer("”", add_special_tokens=False)["input_ids"]
    open_id = open_ids[0] if len(open_ids) == 1 else None
    close_id = close_ids[0] if len(close_ids) == 1 else None
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for piece in split_quoted(text):
        encoded = tokenizer(piece.text, return_offsets_mapping=True)
        piece_ids = list(encoded["input_ids"])
        offsets = [tuple(o) for o in encoded["offset_mapping"]]
        if piece_ids and piece_ids[0] == open_id and piece_ids[-1] == close_id and open_id is not None:
            piece_ids, offsets = piece_ids[1:-1], offsets[1:-1]
        ids.extend(piece_ids)
        if piece.char:
            spans.extend([(piece.start, piece.start + 1)] * len(piece_ids))
        else:
            spans.extend([(piece.start + a, piece.start + b) for a, b in offsets])
    return ids, spans


def chat_text(processor, instruction: str, image: Image.Image, add_vision_id: bool = False) -> str:
    """The chat-templated string of the official prompt (prefix, image, instruction).

    ``add_vision_id`` defaults to False: what the official code effectively renders under its pinned
    transformers 4.49 (which ignores the ``add_vision_id=True`` it passes); True inserts
    "Picture 1: " before the vision tokens, as newer transformers would."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": PREFIX},
                {"type": "image", "image": image},
                {"type": "text", "text": instruction},
            ],
        }
    ]
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, add_vision_id=add_vision_id
    )


@dataclass
class VLMInputs:
    """One prompt's VLM input and the map from its tokens to characters of ``text``."""

    text: str
    input_ids: torch.Tensor  # (1, L)
    attention_mask: torch.Tensor  # (1, L)
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    spans: list[tuple[int, int]]  # per token of input_ids; (0, 0) for template/image tokens before the vision end


def vlm_inputs(processor, instruction: str, vlm_image: Image.Image, add_vision_id: bool = False) -> VLMInputs:
    """Build the VLM input exactly as ``Qwen25VL_7b_Embedder.forward`` does (see :func:`chat_text`)."""
    text = chat_text(processor, instruction, vlm_image, add_vision_id=add_vision_id)
    encoded = processor(text=[text], images=[vlm_image], padding=True, return_tensors="pt")
    tokenizer = processor.tokenizer
    vision_end = tokenizer.convert_tokens_to_ids(VISION_END)
    old_ids = encoded["input_ids"][0]
    new_ids, new_spans = piecewise_tokens(tokenizer, text)
    at_old = int((old_ids == vision_end).nonzero()[0, 0])
    at_new = new_ids.index(vision_end)
    ids = torch.cat([old_ids[:at_old], torch.tensor(new_ids[at_new:], dtype=old_ids.dtype)])[None]
    spans = [(0, 0)] * at_old + new_spans[at_new:]
    return VLMInputs(
        text=text,
        input_ids=ids,
        attention_mask=(ids > 0).long(),
        pixel_values=encoded["pixel_values"],
        image_grid_thw=encoded["image_grid_thw"],
        spans=spans,
    )


# -- pipeline ---------------------------------------------------------------------------------------
class Step1XPipeline(DiffusionPipeline):
    """Holds the Step1X-Edit components (VAE, Qwen2.5-VL, its processor, DiT + connector).

    Only input preparation lives here; editseg runs one DiT forward, never the sampler.
    ``size_level``, ``max_length`` and ``drop_tokens`` default to the official inference values.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(self, vae, text_encoder, processor, transformer) -> None:
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, processor=processor, transformer=transformer)
        self.size_level = SIZE_LEVEL
        self.max_length = MAX_LENGTH
        self.drop_tokens = DROP_TOKENS

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor, sample: bool = False, seed: int = 0) -> torch.Tensor:
        """[0, 1] pixels (1, 3, H, W) → packed, normalised latents (1, N, 4C).

        ``sample=False`` (default): the posterior mean. ``sample=True``: the official draw
        ``mean + exp(logvar / 2) * noise`` (its ``DiagonalGaussian``, no log-variance clamp), the
        noise from a CPU generator seeded with ``seed`` (the official code draws it unseeded)."""
        vae = self.vae
        posterior = vae.encode((pixels * 2 - 1).to(self._execution_device, vae.dtype)).latent_dist
        if sample:
            mean, logvar = torch.chunk(posterior.parameters, 2, dim=1)  # unclamped, as the official code
            noise = torch.randn(mean.shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
            latents = mean + torch.exp(0.5 * logvar) * noise.to(mean.device, mean.dtype)
        else:
            latents = posterior.mean
        shift = vae.config.shift_factor or 0.0
        return pack_latents((latents - shift) * vae.config.scaling_factor)

    @torch.no_grad()
    def encode_prompt(
        self, inputs: VLMInputs, mrope: bool = True, id_zero_padding: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(max_length, hidden) embeddings and (max_length,) 0/1 mask of one prompt.

        ``mrope`` (default): pass ``mm_token_type_ids`` (1 on image-pad tokens) so that the VLM
        gives its image tokens 3-D positions as it was trained (transformers 4.49 found them from the
        ids); False reproduces transformers 5's silent fall-back to 1-D positions.

        ``id_zero_padding`` (default, official): "!" (id 0) is padding to the VLM (see :mod:`.id_zero`);
        False: an all-ones mask, "!" an ordinary token. Prompts without "!" are the same either way."""
        device = self._execution_device
        encoder = self.text_encoder
        extra = {}
        if mrope:
            image_token = encoder.config.image_token_id
            extra["mm_token_type_ids"] = (inputs.input_ids == image_token).int().to(device)
        mask = inputs.attention_mask if id_zero_padding else torch.ones_like(inputs.attention_mask)
        mask = mask.to(device)
        # the official mask is ids > 0; FlashAttention-2 then zeroes the attention of those tokens
        with zero_masked_attention(encoder, mask):
            output = encoder(
                input_ids=inputs.input_ids.to(device),
                attention_mask=mask,
                pixel_values=inputs.pixel_values.to(device, encoder.dtype),
                image_grid_thw=inputs.image_grid_thw.to(device),
                output_hidden_states=True,
                **extra,
            )
        hidden = output.hidden_states[-1][0, self.drop_tokens :][: self.max_length]
        embeds = hidden.new_zeros((self.max_length, hidden.shape[-1]))
        embeds[: hidden.shape[0]] = hidden
        mask = torch.zeros(self.max_length, dtype=torch.long, device=hidden.device)
        mask[: hidden.shape[0]] = 1
        return embeds, mask


# -- checkpoints ------------------------------------------------------------------------------------
def diffusers_to_official(state: dict[str, torch.Tensor], num_double: int, num_single: int) -> dict[str, torch.Tensor]:
    """Keys of the diffusers-format transformer (``Step1XEditTransformer2DModel``, v1p1) → official names.

    q, k, v are separate there (fused here), the single-block MLP input is its own linear, and the
    final AdaLN stores (scale, shift) instead of (shift, scale).
    """
    state = dict(state)
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise ValueError(f"diffusers-format Step1X-Edit checkpoint lacks {name}")
        return state.pop(name)

    renames = {
        "time_embed.in_layer": "time_in.in_layer",
        "time_embed.out_layer": "time_in.out_layer",
        "vec_embed.in_layer": "vector_in.in_layer",
        "vec_embed.out_layer": "vector_in.out_layer",
        "context_embedder": "txt_in",
        "x_embedder": "img_in",
        "proj_out": "final_layer.linear",
    }
    for new, old in renames.items():
        for p in ("weight", "bias"):
            out[f"{old}.{p}"] = take(f"{new}.{p}")
    for p in ("weight", "bias"):
        scale, shift = take(f"norm_out.linear.{p}").chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([shift, scale], dim=0)
    for i in range(num_double):
        src, dst = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{dst}img_mod.lin.{p}"] = take(f"{src}norm1.linear.{p}")
            out[f"{dst}txt_mod.lin.{p}"] = take(f"{src}norm1_context.linear.{p}")
            out[f"{dst}img_attn.qkv.{p}"] = torch.cat([take(f"{src}attn.to_{x}.{p}") for x in "qkv"])
            out[f"{dst}txt_attn.qkv.{p}"] = torch.cat([take(f"{src}attn.add_{x}_proj.{p}") for x in "qkv"])
            out[f"{dst}img_attn.proj.{p}"] = take(f"{src}attn.to_out.0.{p}")
            out[f"{dst}txt_attn.proj.{p}"] = take(f"{src}attn.to_add_out.{p}")
            out[f"{dst}img_mlp.0.{p}"] = take(f"{src}ff.net.0.proj.{p}")
            out[f"{dst}img_mlp.2.{p}"] = take(f"{src}ff.net.2.{p}")
            out[f"{dst}txt_mlp.0.{p}"] = take(f"{src}ff_context.net.0.proj.{p}")
            out[f"{dst}txt_mlp.2.{p}"] = take(f"{src}ff_context.net.2.{p}")
        out[f"{dst}img_attn.norm.query_norm.scale"] = take(f"{src}attn.norm_q.weight")
        out[f"{dst}img_attn.norm.key_norm.scale"] = take(f"{src}attn.norm_k.weight")
        out[f"{dst}txt_attn.norm.query_norm.scale"] = take(f"{src}attn.norm_added_q.weight")
        out[f"{dst}txt_attn.norm.key_norm.scale"] = take(f"{src}attn.norm_added_k.weight")
    for i in range(num_single):
        src, dst = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{dst}modulation.lin.{p}"] = take(f"{src}norm.linear.{p}")
            parts = [take(f"{src}attn.to_{x}.{p}") for x in "qkv"] + [take(f"{src}proj_mlp.{p}")]
            out[f"{dst}linear1.{p}"] = torch.cat(parts)
            out[f"{dst}linear2.{p}"] = take(f"{src}proj_out.{p}")
        out[f"{dst}norm.query_norm.scale"] = take(f"{src}attn.norm_q.weight")
        out[f"{dst}norm.key_norm.scale"] = take(f"{src}attn.norm_k.weight")
    for name in [k for k in state if k.startswith("connector.")]:
        out[name] = state.pop(name)
    if state:
        raise ValueError(f"unexpected keys in the diffusers-format checkpoint: {sorted(state)[:8]}")
    return out


def config_from_diffusers(config: dict[str, Any]):
    """:class:`Step1XConfig` from a diffusers ``transformer/config.json``."""
    from .model import Step1XConfig

    if config.get("enable_text_token_mapping"):
        raise ValueError("this Step1X-Edit transformer uses text-token mapping (v1p2), which editseg does not implement")
    if config.get("patch_size", 1) != 1:
        raise ValueError("Step1X-Edit transformer with patch_size != 1 is not supported")
    heads = config.get("num_attention_heads", 24)
    head_dim = config.get("attention_head_dim", 128)
    in_channels = config.get("in_channels", 64)
    return Step1XConfig(
        in_channels=in_channels,
        out_channels=config.get("out_channels") or in_channels,
        vec_in_dim=config.get("vector_in_dim", 768),
        context_in_dim=config.get("joint_attention_dim", 4096),
        hidden_size=heads * head_dim,
        num_heads=heads,
        depth=config.get("num_layers", 19),
        depth_single_blocks=config.get("num_single_layers", 38),
        axes_dim=tuple(config.get("axes_dims_rope", (16, 56, 56))),
        connector_in_channels=config.get("connector_in_channels", 3584),
        connector_heads=config.get("connector_heads_num", 32),
        connector_depth=config.get("connector_depth", 2),
        pooled_scale=False,
    )


def flux_vae_config() -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` config of the FLUX.1 autoencoder (16 latent channels)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 16,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": VAE_SCALING,
        "shift_factor": VAE_SHIFT,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "force_upcast": True,
    }


def dit_from_state_dict(state: dict[str, torch.Tensor], config, dtype: torch.dtype):
    """Build the DiT without allocating random weights and load ``state`` (official key names) strictly."""
    from .model import Step1XEditDiT

    with torch.device("meta"):
        model = Step1XEditDiT(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"Step1X-Edit checkpoint does not match the model: missing {missing[:6]}, unexpected {unexpected[:6]}")
    return model.to(dtype).eval()


def _file(source: str, filename: str, local_files_only: bool) -> str:
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            raise OSError(f"{filename} not found in {local}")
        return str(path)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(source, filename, local_files_only=local_files_only)


def load_processor(source: str, local_files_only: bool = False):
    """The Qwen2.5-VL processor with the official pixel bounds (256..324 × 28²) and the PIL image
    backend (the official environment, transformers 4.49, used the PIL "slow" processor)."""
    from transformers import AutoImageProcessor, AutoProcessor

    kwargs = {"min_pixels": VLM_MIN_PIXELS, "max_pixels": VLM_MAX_PIXELS, "local_files_only": local_files_only}
    processor = AutoProcessor.from_pretrained(source, **kwargs)
    processor.image_processor = AutoImageProcessor.from_pretrained(source, backend="pil", **kwargs)
    return processor


def is_diffusers_layout(source: str) -> bool:
    return (Path(source).expanduser() / "model_index.json").is_file()


def load_official(source: str, dtype: torch.dtype, local_files_only: bool = False, dit_filename: str = DIT_FILENAME):
    """v1.0 release: ``step1x-edit-i1258.safetensors`` (DiT + connector, official key names),
    ``vae.safetensors`` (FLUX.1 AE, BFL key names) and Qwen2.5-VL-7B-Instruct (a sub-folder of
    a local ``source`` when present, else the hub)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file
    from transformers import Qwen2_5_VLForConditionalGeneration

    from .model import Step1XConfig

    dit_path = _file(source, dit_filename, local_files_only)
    vae_path = _file(source, VAE_FILENAME, local_files_only)
    qwen = Path(source).expanduser() / QWEN_FOLDER
    qwen_source = str(qwen) if qwen.is_dir() else QWEN_HUB_ID

    transformer = dit_from_state_dict(load_file(dit_path), Step1XConfig(), dtype)
    vae_config = flux_vae_config()
    vae = AutoencoderKL(**vae_config)
    vae.load_state_dict(convert_ldm_vae_checkpoint(load_file(vae_path), vae_config), strict=True)
    vae = vae.eval()  # float32, as the official code keeps its autoencoder
    text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        qwen_source, dtype=dtype, local_files_only=local_files_only
    ).eval()
    processor = load_processor(qwen_source, local_files_only=local_files_only)
    return Step1XPipeline(vae=vae, text_encoder=text_encoder, processor=processor, transformer=transformer)


def load_diffusers_format(source: str, dtype: torch.dtype, local_files_only: bool = False):
    """Diffusers-format release (``Step1XEditPipeline``: ``transformer/``, ``vae/``, ``text_encoder/``,
    ``processor/``); the transformer's keys are mapped back to the official names."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file
    from transformers import Qwen2_5_VLForConditionalGeneration

    root = Path(source).expanduser()
    if not root.is_dir():
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(source, local_files_only=local_files_only))
    config = config_from_diffusers(json.loads((root / "transformer" / "config.json").read_text()))
    state: dict[str, torch.Tensor] = {}
    for shard in sorted((root / "transformer").glob("*.safetensors")):
        state.update(load_file(str(shard)))
    if not state:
        raise OSError(f"no transformer weights in {root / 'transformer'}")
    state = diffusers_to_official(state, config.depth, config.depth_single_blocks)
    transformer = dit_from_state_dict(state, config, dtype)
    vae = AutoencoderKL.from_pretrained(str(root / "vae"), dtype=torch.float32).eval()
    text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(root / "text_encoder"), dtype=dtype).eval()
    processor = load_processor(str(root / "processor"))
    return Step1XPipeline(vae=vae, text_encoder=text_encoder, processor=processor, transformer=transformer)
