"""Independent reference computations shared by the backbone tests.

``capture_dispatch`` records q, k, v exactly as a diffusers transformer module's OWN attention
processors hand them to the kernel (after QK-norm and RoPE); ``naive_maps`` is eqs. 3-4 written
out with the full softmax(QKᵀ/√d) matrix.
"""

from __future__ import annotations

import contextlib

import torch

from editseg.probing.recorder import ProbePlan, TokenLayout


@contextlib.contextmanager
def capture_dispatch(module, store: list):
    """Append (q, k, v, attn_mask) of every ``module.dispatch_attention_fn`` call to ``store``."""
    original = module.dispatch_attention_fn

    def recording(query, key, value, *args, **kwargs):
        store.append((query.detach().clone(), key.detach().clone(), value.detach().clone(), kwargs.get("attn_mask")))
        return original(query, key, value, *args, **kwargs)

    module.dispatch_attention_fn = recording
    try:
        yield
    finally:
        module.dispatch_attention_fn = original


@contextlib.contextmanager
def block_io_captures(blocks):
    """``(attn_inputs, block_outputs)``: dicts filled by hooks, during the block, with each block's
    attention input hidden states (cloned) and the block's own output, keyed by the block's index."""
    attn_inputs, block_outputs, hooks = {}, {}, []
    for index, block in enumerate(blocks):
        hooks.append(block.attn.register_forward_pre_hook(
            lambda m, args, kwargs, i=index: attn_inputs.__setitem__(i, kwargs["hidden_states"].clone()), with_kwargs=True))
        hooks.append(block.register_forward_hook(lambda m, a, out, i=index: block_outputs.__setitem__(i, out)))
    try:
        yield attn_inputs, block_outputs
    finally:
        for hook in hooks:
            hook.remove()


@contextlib.contextmanager
def transformer_calls(transformer, clone: bool = True, answer=None):
    """A list that receives the keyword arguments of every ``transformer`` call in the block
    (tensors cloned, with ``clone``); ``answer(kwargs)``, when given, is returned instead of running
    the transformer."""
    calls = []
    original_forward = transformer.forward

    def capture(*args, **kwargs):
        calls.append({name: v.clone() if clone and torch.is_tensor(v) else v for name, v in kwargs.items()})
        return original_forward(*args, **kwargs) if answer is None else answer(kwargs)

    transformer.forward = capture
    try:
        yield calls
    finally:
        del transformer.forward


def full_attention(query, key, key_mask=None) -> torch.Tensor:
    """(B, H, S, S) softmax(QKᵀ/√d) in float64 from (B, S, H, D) q/k; ``key_mask`` True = attend."""
    q, k = query.double().transpose(1, 2), key.double().transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask, float("-inf"))
    return torch.softmax(logits, dim=-1)


def naive_maps(query, key, layout: TokenLayout, prompt_mask, key_mask=None):
    """Eqs. 3-4 for one block, literally: Ā = head mean, c = Ā[v,p]·1, T = D(Ā[v,v]·1)⁻¹Ā[v,v], r = T c."""
    A = full_attention(query, key, key_mask).mean(dim=1)
    v = layout.clean
    cams, rams = [], []
    for b in range(A.shape[0]):
        prompt = torch.nonzero(prompt_mask[b]).flatten()  # text positions = joint positions
        c = A[b, v][:, prompt] @ torch.ones(len(prompt), dtype=A.dtype)
        A_vv = A[b, v, v]
        T = torch.diag(1.0 / (A_vv @ torch.ones(A_vv.shape[1], dtype=A.dtype))) @ A_vv
        cams.append(c)
        rams.append(T @ c)
    return torch.stack(cams), torch.stack(rams)


def attention_output(query, key, value, key_mask=None) -> torch.Tensor:
    """Eq. 1, A·V with heads concatenated: (B, S, H*D) in float64."""
    out = full_attention(query, key, key_mask) @ value.double().transpose(1, 2)
    return out.transpose(1, 2).flatten(2)


ROUTES = {
    "lse": {"lse": True},  # the model's call returns its log-sum-exp (default on CPU)
    "fused": {"lse": False, "fused": True},  # step 1 rides in the model's call (8 extra channels)
    "separate": {"lse": False, "fused": False},  # step 1 as its own call
}
"""The probe routes of :class:`ProbePlan`: every probe test runs each one."""


def expression_plan(backbone, image, text, features=None, route="lse") -> ProbePlan:
    """A ProbePlan over every block with each prompt's expression tokens as the prompt set."""
    mask = torch.zeros(len(text.prompts), text.text_len)
    for row, prompt in enumerate(text.prompts):
        mask[row, prompt.indices("expression")] = 1
    return ProbePlan(backbone.layout_for(image, text), mask, None, features or {}, **ROUTES[route])
