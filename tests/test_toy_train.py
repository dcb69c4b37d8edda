"""The toy editor's training loop: inputs match the inference path, and a few steps lower the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.backbones.flux2 import Flux2KleinBackbone
from editseg.data.shapes import ShapesWorld
from editseg.toy.model import ToyConfig, build_toy_pipeline, grammar_words, text_embeddings
from editseg.toy.config import TrainConfig
from editseg.toy.train import ShapesLatents, batch_indices, lr_at, token_change_mask, train

TINY = ToyConfig(heads=2, head_dim=16, double_blocks=1, single_blocks=1)


@pytest.fixture(scope="module")
def tiny_toy():
    pipeline = build_toy_pipeline(TINY, seed=0)
    return Flux2KleinBackbone(pipeline, name="toy-test")


def test_grammar_words_are_single_tokens(tiny_toy):
    tokenizer = tiny_toy.pipeline.tokenizer
    for word in grammar_words():
        assert len(tokenizer(" " + word)["input_ids"]) == 1, word
        assert len(tokenizer(word)["input_ids"]) == 1, word


def test_training_inputs_equal_inference_inputs(tiny_toy):
    """Batched training latents and text embeddings equal what the backbone builds at inference."""
    sample = ShapesWorld(seed=3).sample("train", 0)
    data = ShapesLatents(tiny_toy, ShapesWorld(seed=3), pool_size=1)
    batch = data.batch([0], tiny_toy.max_sequence_length)
    assert batch["input_ids"].shape == (1, TINY.text_length)
    with torch.no_grad():
        prepared = tiny_toy.prepare_image(Image.fromarray(sample.image))
        encoded = tiny_toy.encode_text([sample.expression], [sample.instruction])
        # the batched VAE pass may pick another convolution algorithm: float rounding only
        torch.testing.assert_close(batch["source"][0], prepared.tensors["latents"][0], rtol=1e-5, atol=1e-5)
        assert torch.equal(text_embeddings(tiny_toy.pipeline, batch["input_ids"]), encoded.tensors["embeds"])
    target = data.encode_images([sample.target])[0]
    torch.testing.assert_close(batch["target"][0], target, rtol=1e-5, atol=1e-5)
    assert batch["changed"][0].sum() > 0


def test_schedule_and_data_order_are_deterministic():
    config = TrainConfig(steps=100, warmup_steps=10)
    assert batch_indices(7, 4, 40, 0) == batch_indices(7, 4, 40, 0)
    assert batch_indices(7, 4, 40, 0) != batch_indices(7, 4, 40, 1)
    assert sorted(sum((batch_indices(s, 4, 40, 0) for s in range(10)), [])) == list(range(40))
    assert lr_at(0, config) < lr_at(9, config) == pytest.approx(config.lr)
    assert lr_at(99, config) < 0.1 * config.lr
    # When the wall-clock budget binds, the schedule follows the clock.
    timed = TrainConfig(steps=1000, warmup_steps=10)
    assert lr_at(20, timed, time_progress=1.0) == pytest.approx(timed.lr * timed.min_lr_ratio)
    mask = np.zeros((64, 64), bool)
    mask[0:3, 60:64] = True
    assert token_change_mask(mask, 8).nonzero()[0].tolist() == [7]
    assert token_change_mask(mask, 16).nonzero()[0].tolist() == [15]


def test_a_few_steps_lower_the_loss(tmp_path):
    config = TrainConfig(
        steps=30, minutes=2, batch_size=8, lr=3e-3, warmup_steps=1, pool_size=8, p_first_step=1.0,
        val_every=0, probe_every=0, log_every=1, calibration_samples=8, checkpoint_minutes=100, model=TINY,
    )
    losses = []
    final = train(tmp_path / "run", config, progress=False, on_log=lambda record: losses.append(record["loss"]))
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])
    assert (final / "model_index.json").is_file()
    assert (tmp_path / "run" / "train_log.jsonl").read_text().count("\n") == 30


def test_synonyms_start_with_one_embedding():
    from editseg.toy.model import word_concepts

    pipeline = build_toy_pipeline(ToyConfig(heads=2, head_dim=16, double_blocks=1, single_blocks=1, synonym_init=True), seed=0)
    tokenizer, weight = pipeline.tokenizer, pipeline.text_encoder.model.embed_tokens.weight

    def vector(word):
        return weight[tokenizer(" " + word)["input_ids"][0]]

    assert word_concepts()["ball"] == word_concepts()["circle"] == "shape:circle"
    same = torch.nn.functional.cosine_similarity(vector("ball"), vector("circle"), dim=0)
    other = torch.nn.functional.cosine_similarity(vector("ball"), vector("square"), dim=0)
    assert same > 0.8 and abs(other) < 0.6


def test_toy_train_command_passes_its_options(monkeypatch, tmp_path):
    import editseg.toy.train as toy_train
    from editseg.cli.main import main

    seen = {}
    monkeypatch.setattr(toy_train, "train", lambda out, config, progress: seen.update(out=out, config=config) or tmp_path)
    assert main(["toy", "train", "--out", str(tmp_path), "--minutes", "30", "--double-blocks", "4", "--single-blocks", "2",
                 "--threads", "2", "--no-progress"]) == 0
    config = seen["config"]
    assert config.minutes == 30 and config.threads == 2 and config.curriculum_steps == TrainConfig().curriculum_steps
    assert (config.model.double_blocks, config.model.single_blocks) == (4, 2)
    assert config.model.codec_downscale == ToyConfig().codec_downscale
