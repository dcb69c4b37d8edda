"""--refine sam (our extension) on a tiny random SAM of the real transformers classes."""

from __future__ import annotations

import numpy as np
import pytest

from editseg.components.sam import SamComponent
from editseg.components.tiny import TINY_SAM
from editseg.methods.sam_refine import SamRefineSettings, mask_box, mask_iou, prompt_points, refine_with_sam


@pytest.fixture(scope="module")
def sam():
    s = SamComponent.from_pretrained(TINY_SAM, device="cpu")
    s.set_image((np.random.default_rng(4).random((40, 52, 3)) * 255).astype(np.uint8))
    return s


def test_prompts_naive():
    mask = np.zeros((20, 30), bool)
    mask[5:12, 8:20] = True
    assert mask_box(mask) == (8, 5, 20, 12)
    heat = np.zeros((20, 30))
    heat[6, 9], heat[7, 10], heat[11, 19] = 1.0, 0.9, 0.8
    heat[0, 0] = 5.0  # outside the mask: ignored
    assert prompt_points(mask, heat, 1, 0.25) == [(9.5, 6.5)]
    # second peak (10, 7) is within 0.25 * 12 = 3 px of the first: skipped for (19, 11)
    assert prompt_points(mask, heat, 2, 0.25) == [(9.5, 6.5), (19.5, 11.5)]
    centre = prompt_points(mask, None, 1, 0.25)[0]
    assert mask[int(centre[1]), int(centre[0])]


def test_refine_picks_best_overlap(sam):
    coarse = np.zeros((40, 52), bool)
    coarse[8:30, 10:40] = True
    heat = np.random.default_rng(0).random((40, 52))
    refined, info = refine_with_sam(sam, coarse, heat)
    masks, scores = sam.predict_box(info["box"], points_xy=info["points"], multimask=True)
    ious = [mask_iou(m, coarse) for m in masks]
    assert info["box"] == (10, 8, 40, 30) and len(info["points"]) == 1
    assert info["chosen"] == int(np.argmax(ious)) and (refined == masks[info["chosen"]]).all()
    _, by_score = refine_with_sam(sam, coarse, heat, SamRefineSettings(choose="sam-score"))
    assert by_score["chosen"] == int(np.argmax(scores))


def test_empty_mask_falls_back_to_heat_or_skips(sam):
    empty = np.zeros((40, 52), bool)
    out, info = refine_with_sam(sam, empty, None)
    assert info == {"refined": False} and not out.any()
    heat = np.zeros((40, 52))
    heat[10:20, 5:15] = 1.0
    _, info = refine_with_sam(sam, empty, heat)
    assert info["refined"] and info["box"] == (5, 10, 15, 20)
    with pytest.raises(ValueError):
        SamRefineSettings(choose="x")


def test_refine_result_in_place(sam):
    from editseg.results import SegmentationResult
    from editseg.methods.sam_refine import refine_result

    coarse = np.zeros((40, 52), bool)
    coarse[8:30, 10:40] = True
    ram = np.random.default_rng(1).random((40, 52)).astype(np.float32)
    result = SegmentationResult(expression="x", mask=coarse.copy(), maps={"ram": ram}, config={"tau": 0.8})
    expected, info = refine_with_sam(sam, coarse, ram)
    refine_result(sam, result)
    assert (result.mask == expected).all() and (result.maps["coarse"] == coarse).all()
    assert result.config["tau"] == 0.8 and result.config["sam_refine"]["chosen"] == info["chosen"]
    assert result.box == mask_box(expected)


def test_early_grounding_refine_sam(tiny_backbone, random_image):
    from editseg.config import MethodConfig
    from editseg.methods.early_grounding import EarlyGroundingMethod

    sam = SamComponent.from_pretrained(TINY_SAM, device="cpu")
    plain = EarlyGroundingMethod(tiny_backbone, MethodConfig())
    refined = EarlyGroundingMethod(tiny_backbone, MethodConfig(refine="sam"))
    refined.sam = sam
    from PIL import Image

    image = Image.fromarray(random_image)
    plain.set_image(image)
    refined.set_image(image)
    (coarse,) = plain.predict(["the red circle"])
    (result,) = refined.predict(["the red circle"])
    expected, info = refine_with_sam(sam, coarse.mask, coarse.maps["ram"])
    assert (result.mask == expected).all() and (result.maps["coarse"] == coarse.mask).all()
    assert result.config["refine"] == "sam" and result.config["sam_refine"]["box"] == info["box"]
    no_sam = EarlyGroundingMethod(tiny_backbone, MethodConfig(refine="sam"))
    no_sam.set_image(image)
    from editseg.errors import ConfigError

    with pytest.raises(ConfigError, match="SAM"):
        no_sam.predict(["x"])


def test_refine_sam_cli(tmp_path, random_image, capsys):
    import json

    from PIL import Image

    from editseg.cli.main import main

    path = tmp_path / "scene.png"
    Image.fromarray(random_image).save(path)
    code = main(["segment", str(path), "the red circle", "--model", "tiny-random-flux2", "--refine", "sam",
                 "--sam-model", "tiny-random-sam", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    [record_path] = (tmp_path / "o").glob("*.json")
    settings = json.loads(record_path.read_text())["settings"]
    assert settings["refine"] == "sam" and settings["sam_refine"]["refined"] is True
