"""The Method interface, the method registry, the Segmenter façade over any method, the extended
SegmentationResult and its writers, MethodConfig.resolved and the lower-level probe call."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from editseg import MethodConfig, Segmenter
from editseg.errors import ConfigError
from editseg.methods.base import COMPONENT_KINDS, Method
from editseg.methods.early_grounding import EarlyGroundingMethod, ground, masks_at_input
from editseg.methods.registry import METHODS, UnknownMethodError, load_method, method_class
from editseg.results import SegmentationResult


class HalfMethod(Method):
    """A stand-in method: the left half of the image, with a map named like no early-grounding map."""

    name = "half"
    requires = ()

    def __init__(self):
        self.size = None

    @classmethod
    def from_pretrained(cls, model=None, **kwargs):
        return cls()

    def set_image(self, image: Image.Image) -> None:
        assert image.mode == "RGB"
        self.size = image.size

    def predict(self, expressions):
        width, height = self.size
        mask = np.zeros((height, width), bool)
        mask[:, : width // 2] = True
        ramp = np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))
        return [
            SegmentationResult(
                expression=e, mask=mask, method=self.name, maps={"generative": ramp}, point=(0, 0),
                box=(0, 0, width // 2, height), proposals=[{"mask": mask, "score": np.float32(0.5)}],
            )  # fmt: skip
            for e in expressions
        ]


def test_registry_entries_load_real_method_classes():
    assert "early-grounding" in METHODS
    for name, spec in METHODS.items():
        cls = method_class(name)
        assert issubclass(cls, Method) and cls.name == name
        assert set(cls.requires) == set(spec.requires) and set(spec.requires) <= set(COMPONENT_KINDS)


def test_unknown_method_lists_the_known_ones_and_the_closest():
    with pytest.raises(UnknownMethodError, match=r"Did you mean 'early-grounding'\?.*Known methods: early-grounding"):
        load_method("early_grounding")
    with pytest.raises(UnknownMethodError) as caught:
        load_method("zzzz")
    assert "Did you mean" not in str(caught.value) and "early-grounding" in str(caught.value)
    with pytest.raises(ConfigError):  # an EditsegError: the CLI prints it without a traceback
        Segmenter.from_pretrained("tiny-random-flux2", method="nope")


def test_segmenter_drives_any_method_and_refuses_early_grounding_calls(random_image):
    seg = Segmenter(method=HalfMethod())
    result = seg.segment(random_image, "the left half")
    assert result.mask.shape == (64, 80) and result.area == 64 * 40 and result.method == "half"
    assert seg.predict("x")[0].expression == "x"  # one string: still a list from predict
    with pytest.raises(AttributeError, match="half method gives no 'cam' map"):
        result.cam
    with pytest.raises(ConfigError, match="early-grounding"):
        seg.predict("x", MethodConfig())
    with pytest.raises(ConfigError, match="early-grounding"):
        seg.predict_sweep("x", [MethodConfig()])
    with pytest.raises(ConfigError, match="no backbone"):
        seg.backbone
    with pytest.raises(ConfigError, match="not both"):
        Segmenter()


def test_writers_handle_any_named_maps_point_box_and_proposals(random_image, tmp_path):
    from editseg.cli.writers import write_result

    seg = Segmenter(method=HalfMethod())
    result = seg.segment(random_image, "the left half")
    paths = write_result(result, Image.fromarray(random_image), tmp_path, "00-x")
    assert set(paths) == {"mask", "overlay", "generative", "json"}
    heat = np.asarray(Image.open(paths["generative"]))
    assert heat.shape == (64, 80, 3) and not np.array_equal(heat[:, 0], heat[:, -1])
    record = json.loads(paths["json"].read_text())
    assert record["method"] == "half" and record["maps"] == ["generative"]
    assert record["point"] == [0, 0] and record["box"] == [0, 0, 40, 64]
    assert record["proposals"][0]["score"] == 0.5 and record["proposals"][0]["mask_rle"]["size"] == [64, 80]
    assert record["files"]["generative"] == "00-x.generative.png"


def test_early_grounding_results_carry_named_maps_and_the_ram_argmax_point(segmenter, random_image):
    result = segmenter.segment(random_image, "the red circle")
    assert set(result.maps) == set(result.token_maps) == {"cam", "ram"} and result.method == "early-grounding"
    assert result.cam is result.maps["cam"] and result.ram_tokens is result.token_maps["ram"]
    x, y = result.point
    assert result.ram[y, x] == result.ram.max()


def test_resolved_fills_the_default_feature_block_and_checks_blocks(tiny_backbone):
    config = MethodConfig()
    resolved = config.resolved(tiny_backbone)
    assert resolved.feature_block == tiny_backbone.default_feature_block and config.feature_block is None
    assert resolved.resolved(tiny_backbone) is resolved
    with pytest.raises(ConfigError, match="feature_block 99 does not exist"):
        MethodConfig(feature_block=99).resolved(tiny_backbone)
    with pytest.raises(ConfigError, match=r"Blocks \[99\] do not exist"):
        MethodConfig(attention_blocks=(0, 99)).resolved(tiny_backbone)


def test_probe_is_what_predict_reads(segmenter, random_image):
    """The public probed forward, fed to the method's maths by hand, gives predict's results."""
    segmenter.set_image(random_image)
    config = MethodConfig().resolved(segmenter.backbone)
    probe = segmenter.probe(["the red circle", "a dog"])
    assert probe.instructions == ["remove the red circle", "remove a dog"]
    blocks = sorted(segmenter.backbone.resolve_blocks("all"))
    image = segmenter.method.image
    maps = ground(
        probe.recorder.stacked("cam", blocks), probe.recorder.stacked("ram", blocks),
        probe.recorder.features[(config.feature_site, config.feature_block)], image.geometry.grid, config,
    )  # fmt: skip
    results = segmenter.predict(["the red circle", "a dog"])
    for i, result in enumerate(results):
        np.testing.assert_allclose(result.ram_tokens, maps.ram[i].numpy(), atol=1e-6)
        np.testing.assert_array_equal(result.mask, masks_at_input(maps, image.geometry, config)[i].numpy())


def test_probe_features_only_and_text_reuse(segmenter, random_image):
    segmenter.set_image(random_image)
    first = segmenter.probe(["the dog"], attention=False, features={"adaln": [0, 2]})
    assert first.recorder.cam == {} == first.recorder.ram and set(first.recorder.features) >= {("adaln", 0), ("adaln", 2)}
    again = segmenter.probe(["the dog"], attention=False, features={"adaln": [0, 2]}, reuse_text=first)
    assert again.text is first.text
    torch.testing.assert_close(again.recorder.features[("adaln", 2)], first.recorder.features[("adaln", 2)])
    with pytest.raises(ConfigError, match="other expressions"):
        segmenter.probe(["the cat"], reuse_text=first)
    with pytest.raises(ConfigError, match="forward_key"):
        segmenter.probe(["the dog"], [MethodConfig(), MethodConfig(seed=3)])
    with pytest.raises(ConfigError, match="feature site"):
        segmenter.probe(["the dog"], features={"nowhere": [0]})


def test_early_grounding_from_pretrained_takes_the_editing_dit_component_only():
    with pytest.raises(ConfigError, match="sam"):
        EarlyGroundingMethod.from_pretrained(components={"sam": "facebook/sam-vit-base"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = Segmenter.from_pretrained(method="early-grounding", components={"editing-dit": "tiny-random-flux2"}, device="cpu")
    assert seg.backbone.name == "tiny-random-flux2" and isinstance(seg.method, EarlyGroundingMethod)
