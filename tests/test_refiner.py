"""MLLM instruction refiner on a tiny random Qwen2.5-VL (the tiny Step1X-Edit pipeline's, no downloads):
mm_token_type_ids, greedy determinism, cache hit/miss, fallback and record fields."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.components.refiner import (
    REFINE_PROMPT,
    InstructionRefiner,
    RefinementCache,
    image_hash,
    splice_expression,
)
from editseg.errors import ConfigError


class Backbone:
    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.name = "tiny-step1x"


@pytest.fixture(scope="module")
def pipeline():
    from editseg.backbones.step1x.tiny import build_tiny_step1x_pipeline

    return build_tiny_step1x_pipeline()


@pytest.fixture()
def image():
    rng = np.random.default_rng(2)
    return Image.fromarray((rng.random((56, 56, 3)) * 255).astype(np.uint8))


def test_inputs_carry_mm_token_type_ids(pipeline, image, tmp_path):
    refiner = InstructionRefiner.from_backbone(Backbone(pipeline), cache=tmp_path / "c.jsonl", max_new_tokens=4)
    inputs = refiner.inputs(image, "remove the dog")
    image_token = pipeline.text_encoder.config.image_token_id
    assert "mm_token_type_ids" in inputs
    np.testing.assert_array_equal(inputs["mm_token_type_ids"].bool().numpy(), (inputs["input_ids"] == image_token).numpy())
    assert int((inputs["input_ids"] == image_token).sum()) > 0
    text = pipeline.processor.tokenizer.decode(inputs["input_ids"][0])
    assert REFINE_PROMPT.format(instruction="remove the dog") in text


def test_generate_is_greedy_and_deterministic(pipeline, image, tmp_path):
    refiner = InstructionRefiner.from_backbone(Backbone(pipeline), max_new_tokens=5)
    a = refiner.generate(image, "remove the dog")
    b = refiner.generate(image, "remove the dog")
    assert a == b
    # equal to the model's own greedy generate on the processor's inputs (mm_token_type_ids included)
    inputs = refiner.inputs(image, "remove the dog")
    ids = inputs["input_ids"]
    model = pipeline.text_encoder
    with torch.no_grad():
        full = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert pipeline.processor.tokenizer.decode(full[0, ids.shape[1]:], skip_special_tokens=True) == a
    assert ids.shape[1] < full.shape[1] <= ids.shape[1] + 5


def test_cache_hit_miss_and_records(pipeline, image, tmp_path, monkeypatch):
    path = tmp_path / "refinements.jsonl"
    refiner = InstructionRefiner.from_backbone(Backbone(pipeline), cache=path, max_new_tokens=4)
    answers = iter(["Remove The Red Dog from the image.\nextra line", "should not be asked"])
    calls = []

    def fake_generate(img, instruction):
        calls.append(instruction)
        return next(answers)

    monkeypatch.setattr(refiner, "generate", fake_generate)
    first = refiner.refine(image, "the red dog")
    assert calls == ["remove the red dog"]
    assert first.instruction == "Remove the red dog from the image." and not first.fallback and not first.cached
    second = refiner.refine(image.copy(), "the red dog")  # same pixels, another object: cache hit
    assert calls == ["remove the red dog"] and second.cached and second.instruction == first.instruction
    # a new process reads the file back
    again = InstructionRefiner.from_backbone(Backbone(pipeline), cache=path, max_new_tokens=4)
    monkeypatch.setattr(again, "generate", lambda *a: pytest.fail("asked twice"))
    assert again.refine(image, "the red dog").cached
    # another refiner identity (prompt, decoding or model) is a miss
    other = InstructionRefiner.from_backbone(Backbone(pipeline), cache=path, max_new_tokens=7)
    monkeypatch.setattr(other, "generate", lambda img, instr: "Erase it.")
    dropped = other.refine(image, "the red dog")
    assert dropped.fallback and dropped.instruction == "remove the red dog" and not dropped.cached
    record = dropped.record()
    assert record == {
        "refined_instruction": "remove the red dog",
        "refiner": other.identity,
        "refiner_raw": "Erase it.",
        "refiner_fallback": True,
    }
    assert "max_new_tokens:7" in other.identity and other.identity != refiner.identity
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2 and {line["refiner"] for line in lines} == {refiner.identity, other.identity}
    assert lines[0]["image"] == image_hash(image)


def test_call_hook_needs_an_image(pipeline, image, monkeypatch):
    refiner = InstructionRefiner.from_backbone(Backbone(pipeline))
    with pytest.raises(ConfigError, match="set_image"):
        refiner("the dog")
    monkeypatch.setattr(refiner, "generate", lambda img, instr: "remove the dog on the left side.")
    refiner.set_image(image)
    assert refiner.record_for("the dog") == {}
    assert refiner("the dog") == "remove the dog on the left side."
    assert refiner.record_for(" the  dog ")["refined_instruction"] == "remove the dog on the left side."
    refiner.set_image(image)
    assert refiner.record_for("the dog") == {}


def test_splice_and_refusals():
    assert splice_expression('"Remove THE DOG now."', "the dog") == "Remove the dog now."
    assert splice_expression("", "the dog") is None
    assert splice_expression("remove the cat", "the dog") is None
    with pytest.raises(ConfigError, match="Qwen2.5-VL"):
        InstructionRefiner.from_backbone(type("B", (), {"pipeline": None, "name": "x"})())
    with pytest.raises(ConfigError):
        InstructionRefiner(None, None, "x", prompt="no placeholder")
    cache = RefinementCache.key("img", "the dog", "a") != RefinementCache.key("img", "the dog", "b")
    assert cache
