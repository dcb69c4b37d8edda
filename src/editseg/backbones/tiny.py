"""Tiny randomly initialised FLUX.2 [klein] pipelines built in-process from configs of the real
classes (as diffusers tests its models): for tests, benchmarks and trying the CLI offline.

Random weights ground nothing: results from these models are meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
TOKENIZER_CORPUS = """remove the man in the red shirt on the left zebra right woman with a blue umbrella
small large big little circle square triangle star diamond cross ball box disc green yellow purple
orange white black brown pink grey gray dog cat car bus person people child boy girl near far
above below behind front top bottom middle center leftmost rightmost biggest smallest second first
from the image and keep background unchanged make it a photo of two three one this that those
user assistant system""".split()


def byte_level_tokenizer(vocab_size: int = 512, corpus: list[str] | None = None):
    """A byte-level BPE tokenizer trained in-process on ``corpus`` (default: a small mixed-word
    corpus), with Qwen-style specials and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if corpus is None:
        corpus = [" ".join(TOKENIZER_CORPUS[i : i + 12]) for i in range(0, len(TOKENIZER_CORPUS), 3)] * 4
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer


@dataclass(frozen=True)
class TinyFlux2Config:
    """Sizes of a tiny klein pipeline (text encoder, VAE, transformer)."""

    text_hidden: int = 32
    text_layers: int = 28  # klein reads hidden states 9, 18 and 27
    heads: int = 2
    head_dim: int = 16
    double_blocks: int = 2
    single_blocks: int = 3
    vae_channels: tuple[int, ...] = (8, 16)
    latent_channels: int = 4


def tiny_qwen3_text_encoder(tokenizer, hidden: int, layers: int):
    """A small ``Qwen3ForCausalLM`` (2 heads of 16, 1 KV head) over ``tokenizer``'s vocabulary, in eval mode."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
    ).eval()


def tiny_flux2_transformer(
    in_channels: int, double_blocks: int, single_blocks: int, heads: int, head_dim: int, *,
    text_hidden: int, timestep_channels: int, mlp_ratio: float = 3.0,
):
    """A small ``Flux2Transformer2DModel`` (patch 1, 4 RoPE axes of head_dim/4, no guidance embedding)
    reading klein's text features: 3 stacked hidden layers of width ``text_hidden``."""
    from diffusers import Flux2Transformer2DModel

    rope_axis = head_dim // 4
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        num_layers=double_blocks,
        num_single_layers=single_blocks,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=3 * text_hidden,
        timestep_guidance_channels=timestep_channels,
        mlp_ratio=mlp_ratio,
        axes_dims_rope=(rope_axis,) * 4,
        guidance_embeds=False,
    )


def build_tiny_flux2_klein_pipeline(seed: int = 0, config: TinyFlux2Config = TinyFlux2Config()):
    """A complete ``Flux2KleinPipeline`` with tiny random components (CPU, float32, no downloads)."""
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    text_encoder = tiny_qwen3_text_encoder(tokenizer, config.text_hidden, config.text_layers)
    blocks = len(config.vae_channels)
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=4,
        sample_size=64,
    ).eval()
    # Non-trivial BatchNorm statistics, so that normalisation is exercised by parity tests.
    bn = vae.bn
    bn.running_mean.copy_(torch.randn_like(bn.running_mean) * 0.1)
    bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    transformer = tiny_flux2_transformer(
        config.latent_channels * 4, config.double_blocks, config.single_blocks, config.heads, config.head_dim,
        text_hidden=config.text_hidden, timestep_channels=32,
    ).eval()
    return assemble_flux2_klein_pipeline(vae, text_encoder, tokenizer, transformer)


def assemble_flux2_klein_pipeline(vae, text_encoder, tokenizer, transformer):
    """A distilled ``Flux2KleinPipeline`` of the given components with a default flow-match
    scheduler, its progress bar off (the tiny random model's and the toy editor's assembly)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    pipeline = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=True,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
