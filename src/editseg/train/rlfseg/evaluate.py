"""Score an RLFseg LoRA on the shapes benchmark (the same scenes as ``editseg toy eval``)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ...data.shapes import shapes_benchmark
from ...methods.rlfseg import RLFseg


def score_on_shapes(lora: str, n: int = 200, sampler: str = "aos", device: str = "cpu") -> dict:
    """mIoU (mean per-sample IoU) and oIoU (cumulative) of ``lora`` with ``sampler`` on ``n`` benchmark scenes."""
    method = RLFseg.from_pretrained(lora=lora, device=device, sampler=sampler)
    ious, inter, union = [], 0, 0
    for sample in shapes_benchmark(n):
        method.set_image(Image.fromarray(np.asarray(sample.image)))
        pred = method.predict([sample.expression])[0].mask
        gt = np.asarray(sample.mask, dtype=bool)
        i, u = np.logical_and(pred, gt).sum(), np.logical_or(pred, gt).sum()
        ious.append(1.0 if u == 0 else i / u)
        inter, union = inter + i, union + u
    return {"sampler": sampler, "n": n, "miou": float(np.mean(ious)), "oiou": float(inter / max(union, 1)), "lora": lora}
