"""RLFseg training: short seeded runs on tiny real-class models lower the loss, resume exactly, and the
CLI/Method round trip works; data sources give clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.train.rlfseg.config import RLFsegTrainConfig
from editseg.train.rlfseg.data import FlowDataset, build_source
from editseg.train.rlfseg.trainer import rf_step_loss, step_indices, train, VelocityModel


def _config(model: str, **overrides) -> RLFsegTrainConfig:
    values = dict(model=model, source="shapes", train_size=4, val_size=2, batch_size=2, rank=4, lr=3e-3,
                  max_steps=20, log_every=1, val_every=0, checkpoint_every=0, seed=0)
    values.update(overrides)
    return RLFsegTrainConfig(**values)


def _fixed_loss(flow_backbone, config) -> float:
    """Loss on the whole (tiny) training set at fixed times: the same measurement before and after."""
    dataset = FlowDataset(build_source(config, image_size=flow_backbone.resolution), flow_backbone.resolution)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        loss, _ = rf_step_loss(VelocityModel(flow_backbone), flow_backbone, batch, torch.linspace(0.1, 1.0, len(dataset)))
    return loss.item()


@pytest.mark.parametrize("model", ["tiny-random-sd15", "toy-shapes"])
def test_twenty_steps_lower_the_loss(model, tmp_path):
    from editseg.methods.rlfseg_models import load_flow_backbone

    config = _config(model)
    flow_backbone = load_flow_backbone(model)
    before = _fixed_loss(flow_backbone, config)  # zero-initialised LoRA B: the base model's loss
    train(config, tmp_path, progress=False, flow=flow_backbone)
    after = _fixed_loss(flow_backbone, config)
    assert after < 0.7 * before, (before, after)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 21))
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 20


def test_resume_after_interruption_continues_the_same_run(tmp_path):
    config = _config("tiny-random-sd15", max_steps=6, checkpoint_every=1, val_every=3, rds=False)
    train(config, tmp_path / "straight", progress=False)
    straight = [json.loads(line) for line in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]

    def interrupt(record):
        if record["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", progress=False, on_log=interrupt)
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4
    train(config, tmp_path / "resumed", progress=False)
    resumed = [json.loads(line) for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
        assert a.get("val_miou") == pytest.approx(b.get("val_miou"), abs=1e-6) if "val_miou" in a else "val_miou" not in b


def test_rds_training_selects_per_sample(tmp_path):
    class SquareSam:
        """A fake SAM whose refined label is the central square of the image."""

        def set_image(self, image):
            self.side = image.size[0]

        def predict_box(self, box, points_xy=None, labels=None, multimask=False):
            mask = np.zeros((self.side, self.side), bool)
            mask[self.side // 4 : 3 * self.side // 4, self.side // 4 : 3 * self.side // 4] = True
            return mask[None], np.ones(1)

    records = []
    config = _config("tiny-random-sd15", rds=True, max_steps=3)
    train(config, tmp_path, progress=False, sam=SquareSam(), on_log=records.append)
    assert all(0.0 <= r["rds_original_fraction"] <= 1.0 for r in records)
    assert len(list((tmp_path / "refined-labels").glob("*.png"))) == 4  # cached once per training sample
    folder = train(_config("tiny-random-sd15", rds=True, refine_only=True, refined_dir=str(tmp_path / "r2")),
                   tmp_path / "refine", progress=False, sam=SquareSam())
    assert len(list(folder.glob("*.png"))) == 4 and not (tmp_path / "refine" / "lora").exists()


def test_step_indices_are_epoch_permutations_split_across_processes():
    seen = []
    for step in range(3):  # 12 samples, 2 processes x batch 2: 3 steps per epoch
        shares = [step_indices(step, 2, 2, p, 12, seed=7) for p in range(2)]
        assert not set(shares[0]) & set(shares[1])
        seen += shares[0] + shares[1]
    assert sorted(seen) == list(range(12))
    assert step_indices(3, 2, 2, 0, 12, 7) != step_indices(0, 2, 2, 0, 12, 7)  # a new epoch, a new order


def test_cli_trains_and_the_method_predicts(tmp_path, capsys):
    from editseg.cli.main import main
    from editseg.methods.rlfseg import RLFseg

    out = tmp_path / "run"
    code = main(["train", "rlfseg", "--model", "tiny-random-sd15", "--source", "shapes", "--train-size", "4",
                 "--batch-size", "2", "--max-steps", "2", "--rank", "4", "--val-size", "2", "--val-every", "2",
                 "--out", str(out), "--no-progress"])
    assert code == 0 and "saved" in capsys.readouterr().out
    method = RLFseg.from_pretrained(lora=str(out / "lora"), device="cpu")
    assert method.flow.name == "tiny-random-sd15"
    method.set_image(Image.new("RGB", (50, 30), (200, 10, 10)))
    results = method.predict(["the red square", "a blue circle"])
    assert [r.expression for r in results] == ["the red square", "a blue circle"]
    assert results[0].mask.shape == (30, 50) and results[0].mask.dtype == bool
    assert results[0].method == "rlfseg" and results[0].maps["probability"].shape == (30, 50)
    assert np.array_equal(results[0].mask, results[0].maps["probability"] > 0.5)

    from editseg.api import Segmenter

    segmenter = Segmenter.from_pretrained(method="rlfseg", lora=str(out / "lora"), device="cpu", sampler="one-step")
    result = segmenter.segment(Image.new("RGB", (50, 30), (200, 10, 10)), "the red square")
    assert result.method == "rlfseg" and result.config["sampler"] == "one-step" and result.mask.shape == (30, 50)
    Image.new("RGB", (50, 30), (200, 10, 10)).save(tmp_path / "scene.png")
    assert main(["segment", "--method", "rlfseg", "--lora", str(out / "lora"), "--sampler", "hss", str(tmp_path / "scene.png"),
                 "the red square", "--out", str(tmp_path / "seg")]) == 0
    record = json.loads((tmp_path / "seg" / "scene-00-the-red-square.json").read_text())
    assert record["method"] == "rlfseg" and record["settings"]["sampler"] == "hss"
    capsys.readouterr()
    assert main(["train", "rlfseg-eval", "--lora", str(out / "lora"), "--n", "2", "--samplers", "one-step,hss", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["sampler"], r["n"]) for r in rows] == [("one-step", 2), ("hss", 2)]
    assert all(0.0 <= r["miou"] <= 1.0 for r in rows)


def test_rlfseg_without_a_lora_says_what_to_do(monkeypatch, tmp_path):
    from editseg.errors import ModelNotFoundError
    from editseg.methods import rlfseg

    with pytest.raises(ModelNotFoundError, match="--lora"):
        rlfseg.RLFseg.from_pretrained("sd15")
    monkeypatch.setattr(rlfseg, "TOY_LORA_DIR", tmp_path / "absent")
    with pytest.raises(ModelNotFoundError, match="editseg train rlfseg"):
        rlfseg.RLFseg.from_pretrained()


def test_missing_data_gives_clear_errors(tmp_path):
    from editseg.data.base import DatasetFilesNotFound

    with pytest.raises(DatasetFilesNotFound, match="--data-root is required"):
        build_source(RLFsegTrainConfig(source="phrasecut"))
    with pytest.raises(DatasetFilesNotFound, match="refer_train.json"):
        len(build_source(RLFsegTrainConfig(source="phrasecut", data_root=str(tmp_path))))
    with pytest.raises(ValueError, match="unknown source"):
        build_source(RLFsegTrainConfig(source="ade20k"))


def test_phrasecut_reader_fills_the_union_of_instance_polygons(tmp_path):
    from editseg.data.phrasecut import PhraseCutDataset

    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "images" / "7.jpg")
    tasks = [{"task_id": "7__1", "image_id": 7, "phrase": "two boxes",
              "Polygons": [[[[1, 1], [4, 1], [4, 4], [1, 4]]], [[[10, 2], [12, 2], [12, 8], [10, 8]]]]}]
    (tmp_path / "refer_train.json").write_text(json.dumps(tasks))
    source = build_source(RLFsegTrainConfig(source="phrasecut", data_root=str(tmp_path)))
    example = source[0]
    assert example.expression == "two boxes" and example.mask.shape == (10, 20)
    expected = np.zeros((10, 20), bool)
    expected[1:5, 1:5] = True
    expected[2:9, 10:13] = True
    assert np.array_equal(example.mask, expected)
    assert PhraseCutDataset(tmp_path).samples[0].sample_id == "phrasecut-7__1"
