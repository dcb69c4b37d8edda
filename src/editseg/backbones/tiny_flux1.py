"""Tiny randomly initialised FLUX.1 text-to-image pipelines built in-process (no downloads).

Real classes throughout: ``T5EncoderModel`` + ``T5TokenizerFast`` (a unigram vocabulary trained
here), ``CLIPTextModel`` + ``CLIPTokenizer`` (a BPE trained here), an ``AutoencoderKL`` with 8x
downsampling (16 px per token, as the real VAE, with the real scaling/shift factors) and a
``FluxTransformer2DModel`` with guidance embedding (FLUX.1 [dev] layout, 2 double + 3 single blocks).
Random weights ground nothing: results from these models are meaningless.
"""

from __future__ import annotations

import json

import torch

_WORDS = """remove the man in the red shirt on the left zebra right woman with a blue umbrella
small large big little circle square triangle star diamond cross ball box disc green yellow purple
orange white black brown pink grey gray dog cat car bus person people child boy girl near far
above below behind front top bottom middle center leftmost rightmost biggest smallest second first
from the image and keep background unchanged make it a photo of two three one this that those
to _ . ; -""".split()
_CORPUS = [" ".join(_WORDS[i : i + 10]) for i in range(0, len(_WORDS), 3)] * 3


def tiny_t5_tokenizer():
    """A ``T5TokenizerFast`` over a unigram vocabulary trained in-process (<pad>=0, </s>=1, <unk>=2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    vocab = [tuple(piece) for piece in json.loads(backend.to_str())["model"]["vocab"]]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def tiny_clip_tokenizer():
    """A ``CLIPTokenizer`` over a BPE (``</w>`` word suffix) trained in-process, 77 tokens long."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    backend = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=77)


def tiny_flux1_components(seed: int = 0) -> dict:
    """Tiny random FLUX.1 components (CPU, float32) as keyword arguments of ``FluxPipeline`` or
    ``FluxKontextPipeline`` (both take the same seven components)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    t5_tokenizer, clip_tokenizer = tiny_t5_tokenizer(), tiny_clip_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            feed_forward_proj="gated-gelu", pad_token_id=t5_tokenizer.pad_token_id, eos_token_id=t5_tokenizer.eos_token_id,
        )
    ).eval()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
            bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
        )
    ).eval()
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.3611,  # the real FLUX.1 VAE's factors
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1-dev's (and Kontext-dev's) scheduler config
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
        use_dynamic_shifting=True,
    )
    return dict(
        scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer, text_encoder_2=t5,
        tokenizer_2=t5_tokenizer, transformer=transformer,
    )


def build_tiny_flux_pipeline(seed: int = 0):
    """A complete ``FluxPipeline`` (FLUX.1 [dev] structure) with tiny random components (CPU, float32)."""
    from diffusers import FluxPipeline

    pipeline = FluxPipeline(**tiny_flux1_components(seed))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
