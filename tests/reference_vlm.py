"""Independent references for the Qwen2.5-VL text encoders (Step1X-Edit, Qwen-Image-Edit).

``reference_mrope_positions`` writes out Qwen2.5-VL's 3-D (M-RoPE) positions for one unpadded
sequence with still images, as its ``get_rope_index`` defines them (transformers 4.49 and 5 agree):
text tokens count up 0, 1, 2, ... on all three rows; an image of (t, h, w) patches, merged
``merge`` x ``merge``, starting at position s gets (s, s + row, s + col) for each merged patch in
row-major order; the text after it resumes at s + max(h, w) / merge.
"""

from __future__ import annotations

import torch


def reference_mrope_positions(ids: list[int], image_token: int, grids: list[tuple[int, int, int]], merge: int) -> torch.Tensor:
    """(3, L) positions of one unpadded sequence, walked token by token."""
    rows: list[tuple[int, int, int]] = []
    next_position, index, images = 0, 0, iter(grids)
    while index < len(ids):
        if ids[index] != image_token:
            rows.append((next_position,) * 3)
            next_position += 1
            index += 1
            continue
        t, h, w = next(images)
        h, w = h // merge, w // merge
        for _ in range(t):  # still images: the temporal index stays at s
            for row in range(h):
                for col in range(w):
                    rows.append((next_position, next_position + row, next_position + col))
        index += t * h * w
        next_position += max(h, w)
    return torch.tensor(rows).T


def rotary_positions(text_encoder, call):
    """(positions, result): the position ids the VLM's rotary embedding receives during ``call()``
    (exactly one language-model forward expected)."""
    seen = []
    rotary = text_encoder.model.language_model.rotary_emb
    handle = rotary.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    try:
        result = call()
    finally:
        handle.remove()
    assert len(seen) == 1, f"{len(seen)} language-model forwards"
    return seen[0], result
