"""The text-encoding cache (editseg.backbones.text_cache): bit-identical results, LRU eviction,
byte bound, the size switch, and no caching where the backbone's text encoder sees the image."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from editseg.backbones.flux2 import Flux2KleinBackbone
from editseg.backbones.text_cache import TextEncodingCache, join_text, split_text
from editseg.errors import ConfigError


class Counting:
    """Wraps a backbone's encode_text (instance attribute) and records each call's instructions."""

    def __init__(self, backbone):
        self.backbone, self.calls = backbone, []
        self.original = backbone.encode_text

    def __enter__(self):
        def encode(expressions, instructions, image=None, **options):
            self.calls.append(list(instructions))
            return self.original(expressions, instructions, image=image, **options)

        self.backbone.encode_text = encode
        return self

    def __exit__(self, *exc):
        del self.backbone.encode_text


def _same(a, b) -> None:
    assert a.expression == b.expression and a.instruction == b.instruction
    assert np.array_equal(a.mask, b.mask)
    for name in ("cam", "ram"):
        assert np.array_equal(a.maps[name], b.maps[name])
        assert np.array_equal(a.token_maps[name], b.token_maps[name])
    assert a.prompt_token_indices == b.prompt_token_indices and a.point == b.point


def _segmenter(backbone, size):
    from editseg import Segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Segmenter(backbone, batch_size=3, text_cache_size=size)


def test_cached_results_are_bit_identical_to_uncached(tiny_backbone):
    rng = np.random.default_rng(1)
    images = [(rng.random((64, 80, 3)) * 255).astype(np.uint8) for _ in range(2)]
    cached, plain = _segmenter(tiny_backbone, 16), _segmenter(tiny_backbone, 0)
    batches = [["the red ball", "a dog"], ["a cat", "the red ball", "a dog"], ["a dog", "the tall tree"]]
    with Counting(tiny_backbone) as counting:
        for image in images:
            cached.set_image(image)
            plain.set_image(image)
            for batch in batches:
                for a, b in zip(cached.predict(batch), plain.predict(batch)):
                    _same(a, b)
    cache = cached.method.text_cache
    assert len(cache) == 4 and cache.misses == 4  # each instruction encoded once, for every image
    assert cache.hits == 2 * 7 - 4
    # the uncached segmenter encoded every batch; the cached one only its misses
    assert sum(len(c) for c in counting.calls) == 2 * 7 + 4


def test_lru_eviction_and_hits(tiny_backbone):
    cache = TextEncodingCache(max_entries=2)
    encode = lambda *texts: cache.encode(tiny_backbone, list(texts), [f"remove {t}" for t in texts])  # noqa: E731
    with Counting(tiny_backbone) as counting:
        encode("a")
        encode("b")
        encode("a")  # hit: "a" becomes the most recent
        encode("c")  # evicts "b", the least recently used
        encode("a")  # still cached
        encode("b")  # encoded again
    assert counting.calls == [["remove a"], ["remove b"], ["remove c"], ["remove b"]]
    assert len(cache) == 2 and (cache.hits, cache.misses) == (2, 4)


def test_a_batch_encodes_only_its_misses_once(tiny_backbone):
    cache = TextEncodingCache(8)
    exprs = ["a", "b", "a", "c"]
    with Counting(tiny_backbone) as counting:
        cache.encode(tiny_backbone, ["b"], ["remove b"])
        text = cache.encode(tiny_backbone, exprs, [f"remove {e}" for e in exprs])
    assert counting.calls == [["remove b"], ["remove a", "remove c"]]
    assert [p.expression for p in text.prompts] == exprs
    assert text.tensors["embeds"].shape[0] == 4
    assert torch.equal(text.tensors["embeds"][0], text.tensors["embeds"][2])


def test_byte_bound_and_zero_disable(tiny_backbone):
    row = tiny_backbone.encode_text(["a"], ["remove a"])
    size = sum(t.numel() * t.element_size() for t in row.tensors.values())
    cache = TextEncodingCache(max_entries=10, max_bytes=size)
    for t in ("a", "b", "c"):
        cache.encode(tiny_backbone, [t], [f"remove {t}"])
    assert len(cache) == 1 and cache.bytes == size
    off = TextEncodingCache(0)
    with Counting(tiny_backbone) as counting:
        for _ in range(2):
            off.encode(tiny_backbone, ["a"], ["remove a"])
    assert len(counting.calls) == 2 and len(off) == 0 and not off.enabled
    with pytest.raises(ConfigError):
        TextEncodingCache(-1)


def test_an_image_dependent_backbone_never_caches(tiny_pipeline):
    """The declared property decides, not the model's name: the same FLUX.2 pipeline declared as
    seeing the image is encoded on every call."""

    class Seeing(Flux2KleinBackbone):
        text_sees_image = True

    backbone = Seeing(tiny_pipeline, name="tiny-random-flux2", is_random=True)
    cache = TextEncodingCache(8)
    with Counting(backbone) as counting:
        for _ in range(3):
            cache.encode(backbone, ["a"], ["remove a"])
    assert len(counting.calls) == 3 and len(cache) == 0 and cache.hits == 0


def test_settings_and_backbone_are_part_of_the_key(tiny_pipeline):
    first = Flux2KleinBackbone(tiny_pipeline, name="tiny-random-flux2", is_random=True)
    cache = TextEncodingCache(8)
    short = cache.encode(first, ["a"], ["remove a"])
    first.max_sequence_length = short.text_len + 4  # another padded length: another encoding
    longer = cache.encode(first, ["a"], ["remove a"])
    assert longer.text_len == short.text_len + 4 and cache.misses == 2
    second = Flux2KleinBackbone(tiny_pipeline, name="tiny-random-flux2", is_random=True)
    cache.encode(second, ["a"], ["remove a"])  # another backbone object: the cache starts over
    assert cache.misses == 3 and len(cache) == 1


def test_split_and_join_round_trip(tiny_backbone):
    text = tiny_backbone.encode_text(["a", "b c"], ["remove a", "remove b c"])
    rows = split_text(text, tiny_backbone.text_row_tensors)
    assert [r.tensors["embeds"].shape[0] for r in rows] == [1, 1]
    joined = join_text(rows, tiny_backbone.text_row_tensors)
    assert joined.prompts == text.prompts
    for name, value in text.tensors.items():
        assert torch.equal(joined.tensors[name], value)


def test_cli_text_cache_switch(tmp_path, capsys):
    from PIL import Image

    from editseg.cli.main import main

    Image.new("RGB", (64, 64)).save(tmp_path / "one.png")
    assert main(["segment", str(tmp_path / "one.png"), "the star", "--text-cache", "-1"]) == 2
    assert "--text-cache must be 0 (off) or more" in capsys.readouterr().err
