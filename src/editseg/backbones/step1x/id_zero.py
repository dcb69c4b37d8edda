"""How the official Step1X-Edit text encoder treats token id 0 ("!" in the Qwen vocabulary).

The official embedder (``modules/conditioner.py``, ``Qwen25VL_7b_Embedder.forward``) builds the
VLM's attention mask as ``input_ids > 0`` — meant for padding, but id 0 is "!" — and runs
Qwen2.5-VL with FlashAttention-2 under transformers 4.49. There a mask with a 0 inside the
sequence is handled as padding by un-padding (varlen kernels): every "!" token is removed from the
attention of every layer, so

- no other token attends to it (the key is masked),
- it consumes no rotary position (``get_rope_index`` counts unmasked tokens only; the "!" itself
  gets a dummy position, unused),
- its own attention output is ZERO in every layer (the varlen output is padded back with zeros),
  so its hidden state is the embedding plus the MLP updates only.

The mask and the positions are what transformers 5 also does with ``ids > 0``; the third point is
not: its eager/SDPA attention lets the "!" query attend to the tokens before it. :func:`zero_masked_attention`
restores the official behaviour by zeroing the masked rows of each text attention output. The
official DiT mask stays 1 on "!" tokens: their (odd) embeddings reach the connector and the DiT.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def text_attention_modules(text_encoder) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer of a Qwen2.5-VL language model."""
    return [layer.self_attn for layer in text_encoder.model.language_model.layers]


@contextmanager
def zero_masked_attention(text_encoder, attention_mask: torch.Tensor) -> Iterator[None]:
    """While active, the text attention output (after ``o_proj``) of every position where
    ``attention_mask`` (B, L) is 0 is what a zero attention result gives: ``o_proj(0)``."""
    keep = attention_mask.bool()
    if bool(keep.all()):
        yield
        return

    def hook(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        bias = getattr(module.o_proj, "bias", None)
        fill = bias.to(out.dtype) if bias is not None else out.new_zeros(())
        out = torch.where(keep.to(out.device)[..., None], out, fill)
        return (out, *output[1:]) if isinstance(output, tuple) else out

    handles = [module.register_forward_hook(hook) for module in text_attention_modules(text_encoder)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
