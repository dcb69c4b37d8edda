"""Initialise a toy editor from another toy editor whose tokens cover a different pixel patch.

toy-shapes v2 reads 8x8-pixel tokens (codec downscale 4); v3 reads 4x4-pixel tokens (downscale 2).
Every transformer weight except the token in/out projections has the same shape, and the word
embeddings share one tokenizer, so v3 can start from v2: the input projection of a 4x4 token is
v2's projection of that token seen at 2x zoom (each v3 pixel stands for the 2x2 v2 pixels it
would cover: their weights are summed), and the output projection is the mean of the 2x2 v2
outputs each v3 pixel stands for. Everything else (blocks, norms, time and text embedders, word
embeddings) is copied. Training then adapts the model to the new grid.

Token channel layout (``PixelCodec`` + klein's 2x2 patchify): channel
``((c * s * s + dy * s + dx) * 4 + py * 2 + px)`` holds colour ``c`` of the token's pixel
``(y, x) = (py * s + dy, px * s + dx)``, where ``s`` is the codec's downscale.
"""

from __future__ import annotations

from pathlib import Path

import torch


def token_channel(downscale: int, colour: int, y: int, x: int) -> int:
    """Index of pixel (y, x), colour ``colour`` within a token of ``2 * downscale`` pixels a side."""
    py, dy = divmod(y, downscale)
    px, dx = divmod(x, downscale)
    return (colour * downscale * downscale + dy * downscale + dx) * 4 + py * 2 + px


def zoom_channel_map(source_downscale: int, target_downscale: int) -> list[list[int]]:
    """For each target token channel, the source channels it stands for at the zoom ``source / target``."""
    zoom = source_downscale // target_downscale
    if zoom * target_downscale != source_downscale or zoom < 1:
        raise ValueError("the source token must be an integer multiple of the target token")
    side = 2 * target_downscale
    mapping: list[list[int]] = [[] for _ in range(3 * side * side)]
    for c in range(3):
        for y in range(side):
            for x in range(side):
                mapping[token_channel(target_downscale, c, y, x)] = [
                    token_channel(source_downscale, c, zoom * y + a, zoom * x + b) for a in range(zoom) for b in range(zoom)
                ]
    return mapping


def warm_start(pipeline, source: str | Path) -> dict[str, int]:
    """Load the toy pipeline folder ``source`` into ``pipeline`` (in place), adapting the token
    projections to ``pipeline``'s codec. Returns counts of copied and adapted tensors."""
    from diffusers import Flux2KleinPipeline

    import editseg.backbones.pixel_codec  # noqa: F401  (diffusers finds PixelCodec once imported)

    donor = Flux2KleinPipeline.from_pretrained(str(source))
    if donor.tokenizer.get_vocab() != pipeline.tokenizer.get_vocab():
        raise ValueError("warm start needs the same tokenizer vocabulary")
    mapping = zoom_channel_map(donor.vae.config.downscale, pipeline.vae.config.downscale)
    theirs = donor.transformer.state_dict()
    ours = pipeline.transformer.state_dict()
    copied = adapted = 0
    with torch.no_grad():
        for name, tensor in ours.items():
            if name == "x_embedder.weight":
                tensor.copy_(torch.stack([theirs[name][:, idx].sum(dim=1) for idx in mapping], dim=1))
                adapted += 1
            elif name in ("proj_out.weight", "proj_out.bias"):
                tensor.copy_(torch.stack([theirs[name][idx].mean(dim=0) for idx in mapping], dim=0))
                adapted += 1
            else:
                if theirs[name].shape != tensor.shape:
                    raise ValueError(f"{name}: {tuple(theirs[name].shape)} vs {tuple(tensor.shape)}")
                tensor.copy_(theirs[name])
                copied += 1
        pipeline.text_encoder.model.embed_tokens.weight.copy_(donor.text_encoder.model.embed_tokens.weight)
    return {"copied": copied, "adapted": adapted}
