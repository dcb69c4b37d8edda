"""The toy editor: a ``Flux2KleinPipeline`` of the real classes at a tiny size.

- Tokenizer: byte-level BPE trained in-process on the shapes grammar's vocabulary, so every
  grammar word (with or without a leading space) is one token; Qwen-style specials and chat template.
- Text encoder: ``Qwen3ForCausalLM`` with 28 layers (klein reads hidden states 9/18/27) whose
  attention and MLP output projections are zero, so every block is the identity on the residual
  stream and the text features are the (trained) token embeddings, three times. Context is mixed
  by the transformer's double-stream text blocks, as in klein. :func:`text_embeddings` is the
  cheap training path; it equals ``Flux2KleinBackbone.encode_text`` exactly (tested).
- Codec: :class:`~editseg.backbones.pixel_codec.PixelCodec`, pixels folded space-to-depth (2x: with the
  pipeline's 2x2 patchify a token is a 4x4 pixel patch: a 16x16 grid at 64 px); its BatchNorm statistics are set from the
  training images so that latents are standardised, as klein's VAE does. Exact, local and invertible.
- Text: the instruction in a minimal chat template (its words alone; ``chat_template="qwen"`` keeps
  Qwen3's), padded to ``text_length`` (16) tokens instead of klein's 512 (``max_sequence_length``).
- Transformer: ``Flux2Transformer2DModel`` at small width/depth, trained with rectified flow.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..backbones.tiny import (
    assemble_flux2_klein_pipeline,
    byte_level_tokenizer,
    tiny_flux2_transformer,
    tiny_qwen3_text_encoder,
)
from ..backbones.pixel_codec import PixelCodec
from .config import ToyConfig

TOY_ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy-shapes"
TEXT_LAYERS = (9, 18, 27)


def grammar_words() -> list[str]:
    """Every word the shapes grammar can produce, plus instruction and chat-template words."""
    from ..data import shapes_grammar as g

    tables = [g.SHAPE_WORDS, g.COLOR_WORDS, g.SIZE_WORDS, g.DIRECTION_ADJECTIVES, g.DIRECTION_PHRASES,
              g.EXTREME_WORDS, g.RELATION_WORDS]
    words = {w for table in tables for values in table.values() for phrase in values for w in phrase.split()}
    words |= {w for phrase in g.GENERIC_WORDS for w in phrase.split()}
    words |= {a for a, _ in g.ARTICLES if a}
    words |= {"remove", "make", "from", "image", "user", "assistant", "system", "a", "of", "in", "and"}
    return sorted(words)


def word_concepts() -> dict[str, str]:
    """Single-word synonyms of the grammar mapped to one concept name ("ball" → "shape:circle").

    Words that name several concepts or belong to phrases ("on the left") map to themselves."""
    from ..data import shapes_grammar as g

    tables = {"shape": g.SHAPE_WORDS, "color": g.COLOR_WORDS, "size": g.SIZE_WORDS,
              "direction": g.DIRECTION_ADJECTIVES, "extreme": g.EXTREME_WORDS, "relation": g.RELATION_WORDS}
    claims: dict[str, set[str]] = {}
    for table, entries in tables.items():
        for key, phrases in entries.items():
            for phrase in phrases:
                if " " not in phrase:
                    claims.setdefault(phrase, set()).add(f"{table}:{key}")
    for word in g.GENERIC_WORDS:
        claims.setdefault(word, set()).add("generic")
    return {word: concepts.pop() for word, concepts in claims.items() if len(concepts) == 1}


def init_synonym_embeddings(embedding: torch.Tensor, tokenizer, std: float, jitter: float = 0.25) -> None:
    """Give the tokens of each concept's words (with and without a leading space) one shared random
    vector plus a little jitter, so that synonyms start alike, as in a pretrained text encoder."""
    concept_vectors: dict[str, torch.Tensor] = {}
    for word, concept in sorted(word_concepts().items()):
        base = concept_vectors.setdefault(concept, torch.randn(embedding.shape[1]) * std)
        for variant in (word, " " + word):
            ids = tokenizer(variant)["input_ids"]
            if len(ids) == 1:
                embedding[ids[0]] = base + jitter * std * torch.randn(embedding.shape[1])


#: The toy's minimal chat template: the user's words alone, nothing around them (no role or
#: thinking tokens): in a tiny model such template tokens are attention sinks for the image.
MINIMAL_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def toy_tokenizer(vocab_size: int = 512, chat_template: str = "minimal"):
    """Byte-level BPE whose vocabulary holds each grammar word as one token (both ``w`` and `` w``);
    ``chat_template`` "minimal" (:data:`MINIMAL_CHAT_TEMPLATE`) or "qwen" (Qwen3's)."""
    if chat_template not in ("minimal", "qwen"):
        raise ValueError(f"chat_template must be 'minimal' or 'qwen', got {chat_template!r}")
    corpus = [f"{w} {w}\n{w} {w}" for w in grammar_words() for _ in range(8)]
    tokenizer = byte_level_tokenizer(vocab_size, corpus)
    if chat_template == "minimal":
        tokenizer.chat_template = MINIMAL_CHAT_TEMPLATE
    return tokenizer


def build_toy_pipeline(config: ToyConfig = ToyConfig(), seed: int = 0):
    """An untrained toy ``Flux2KleinPipeline`` (float32, CPU), deterministic for ``seed``."""
    torch.manual_seed(seed)
    tokenizer = toy_tokenizer(config.vocab_size, config.chat_template)
    tokenizer.model_max_length = config.text_length  # Flux2KleinBackbone pads the text to this
    text_encoder = tiny_qwen3_text_encoder(tokenizer, config.text_hidden, config.text_layers)
    with torch.no_grad():
        for layer in text_encoder.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        text_encoder.model.embed_tokens.weight.normal_(0.0, config.embedding_std)
        if config.synonym_init:
            init_synonym_embeddings(text_encoder.model.embed_tokens.weight, tokenizer, config.embedding_std)
    vae = PixelCodec(downscale=config.codec_downscale).eval()
    transformer = tiny_flux2_transformer(
        config.latent_channels * 4, config.double_blocks, config.single_blocks, config.heads, config.head_dim,
        text_hidden=config.text_hidden, timestep_channels=64, mlp_ratio=config.mlp_ratio,
    )
    return assemble_flux2_klein_pipeline(vae, text_encoder, tokenizer, transformer)


def text_embeddings(pipeline, input_ids: torch.Tensor) -> torch.Tensor:
    """Transformer text input for the toy encoder: its identity blocks make hidden states 9/18/27
    equal to the token embeddings, so this skips the 28 blocks (and keeps gradients)."""
    embeds = pipeline.text_encoder.model.embed_tokens(input_ids)
    return torch.cat([embeds] * len(TEXT_LAYERS), dim=-1)


def parameter_counts(pipeline) -> dict[str, int]:
    """Parameters per component."""
    return {
        name: sum(p.numel() for p in getattr(pipeline, name).parameters())
        for name in ("transformer", "text_encoder", "vae")
    }
