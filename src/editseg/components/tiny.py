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


_WORDS = """a an the of in on at with to from by and left right top bottom middle man woman person people
boy girl child dog cat horse zebra car bus bike shirt red blue green black white yellow small big large
tall short near far front back behind holding wearing sitting standing jumping photo image picture""".split()


def tiny_clip_tokenizer():
    """A ``CLIPTokenizer`` (CLIP's normalisation, pre-tokeniser and ``</w>`` BPE) over a small
    vocabulary built in-process: every byte-level character, and the words of a small corpus as
    single tokens (characters otherwise)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            if (merged, piece) not in merges:
                merges.append((merged, piece))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_tiny_clip(seed: int = 0):
    """``(CLIPModel, CLIPProcessor)``: 32 px input, 8 px patches, 3 vision and 2 text layers, eval mode."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32,
                  patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
