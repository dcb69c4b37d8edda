"""Plumbing shared by the diffusers-based backbones' probe processors.

Each family re-implements its attention processor exactly (projections, QK-norm, RoPE) and
routes the attention call through :meth:`ProbeProcessor.attend`; :func:`swapped_processors`
installs such processors for one forward and restores the originals.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb

from ..errors import UnsupportedModelError
from .recorder import ProbeRecorder, native_attend_lse


class ProbeProcessor:
    """Base of the probe processors: block index, recorder and the original's attention backend."""

    def __init__(self, block: int, recorder: ProbeRecorder, original) -> None:
        self.block = block
        self.recorder = recorder
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def attend(self, query, key, value, attention_mask=None) -> torch.Tensor:
        """The block's attention (the model's own ``dispatch_attention_fn``) with probes recorded;
        returns (batch, seq, heads * head_dim) in the query dtype, i.e. the MMSA output A·V."""

        def attend(q, k, v, scale):
            return dispatch_attention_fn(
                q,
                k,
                v,
                attn_mask=attention_mask,
                scale=scale,
                backend=self._attention_backend,
                parallel_config=self._parallel_config,
            )

        def attend_lse(q, k, v):
            if self._attention_backend is None:  # diffusers' default: native scaled_dot_product_attention
                return native_attend_lse(q, k, v, attention_mask)
            try:
                out, lse = dispatch_attention_fn(
                    q, k, v, attn_mask=attention_mask, backend=self._attention_backend,
                    parallel_config=self._parallel_config, return_lse=True,
                )
            except ValueError:  # a backend without log-sum-exp output
                return None
            return out, lse.transpose(1, 2)  # diffusers gives lse as (B, S, H)

        out = self.recorder.attend(self.block, query, key, value, attend, attn_mask=attention_mask, attend_lse=attend_lse)
        return out.flatten(2, 3).to(query.dtype)


def flux_joint_qkv(attn, query, key, value, added=None, image_rotary_emb=None):
    """q, k, v of a FLUX-style block (FLUX.1 and FLUX.2) exactly as diffusers' processors build them:
    heads unflattened, QK-norm, the text stream's own (``added``: q, k, v or None) prepended with
    its own norms, then RoPE over the joint sequence. Tensors are (batch, seq, heads, head_dim)."""
    query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
    query, key = attn.norm_q(query), attn.norm_k(key)
    if added is not None:
        enc_query, enc_key, enc_value = (t.unflatten(-1, (-1, attn.head_dim)) for t in added)
        enc_query, enc_key = attn.norm_added_q(enc_query), attn.norm_added_k(enc_key)
        query = torch.cat([enc_query, query], dim=1)
        key = torch.cat([enc_key, key], dim=1)
        value = torch.cat([enc_value, value], dim=1)
    if image_rotary_emb is not None:
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    return query, key, value


@contextmanager
def swapped_processors(
    blocks: Sequence[torch.nn.Module],
    recorder: ProbeRecorder,
    make_processor: Callable[[int, object], object],
    expected: Callable[[int], type],
    output_rows: Callable[[int, object], torch.Tensor],
) -> Iterator[None]:
    """For one forward: block ``i``'s ``attn.processor`` becomes ``make_processor(i, original)``.

    ``expected(i)`` is the processor class block ``i`` must have (anything else, e.g. a KV-cache
    or IP-Adapter processor, is refused); ``output_rows(i, output)`` picks the clean-token rows of
    block ``i``'s output for the ``block`` feature site. Originals are restored on exit.
    """
    originals, hooks = [], []
    try:
        for index, block in enumerate(blocks):
            original = block.attn.processor
            wanted = expected(index)
            if type(original) is not wanted:
                raise UnsupportedModelError(
                    f"Block {index} uses attention processor {type(original).__name__}; editseg probes replace "
                    f"{wanted.__name__} only (unload IP-Adapters, KV caches or custom processors first)."
                )
            originals.append((block.attn, original))
            block.attn.processor = make_processor(index, original)
            if recorder.wants_feature("block", index):
                hooks.append(block.register_forward_hook(_output_hook(recorder, index, output_rows)))
        yield
    finally:
        for attn, original in originals:
            attn.processor = original
        for hook in hooks:
            hook.remove()


def _output_hook(recorder: ProbeRecorder, index: int, output_rows):
    def hook(module, inputs, output):
        recorder.record_feature("block", index, output_rows(index, output))

    return hook
