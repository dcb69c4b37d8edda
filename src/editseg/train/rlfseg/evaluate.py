"""Score an RLFseg LoRA on a validation/test source: the shapes benchmark (the scenes of
``editseg eval --dataset shapes``), PhraseCut, RefCOCO/+/g or a manifest. mIoU is the mean per-sample IoU,
oIoU the cumulative intersection over the cumulative union, at the input resolution.

A quick look at several samplers in one command, with no records file. ``editseg eval --method rlfseg``
is the full path (records, resume, shards, Pr@X, the same summary as every method); on the same
samples both give the same mIoU and oIoU (tested)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ...methods.rlfseg import RLFseg
from .config import RLFsegTrainConfig
from .data import Example, build_source


def _examples(source: str, data_root: str | None, split: str, n: int | None, tier: str = "full",
              world_seed: int | None = None):
    if source == "shapes":
        from ...data.shapes import BENCHMARK_SEED, shapes_benchmark

        for s in shapes_benchmark(n or 1000, tier=tier, world_seed=BENCHMARK_SEED if world_seed is None else world_seed):
            yield Example(s.id, Image.fromarray(np.asarray(s.image)), s.expression, np.asarray(s.mask, dtype=bool))
        return
    config = RLFsegTrainConfig(source=source, data_root=data_root, val_split=split, val_size=n or 0)
    examples = build_source(config, validation=True)
    for i in range(len(examples)):
        yield examples[i]


def score(lora: str, source: str = "shapes", n: int | None = 200, sampler: str = "aos", *, data_root: str | None = None,
          split: str = "val", device: str | None = None, model: str | None = None, tier: str = "full",
          world_seed: int | None = None) -> dict:
    """mIoU and oIoU of ``lora`` with ``sampler`` on the first ``n`` samples (all when ``n`` is 0/None) of
    ``source`` (shapes: ``tier`` and ``world_seed`` as ``editseg eval --dataset shapes``)."""
    method = RLFseg.from_pretrained(model, lora=lora, device=device, sampler=sampler)
    ious, inter, union = [], 0, 0
    for example in _examples(source, data_root, split, n, tier, world_seed):
        method.set_image(example.image)
        pred = method.predict([example.expression])[0].mask
        i, u = np.logical_and(pred, example.mask).sum(), np.logical_or(pred, example.mask).sum()
        ious.append(1.0 if u == 0 else i / u)
        inter, union = inter + i, union + u
    return {"sampler": sampler, "source": source, "split": tier if source == "shapes" else split, "n": len(ious), "miou": float(np.mean(ious)),
            "oiou": float(inter / max(union, 1)), "lora": lora}
