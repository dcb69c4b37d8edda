"""Tests for the synthetic shapes referring world (editseg.data.shapes)."""

from __future__ import annotations

import collections
import hashlib
import json
from itertools import combinations

import numpy as np
import pytest
from PIL import Image

from editseg.data.shapes import (
    COLORS,
    BENCHMARK_SEED,
    GENERATOR_VERSION,
    HELDOUT_PAIRS,
    KINDS,
    SHAPES,
    Description,
    Expression,
    ShapesWorld,
    parse_expression,
    resolve,
    save_samples_as_manifest,
    shapes_benchmark,
)
from editseg.data.shapes_world import BACKGROUND_PALETTE, SceneObject

#: sha256 of the first 5 samples (see _digest). If these change on purpose, bump
#: GENERATOR_VERSION and update the constants. V1: the default world's "test" split at the
#: benchmark seed (unchanged in v2); V2: the two benchmark tiers.
BENCHMARK_DIGEST_V1 = "d475ddca7d46476b5111866f7be0242bdc9035ed94a144d41e835124bb6d3dfc"
FULL_TIER_DIGEST_V2 = "4a4f3c9181058804040f9bef3fb90d16424d5e43e0156deb46b5ef604b31d68c"
BASIC_TIER_DIGEST_V2 = "d9a378ec2f3a4f5dc72acc03b8e3f5f631123af09bd56e07b87cfe85242b1a7e"


def _digest(samples) -> str:
    h = hashlib.sha256()
    for s in samples:
        for array in (s.image, s.target, s.mask):
            h.update(array.tobytes())
        h.update(s.instruction.encode())
    return h.hexdigest()


def _same(a, b) -> bool:
    return (
        np.array_equal(a.image, b.image)
        and np.array_equal(a.target, b.target)
        and np.array_equal(a.mask, b.mask)
        and a.instruction == b.instruction
        and a.objects == b.objects
        and a.target_index == b.target_index
    )


@pytest.fixture(scope="module")
def benchmark():
    return shapes_benchmark(1000)


@pytest.fixture(scope="module")
def train():
    return ShapesWorld(seed=0).split("train", 600)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_samples():
    a, b = ShapesWorld(seed=3), ShapesWorld(seed=3)
    for split in ("train", "val", "test"):
        for i in (0, 5, 17):
            assert _same(a.sample(split, i), b.sample(split, i))
    assert not _same(ShapesWorld(seed=4).sample("train", 0), a.sample("train", 0))
    assert not _same(a.sample("val", 0), a.sample("train", 0))


def test_sample_independent_of_generation_order():
    world = ShapesWorld(seed=11)
    batch = world.split("train", 12)
    assert _same(world.sample("train", 9), batch[9])
    assert _same(world.split("train", 3, start=7)[1], batch[8])
    assert _same(ShapesWorld(seed=11).sample("train", 4), batch[4])


def test_benchmark_bytes_are_stable(benchmark):
    first = _digest(benchmark[:5])
    assert _digest(shapes_benchmark(5)) == first
    assert _digest(benchmark[:5]) == first
    assert first == FULL_TIER_DIGEST_V2, "generator output changed: bump GENERATOR_VERSION"
    assert _digest(shapes_benchmark(5, tier="basic")) == BASIC_TIER_DIGEST_V2
    assert _digest(ShapesWorld(seed=BENCHMARK_SEED).split("test", 5)) == BENCHMARK_DIGEST_V1  # defaults unchanged
    assert GENERATOR_VERSION == "2"
    assert all(s.generator_version == GENERATOR_VERSION for s in benchmark[:5])


def test_tiers():
    basic = shapes_benchmark(40, tier="basic", world_seed=5)
    assert all(s.kind == "attribute" and 2 <= len(s.objects) <= 4 and s.split == "val" for s in basic)
    assert all(s.seed == 5 and s.target_object.scale == 1.5 for s in basic)
    full = shapes_benchmark(80, tier="full")
    assert {s.kind for s in full} == set(KINDS) and all(s.split == "test" and len(s.objects) <= 4 for s in full)
    held = set(HELDOUT_PAIRS)
    assert all((s.target_object.color, s.target_object.shape) in held for s in full)
    assert all((s.target_object.color, s.target_object.shape) not in held for s in basic)
    # objects are 1.5x the default size: the large ones span 0.48 of the image side
    large = [o for s in full for o in s.objects if o.size == "large"]
    assert max(o.bbox[2] - o.bbox[0] for o in large) >= 0.45 * 64
    with pytest.raises(ValueError, match="tier"):
        shapes_benchmark(1, tier="nope")


def test_layout_is_independent_of_image_size():
    small, big = ShapesWorld(image_size=32), ShapesWorld(image_size=128)
    for i in range(10):
        a, b = small.sample("train", i), big.sample("train", i)
        assert a.expression == b.expression and a.image.shape == (32, 32, 3) and b.mask.shape == (128, 128)
        assert [o.center for o in a.objects] == [o.center for o in b.objects]


# ----------------------------------------------------------------------------- expressions


def test_every_expression_resolves_uniquely(benchmark, train):
    for s in list(train) + list(benchmark[:300]) + ShapesWorld(seed=2).split("val", 100):
        assert resolve(s.objects, s.expression_struct) == [s.target_index], s.expression
        assert s.kind == s.expression_struct.kind
        # the words themselves say the same thing
        assert parse_expression(s.expression) == s.expression_struct, s.expression
        assert s.instruction == f"remove {s.expression}"


def test_resolver_semantics():
    def obj(shape, color, size, x, y):
        return SceneObject(shape, color, size, (x, y))

    scene = [
        obj("circle", "red", "small", 0.2, 0.2),
        obj("circle", "blue", "large", 0.8, 0.25),
        obj("star", "green", "small", 0.5, 0.8),
        obj("circle", "red", "large", 0.22, 0.75),
    ]
    assert resolve(scene, parse_expression("the red circle")) == [0, 3]
    assert resolve(scene, parse_expression("the small red ball")) == [0]
    assert resolve(scene, parse_expression("the rightmost circle")) == [1]
    # centres 0.02 apart horizontally: too close to call
    assert resolve(scene, parse_expression("the leftmost circle")) == [0, 3]
    assert resolve(scene, parse_expression("the biggest circle")) == [1, 3]
    assert resolve(scene, parse_expression("the smallest red disc")) == [0]
    # object 3 is only 0.05 above the star: in the grey zone, so it stays a candidate
    assert resolve(scene, parse_expression("the circle above the green star")) == [0, 1, 3]
    assert resolve(scene, parse_expression("the big blue ball over the star")) == [1]
    assert resolve(scene, parse_expression("the circle below the star")) == []
    assert resolve(scene, parse_expression("the circle to the left of the green star")) == [0, 3]
    assert resolve(scene, parse_expression("the red circle below the blue circle")) == [3]
    # ambiguous anchor: presupposition failure
    assert resolve(scene, parse_expression("the star below the red circle")) == []
    assert parse_expression("big violet box at the top") == Expression(
        "spatial", Description("square", "purple", "large"), direction="top"
    )
    with pytest.raises(ValueError):
        parse_expression("the red banana")


def test_synonyms_are_used(benchmark, train):
    words = collections.Counter(
        w for s in list(benchmark) + list(train) for w in s.expression.replace("plus sign", "plus_sign").split()
    )
    for group in (
        ("circle", "ball", "disc"),
        ("square", "box", "block"),
        ("purple", "violet"),
        ("big", "large"),
        ("small", "little", "tiny"),
        ("left", "leftmost"),
        ("biggest", "largest"),
        ("above", "over"),
    ):
        assert all(words[w] > 0 for w in group), (group, [words[w] for w in group])
    assert words["on"] > 0 and words["to"] > 0  # "on the left", "to the left of"
    articles = collections.Counter(s.expression.split()[0] == "the" for s in benchmark)
    assert articles[True] > 600 and articles[False] > 50


def test_kinds_distribution(benchmark):
    counts = collections.Counter(s.kind for s in benchmark)
    assert set(counts) == set(KINDS)
    assert min(counts.values()) >= 150, counts


def test_distractors_are_common(benchmark):
    def has_distractor(s):
        t = s.target_object
        return any(
            i != s.target_index and (o.shape == t.shape or o.color == t.color) for i, o in enumerate(s.objects)
        )

    assert np.mean([has_distractor(s) for s in benchmark]) > 0.8
    no_distractors = ShapesWorld(distractor_probability=0.0, kind_weights=(1, 0, 0, 0)).split("train", 200)
    assert np.mean([has_distractor(s) for s in no_distractors]) < 0.6


# ----------------------------------------------------------------------------- pixels


def test_remove_edits_exactly_the_mask(benchmark, train):
    for s in list(train[:200]) + list(benchmark[:200]):
        assert s.image.dtype == np.uint8 and s.image.shape == (64, 64, 3) and s.mask.dtype == bool
        changed = np.any(s.image != s.target, axis=-1)
        assert np.array_equal(changed, s.mask)
        assert np.array_equal(s.target[s.mask], s.background[s.mask])
        assert np.array_equal(s.target[~s.mask], s.image[~s.mask])
        assert np.array_equal(s.mask, s.object_masks[s.target_index])


def test_masks_are_the_painted_pixels(train):
    for s in train[:200]:
        painted = s.object_masks.any(axis=0)
        assert np.array_equal(s.image[~painted], s.background[~painted])
        for obj, m in zip(s.objects, s.object_masks):
            assert m.sum() == obj.area and obj.area > 0
            assert np.all(s.image[m] == COLORS[obj.color])
            x0, y0, x1, y1 = obj.bbox
            assert m[y0:y1, x0:x1].sum() == obj.area


def test_objects_do_not_overlap_or_touch(train):
    for s in train[:300]:
        for a, b in combinations(range(len(s.objects)), 2):
            ma = s.object_masks[a]
            grown = ma.copy()
            grown[1:] |= ma[:-1]
            grown[:-1] |= ma[1:]
            grown[:, 1:] |= ma[:, :-1]
            grown[:, :-1] |= ma[:, 1:]
            assert not np.any(grown & s.object_masks[b])


def test_small_objects_visible_at_32():
    for s in ShapesWorld(image_size=32).split("train", 150):
        assert min(o.area for o in s.objects) >= 10


def test_background_colours_far_from_object_colours(train):
    objects = np.array(list(COLORS.values()), dtype=float)
    palette = np.array(BACKGROUND_PALETTE, dtype=float)
    assert np.linalg.norm(palette[:, None] - objects[None], axis=-1).min() > 85
    for s in train[:50]:
        pixels = s.background.reshape(-1, 3).astype(float)
        assert np.linalg.norm(pixels[:, None] - objects[None], axis=-1).min() > 50


def test_recolor_changes_only_masked_pixels():
    world = ShapesWorld(seed=5, edit="recolor")
    for i in range(100):
        s = world.sample("train", i)
        assert s.edit == "recolor" and s.new_color != s.target_object.color
        assert s.instruction.startswith(f"make {s.expression} ")
        assert np.array_equal(np.any(s.image != s.target, axis=-1), s.mask)
        assert np.all(s.target[s.mask] == COLORS[s.new_color])
        removed = ShapesWorld(seed=5).sample("train", i)
        assert removed.expression == s.expression and np.array_equal(removed.image, s.image)


# ----------------------------------------------------------------------------- splits


def test_heldout_pairs_are_fixed():
    assert HELDOUT_PAIRS == (
        ("blue", "star"),
        ("green", "cross"),
        ("orange", "diamond"),
        ("purple", "square"),
        ("white", "circle"),
        ("yellow", "triangle"),
    )
    assert 0.1 <= len(HELDOUT_PAIRS) / (len(COLORS) * len(SHAPES)) <= 0.2


def test_heldout_compositions_only_targeted_in_test(benchmark, train):
    held = set(HELDOUT_PAIRS)
    val = ShapesWorld(seed=0).split("val", 200)
    for s in list(train) + val:
        assert (s.target_object.color, s.target_object.shape) not in held
    # ... though they do appear as distractors in training scenes
    assert any((o.color, o.shape) in held for s in train for o in s.objects)
    test_targets = collections.Counter((s.target_object.color, s.target_object.shape) for s in benchmark)
    assert set(test_targets) == held


# ----------------------------------------------------------------------------- manifest


def test_manifest_round_trip(tmp_path):
    samples = ShapesWorld(seed=1).split("test", 6)
    manifest = save_samples_as_manifest(samples, tmp_path, include_targets=True)
    lines = manifest.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(samples)
    for line, s in zip(lines, samples):
        record = json.loads(line)
        assert {"id", "image", "expression", "mask", "instruction", "kind"} <= set(record)
        assert record["id"] == s.id and record["expression"] == s.expression and record["kind"] == s.kind
        image = np.array(Image.open(tmp_path / record["image"]))
        mask = np.array(Image.open(tmp_path / record["mask"])) > 127
        target = np.array(Image.open(tmp_path / record["target"]))
        assert np.array_equal(image, s.image) and np.array_equal(target, s.target)
        assert np.array_equal(mask, s.mask)
    assert len({json.loads(line)["id"] for line in lines}) == len(samples)


def test_metadata_is_json_serialisable():
    s = ShapesWorld(seed=1).sample("train", 3)
    meta = json.loads(json.dumps(s.metadata()))
    assert meta["target_index"] == s.target_index and meta["kind"] == s.kind
    assert len(meta["objects"]) == len(s.objects) and meta["objects"][0]["bbox"] is not None
    assert meta["expression_struct"]["kind"] == s.kind
