"""``--refine-instruction`` end to end: `editseg segment` on the built-in tiny Step1X-Edit, whose own
tiny Qwen2.5-VL is reused as the refiner; the refinement is cached (asked once) and recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from editseg.cli.main import main
from editseg.components.refiner import InstructionRefiner


@pytest.fixture()
def image_path(tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_segment_refines_once_and_records(image_path, tmp_path, monkeypatch):
    cache = tmp_path / "refinements.jsonl"
    asked = []
    original = InstructionRefiner.generate

    def counting(self, image, instruction):
        asked.append(instruction)
        return original(self, image, instruction) and "Remove The Red Dog from the picture."

    monkeypatch.setattr(InstructionRefiner, "generate", counting)
    args = ["segment", str(image_path), "the red dog", "--model", "tiny-random-step1x", "--refine-instruction",
            "--refiner-cache", str(cache)]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert asked == ["remove the red dog"]  # the second run read the cache
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["expression"] == "the red dog"
    for out in ("a", "b"):
        [record_path] = (tmp_path / out).glob("*.json")
        record = json.loads(record_path.read_text())
        assert record["instruction"] == "Remove the red dog from the picture."
        settings = record["settings"]
        assert settings["refined_instruction"] == record["instruction"] and settings["refiner_fallback"] is False
        assert settings["refiner"].startswith("tiny-random-step1x:text_encoder|prompt:")


def test_refine_instruction_needs_a_vlm(image_path, tmp_path, capsys):
    code = main(["segment", str(image_path), "dog", "--model", "tiny-random-flux2", "--refine-instruction",
                 "--refiner-cache", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "o")])
    assert code != 0
    assert "--refiner-model" in capsys.readouterr().err


def test_eval_records_carry_refiner_fields():
    from editseg.evaluation.runner import REFINER_KEYS, sample_record
    from editseg.results import SegmentationResult

    class Sample:
        sample_id, image_id, expression = "s1", "i1", "the dog"

        def describe(self):
            return "s1"

    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    heat = mask.astype(np.float32)
    fields = {"refined_instruction": "Remove the dog.", "refiner": "vlm|prompt:x", "refiner_raw": "Remove the dog.", "refiner_fallback": False}
    result = SegmentationResult(
        "the dog", mask, instruction="Remove the dog.", maps={"cam": heat, "ram": heat},
        token_maps={"cam": heat, "ram": heat}, prompt_token_indices=[1], prompt_tokens=["dog"],
        config={"tau": 0.8, **fields},
    )
    record = sample_record(Sample(), result, mask)
    assert {k: record[k] for k in REFINER_KEYS} == fields and record["instruction"] == "Remove the dog."
