"""A tiny randomly initialised Step1X-Edit pipeline built in-process (tests, offline trials).

Real classes at toy sizes: a Qwen2.5-VL with a one-block vision tower, a byte-level tokenizer
trained in-process with the Qwen special tokens and the Qwen2.5-VL chat template, a PIL-backend
image processor, a two-level FLUX-style AutoencoderKL (2x down) and a small Step1X DiT.
Random weights: outputs are meaningless.
"""

from __future__ import annotations

import torch

from .model import Step1XConfig, Step1XEditDiT
from .pipeline import Step1XPipeline

QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VL_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

TINY_DIT = Step1XConfig(
    in_channels=16,
    out_channels=16,
    vec_in_dim=8,
    context_in_dim=24,
    hidden_size=32,
    num_heads=2,
    depth=2,
    depth_single_blocks=3,
    axes_dim=(4, 6, 6),
    connector_in_channels=32,
    connector_heads=2,
)


def tiny_qwen_tokenizer():
    """Byte-level BPE with the Qwen chat and vision special tokens ("!" is id 0 as in Qwen)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ..tiny import TOKENIZER_CORPUS

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    corpus = [" ".join(TOKENIZER_CORPUS[i : i + 12]) for i in range(0, len(TOKENIZER_CORPUS), 3)] * 4
    backend.train_from_iterator(corpus, trainer=trainer)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *VL_SPECIALS]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tokenizer


def build_tiny_step1x_pipeline(seed: int = 0, min_pixels: int = 4 * 28 * 28, max_pixels: int = 16 * 28 * 28) -> Step1XPipeline:
    """A complete tiny pipeline (float32, CPU); the VLM sees 4-16 merged image tokens."""
    from diffusers import AutoencoderKL
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    torch.manual_seed(seed)
    tokenizer = tiny_qwen_tokenizer()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    processor = _image_only_processor_class(Qwen2_5_VLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_VL_CHAT_TEMPLATE
    )
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in VL_SPECIALS}
    hidden = TINY_DIT.connector_in_channels
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [1],
            "window_size": 56,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=TINY_DIT.in_channels // 4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    transformer = Step1XEditDiT(TINY_DIT).eval()
    pipeline = Step1XPipeline(vae=vae, text_encoder=text_encoder, processor=processor, transformer=transformer)
    pipeline.size_level = 64  # 4 px per token with the 2x VAE: a 16x16-ish token grid
    pipeline.drop_tokens = template_length(processor)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _image_only_processor_class(base):
    """The processor without its video sub-processor (that one needs torchvision, absent here)."""

    class ImageOnlyProcessor(base):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    return ImageOnlyProcessor


def template_length(processor) -> int:
    """Tokens before "Picture 1: " (system turn + prefix) with this tokenizer; the official code
    hard-codes 217 for Qwen2.5-VL's tokenizer."""
    from .pipeline import PREFIX

    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": PREFIX}]}], tokenize=False, add_generation_prompt=False
    )
    head = text[: text.index(PREFIX) + len(PREFIX)]
    return len(processor.tokenizer(head)["input_ids"])
