"""A tiny randomly initialised Stable Diffusion 1.5 (real diffusers/transformers classes, no downloads).

For tests and offline smoke runs only: random weights, meaningless output.
"""

from __future__ import annotations

import torch


def build_tiny_sd15(seed: int = 0):
    """``(unet, vae, text_encoder, tokenizer)``: a 2-level UNet with cross-attention, a 2x VAE,
    a 2-layer CLIP text encoder over an in-process byte-level BPE tokenizer (77 tokens)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tiny import byte_level_tokenizer

    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    tokenizer.model_max_length = 77
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.pad_token_id,
    )).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=64,
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    return unet, vae, text_encoder, tokenizer
