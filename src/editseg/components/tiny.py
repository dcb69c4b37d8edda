"""Tiny randomly initialised SAM and CLIP built in-process from configs of the real transformers
classes: for tests and for trying methods offline. Random weights: outputs are meaningless."""

from __future__ import annotations

import torch

TINY_SAM = "tiny-random-sam"
TINY_CLIP = "tiny-random-clip"
TINY_SAM_SIDE = 64  # input side of the tiny SAM (the official models use 1024)


def build_tiny_sam(seed: int = 0):
    """``(SamModel, SamProcessor)``: 64 px input, 8 px patches, 2 ViT layers, float32, eval mode."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamProcessor, SamPromptEncoderConfig, SamVisionConfig
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    torch.manual_seed(seed)
    patch = 8
    vision = SamVisionConfig(
        hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=TINY_SAM_SIDE,
        patch_size=patch, mlp_dim=64, window_size=4, global_attn_indexes=[1], num_pos_feats=8,
    )
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=TINY_SAM_SIDE, patch_size=patch, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16)
    config = SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(), mask_decoder_config=decoder.to_dict())
    model = SamModel(config).eval()
    _default_init(model)
    side, low = TINY_SAM_SIDE, TINY_SAM_SIDE // 4
    image_processor = SamImageProcessorPil(
        size={"longest_edge": side}, pad_size={"height": side, "width": side},
        mask_size={"longest_edge": low}, mask_pad_size={"height": low, "width": low},
    )
    return model, SamProcessor(image_processor=image_processor)


def _default_init(model: torch.nn.Module) -> None:
    """PyTorch's default initialisation of every layer (transformers' small-std init makes the tiny
    SAM's mask logits ~1e-5, so thresholds and stability scores would test nothing)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Embedding)):
                module.reset_parameters()
        for name, param in model.named_parameters():
            if "positional_embedding" in name and param.ndim == 2:
                param.normal_(0.0, 1.0)
            if "output_hypernetworks_mlps" in name and "proj_out" in name:
                param.mul_(40.0)  # mask logits of order 1, as a trained SAM's
