"""A bounded LRU cache of text encodings, for backbones whose text encoder never sees the image.

FLUX.2 [klein] and FLUX.1 Kontext encode the instruction alone (``Backbone.text_sees_image`` is
False), so the encoding of one instruction serves every image: a server answering the same
expressions again, or a dataset run over many images, need not run the text encoder again.
Qwen-Image-Edit and Step1X-Edit encode the instruction *with* the image (a VLM), so their
encodings are never cached: :meth:`TextEncodingCache.encode` then always calls the encoder.

Entries are one instruction each (one row of a batch), keyed by the backbone's name and
:meth:`~editseg.backbones.base.Backbone.text_settings` (anything else that changes the encoding,
e.g. the padded text length), the expression (its words are mapped to tokens) and the exact
instruction text (the template already applied). The misses of a batch are encoded together in
one encoder call and split into rows; a batch is then the concatenation of its rows. A hit
returns the very values the encoder produced, so a cached result equals the uncached one bit for
bit. (It also equals a fresh encoding of another batch composition wherever the encoder's rows
do not depend on their batch neighbours, which holds for the CPU kernels; tested.)

The cache is bounded by ``max_entries`` (0 disables it) and by ``max_bytes`` of tensors (a real
FLUX.2-klein-4B entry is 512 tokens × 7680 channels in bfloat16, about 7.9 MB); the least recently
used entry goes first. A cache serves one backbone object: handed another, it starts empty.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable, Sequence

import torch

from ..errors import ConfigError
from .base import Backbone, EncodedText, PreparedImage

DEFAULT_TEXT_CACHE_ENTRIES = 256
DEFAULT_TEXT_CACHE_BYTES = 512 * 2**20


class TextEncodingCache:
    """LRU of one-instruction encodings (see the module docstring); ``max_entries=0`` disables it."""

    def __init__(self, max_entries: int = DEFAULT_TEXT_CACHE_ENTRIES, max_bytes: int = DEFAULT_TEXT_CACHE_BYTES):
        if int(max_entries) < 0 or int(max_bytes) < 0:
            raise ConfigError(f"text cache limits must be >= 0, got max_entries={max_entries!r}, max_bytes={max_bytes!r}.")
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._rows: OrderedDict[Hashable, tuple[EncodedText, int]] = OrderedDict()
        self._owner: Backbone | None = None
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def clear(self) -> None:
        self._rows.clear()
        self.bytes = 0

    def encode(
        self, backbone: Backbone, expressions: Sequence[str], instructions: Sequence[str], image: PreparedImage | None = None
    ) -> EncodedText:
        """``backbone.encode_text(expressions, instructions, image=image)``, served from the cache
        where the backbone's text encoding does not depend on the image."""
        if not self.enabled or backbone.text_sees_image:
            return backbone.encode_text(expressions, instructions, image=image)
        if backbone is not self._owner:
            self.clear()
            self._owner = backbone
        settings = (backbone.name, *backbone.text_settings())
        keys = [(settings, e, i) for e, i in zip(expressions, instructions)]
        missing = list(OrderedDict.fromkeys(k for k in keys if k not in self._rows))
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[Hashable, EncodedText] = {}
        if missing:
            encoded = backbone.encode_text([k[1] for k in missing], [k[2] for k in missing], image=image)
            fresh = dict(zip(missing, split_text(encoded, backbone.text_row_tensors)))
        rows = []
        for key in keys:
            if key in fresh:
                rows.append(fresh[key])
            else:
                rows.append(self._rows[key][0])
                self._rows.move_to_end(key)
        for key, row in fresh.items():
            self._store(key, row)
        return join_text(rows, backbone.text_row_tensors)

    def _store(self, key: Hashable, row: EncodedText) -> None:
        size = sum(t.numel() * t.element_size() for t in row.tensors.values() if isinstance(t, torch.Tensor))
        if size > self.max_bytes:
            return
        self._rows[key] = (row, size)
        self.bytes += size
        while len(self._rows) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, dropped) = self._rows.popitem(last=False)
            self.bytes -= dropped


def split_text(text: EncodedText, row_tensors: Sequence[str]) -> list[EncodedText]:
    """One :class:`EncodedText` per instruction: ``row_tensors`` are sliced along dim 0 and copied
    (a row must not keep its whole batch alive), the other tensors are shared by the whole batch."""
    rows = []
    for index, prompt in enumerate(text.prompts):
        tensors: dict[str, Any] = {
            name: value[index : index + 1].clone() if name in row_tensors else value for name, value in text.tensors.items()
        }
        rows.append(EncodedText(prompts=[prompt], tensors=tensors))
    return rows


def join_text(rows: Sequence[EncodedText], row_tensors: Sequence[str]) -> EncodedText:
    """The batch of ``rows`` (inverse of :func:`split_text`): row tensors concatenated on dim 0."""
    first = rows[0]
    tensors = {
        name: torch.cat([row.tensors[name] for row in rows]) if name in row_tensors else value
        for name, value in first.tensors.items()
    }
    return EncodedText(prompts=[p for row in rows for p in row.prompts], tensors=tensors)
