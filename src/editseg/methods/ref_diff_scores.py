"""Ref-Diff's equations as plain functions (Ni et al., arXiv:2308.16777, §3). Arrays are numpy
unless noted; masks are bool (n, H, W); maps are float (H, W)."""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # eq. 8: 5%, 10%, ..., 95%


def combine(generative: np.ndarray, discriminative: np.ndarray, alpha: float) -> np.ndarray:
    """Eq. 1: ``s_i = alpha * s_i^G + (1 - alpha) * s_i^D``."""
    return alpha * np.asarray(generative, dtype=np.float64) + (1.0 - alpha) * np.asarray(discriminative, dtype=np.float64)


def select(scores: np.ndarray) -> int:
    """Eq. 2: the proposal with the highest score (first on ties)."""
    return int(np.argmax(scores))


def normalize_attention(attention: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 5 without the resize: ``(a - min a) / (max a - min a + eps)`` over the whole map."""
    low, high = attention.min(), attention.max()
    return (attention - low) / (high - low + eps)


def positional_bias(height: int, width: int, direction: str | None, extent: float = 1.0) -> np.ndarray:
    """Eq. 6's P as an (H, W) float map: 1 at the named side falling linearly to 0 over ``extent``
    of the axis (0 beyond); all ones when there is no direction clue.

    The paper: "a soft mask with values ranging from 1 to 0 along the given direction axis"
    (``extent=1``); its released code ramps over 2/3 of the width (``extent=2/3``).
    """
    if direction is None:
        return np.ones((height, width), dtype=np.float32)
    if not 0.0 < extent <= 1.0:
        raise ValueError(f"extent must be in (0, 1], got {extent}")
    length = width if direction in ("left", "right") else height
    ramp_len = max(1, int(length * extent))
    ramp = np.zeros(length, dtype=np.float32)
    ramp[:ramp_len] = np.linspace(1.0, 0.0, ramp_len, dtype=np.float32)
    if direction in ("right", "bottom"):
        ramp = ramp[::-1].copy()
    if direction in ("left", "right"):
        return np.broadcast_to(ramp[None, :], (height, width)).copy()
    if direction in ("top", "bottom"):
        return np.broadcast_to(ramp[:, None], (height, width)).copy()
    raise ValueError(f"unknown direction {direction!r}")


def apply_bias(image: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Eq. 6: ``x' = x ⊙ P`` for a uint8 (H, W, 3) image (result rounded back to uint8)."""
    return np.clip(np.rint(image.astype(np.float32) * bias[..., None]), 0, 255).astype(np.uint8)


def region_embedding(masked_attention: torch.Tensor, crop: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 7: ``v_i = beta * f_{M_i}(x ⊙ P) + (1 - beta) * f(x ⊙ M_i)`` for (n, d) unit embeddings."""
    return beta * masked_attention + (1.0 - beta) * crop


def text_representation(global_text: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
    """§3.4: ``r``, the mean of the (unit) embeddings of the whole expression and of its subject word."""
    return (global_text + subject) / 2.0


def discriminative_scores(regions: torch.Tensor, text: torch.Tensor) -> np.ndarray:
    """Eq. 10: ``s_i^D = v_i r^T`` for regions (n, d) and ``r`` (d,)."""
    return (regions.double() @ text.double().reshape(-1)).cpu().numpy()


def weight_free_proposals(c: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> np.ndarray:
    """Eq. 8: ``{psi(c >= mu)}`` for each threshold ``mu``; (len(thresholds), H, W) bool."""
    return np.stack([c >= mu for mu in thresholds])


def generative_scores(c: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Eq. 9: mean of ``c`` inside each mask minus its mean outside (an empty side counts 0)."""
    masks = masks.reshape(len(masks), -1)
    values = c.reshape(-1).astype(np.float64)
    inside = masks.sum(1)
    outside = masks.shape[1] - inside
    sum_in = masks.astype(np.float64) @ values
    sum_out = values.sum() - sum_in
    mean_in = np.divide(sum_in, inside, out=np.zeros_like(sum_in), where=inside > 0)
    mean_out = np.divide(sum_out, outside, out=np.zeros_like(sum_out), where=outside > 0)
    return mean_in - mean_out


def proposal_score_map(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(H, W) float32 in [0, 1] for display: each pixel takes the highest score (min-max normalised
    over the proposals) of the proposals covering it; uncovered pixels are 0."""
    scores = np.asarray(scores, dtype=np.float64)
    low, high = scores.min(), scores.max()
    norm = (scores - low) / (high - low) if high > low else np.ones_like(scores)
    out = np.zeros(masks.shape[1:], dtype=np.float32)
    for mask, value in zip(masks, norm):
        np.maximum(out, np.where(mask, np.float32(value), np.float32(0)), out=out)
    return out
