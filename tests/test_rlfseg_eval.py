"""`editseg eval --method rlfseg` runs through the same runner, records and summary as every method:
numbers against an independent computation, settings in the header, resume refusing other
methods/settings, and the shipped-LoRA default with its error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from editseg.cli.main import main
from editseg.errors import ModelNotFoundError
from editseg.evaluation.records import RECORDS_FORMAT, SettingsMismatchError, check_resumable, compare_settings


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> Path:
    """A random (non-zero) rank-4 LoRA on tiny-random-sd15, saved as `editseg train rlfseg` saves it."""
    from editseg.methods.rlfseg_models import load_flow_backbone

    folder = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    flow = load_flow_backbone("tiny-random-sd15")
    flow.add_lora(rank=4, init=False)
    flow.save_lora(folder)
    return folder


def _eval(out: Path, *extra: str) -> int:
    return main(["eval", "--dataset", "shapes", "--tier", "basic", "--limit", "4", "--world-seed", "7",
                 "--device", "cpu", "--out", str(out), "--no-progress", *extra])


def _independent(lora: Path, sampler: str) -> tuple[list[float], float]:
    """Per-sample IoU and oIoU computed here with the method and numpy, no runner."""
    from editseg.data.shapes import shapes_benchmark
    from editseg.methods.rlfseg import RLFseg
    from PIL import Image

    method = RLFseg.from_pretrained(lora=str(lora), device="cpu", sampler=sampler)
    ious, inter, union = [], 0, 0
    for sample in shapes_benchmark(4, tier="basic", world_seed=7):
        method.set_image(Image.fromarray(np.asarray(sample.image)))
        pred = method.predict([sample.expression])[0].mask
        gt = np.asarray(sample.mask, dtype=bool)
        i, u = int((pred & gt).sum()), int((pred | gt).sum())
        ious.append(1.0 if u == 0 else i / u)
        inter, union = inter + i, union + u
    return ious, inter / union


def test_eval_rlfseg_matches_an_independent_computation_and_records_its_settings(lora, tmp_path, capsys):
    out = tmp_path / "one-step"
    assert _eval(out, "--method", "rlfseg", "--lora", str(lora), "--sampler", "one-step") == 0
    summary = json.loads((out / "summary.json").read_text())
    ious, oiou = _independent(lora, "one-step")
    assert summary["num_samples"] == 4
    assert summary["metrics"]["mIoU"] == pytest.approx(100 * np.mean(ious))
    assert summary["metrics"]["oIoU"] == pytest.approx(100 * oiou)
    assert summary["metrics"]["Pr@0.5"] == pytest.approx(100 * np.mean([v >= 0.5 for v in ious]))  # IoU >= t
    lines = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    header, records = lines[0], lines[1:]
    assert header["format"] == RECORDS_FORMAT
    settings = header["settings"]
    expected_sha = hashlib.sha256((lora / "pytorch_lora_weights.safetensors").read_bytes()).hexdigest()[:16]
    assert settings["method"] == "rlfseg" and settings["model"] == "tiny-random-sd15"
    assert settings["config"]["sampler"] == "one-step" and settings["config"]["lora_sha256"] == expected_sha
    assert settings["lora_path"] == str(lora) and settings["split"] == "basic"
    assert [r["method"] for r in records] == ["rlfseg"] * 4
    assert [r["iou"] for r in records] == pytest.approx(ious)
    # the method's sampler is part of the row label, so aos and one-step are two rows of one table
    assert "editseg rlfseg: tiny-random-sd15 (one-step)" in (out / "table.md").read_text()

    capsys.readouterr()  # the same command resumes: nothing is redone
    assert _eval(out, "--method", "rlfseg", "--lora", str(lora), "--sampler", "one-step") == 0
    assert json.loads((out / "summary.json").read_text())["run"]["evaluated_now"] == 0

    # the quick multi-sampler score (`train rlfseg-eval`) agrees with the runner on the same samples
    capsys.readouterr()
    assert main(["train", "rlfseg-eval", "--lora", str(lora), "--n", "4", "--tier", "basic", "--world-seed", "7",
                 "--samplers", "one-step", "--device", "cpu", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["miou"] == pytest.approx(np.mean(ious)) and row["oiou"] == pytest.approx(oiou)


def test_resume_refuses_other_samplers_loras_and_methods(lora, tmp_path, capsys):
    out = tmp_path / "run"
    assert _eval(out, "--method", "rlfseg", "--lora", str(lora), "--sampler", "one-step", "--limit", "1") == 0
    before = (out / "records.jsonl").read_text()
    capsys.readouterr()
    assert _eval(out, "--method", "rlfseg", "--lora", str(lora), "--sampler", "aos", "--limit", "1") == 2
    err = capsys.readouterr().err
    assert "config.sampler: 'one-step' there, 'aos' here" in err
    # another LoRA (same path, other weights) is refused by its fingerprint
    other = tmp_path / "other-lora"
    other.mkdir()
    for f in lora.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "pytorch_lora_weights.safetensors").write_bytes(b"x" + (lora / "pytorch_lora_weights.safetensors").read_bytes())
    assert _eval(out, "--method", "rlfseg", "--lora", str(other), "--sampler", "one-step", "--limit", "1") == 2
    assert "config.lora_sha256" in capsys.readouterr().err
    # another method into the same folder: refused before any model loads, saying which method is there
    assert _eval(out, "--model", "tiny-random-flux2", "--limit", "1") == 2
    err = capsys.readouterr().err
    assert "holds records of the 'rlfseg' method" in err and "this run is 'early-grounding'" in err
    assert (out / "records.jsonl").read_text() == before  # nothing was written by the refused runs


def test_records_without_method_are_early_grounding():
    legacy = {"model": "toy-shapes", "config": {"tau": 0.8}, "dataset": "shapes"}
    compare_settings({**legacy, "method": "early-grounding"}, legacy, "old.jsonl")  # resumes
    with pytest.raises(SettingsMismatchError, match="holds records of the 'early-grounding' method.*this run is 'rlfseg'"):
        compare_settings({**legacy, "method": "rlfseg"}, legacy, "old.jsonl")
    # only the LoRA's location differs: the same LoRA, so the run resumes
    rlf = {"method": "rlfseg", "config": {"lora_sha256": "ab"}, "lora_path": "/a"}
    compare_settings(rlf, {**rlf, "lora_path": "/b"}, "x", ignore=("lora_path",))


def test_early_grounding_header_names_its_method_and_old_files_resume(tmp_path):
    from editseg.api import Segmenter
    from editseg.data.shapes_dataset import shapes_benchmark_dataset
    from editseg.evaluation.runner import evaluate, run_settings

    segmenter = Segmenter.from_pretrained("tiny-random-flux2", device="cpu")
    dataset = shapes_benchmark_dataset(2, tier="basic", world_seed=7)
    settings = run_settings(segmenter, dataset)
    assert settings["method"] == "early-grounding"
    old = {k: v for k, v in settings.items() if k != "method"}  # a file written before methods had names
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"format": RECORDS_FORMAT, "settings": old}) + "\n")
    check_resumable(path, {"method": "early-grounding", "max_side": settings["max_side"]})
    summary = evaluate(segmenter, dataset, path, limit=1, progress=False)
    assert summary["num_samples"] == 1 and json.loads(path.read_text().splitlines()[1])["method"] == "early-grounding"


def test_no_shipped_lora_is_a_clear_error(monkeypatch, tmp_path, capsys):
    from editseg.methods import rlfseg

    monkeypatch.setattr(rlfseg, "TOY_LORA_DIR", tmp_path / "absent")
    with pytest.raises(ModelNotFoundError, match="No shipped RLFseg LoRA for model 'toy-shapes'"):
        rlfseg.RLFseg.from_pretrained()
    with pytest.raises(ModelNotFoundError, match=r"model 'sd15'(.|\n)*editseg train rlfseg --model sd15(.|\n)*--lora"):
        rlfseg.RLFseg.from_pretrained("sd15")
    # through the CLI: one message, exit 2, before any data or model is loaded
    assert _eval(tmp_path / "out", "--method", "rlfseg") == 2
    err = capsys.readouterr().err
    assert "No shipped RLFseg LoRA for model 'toy-shapes'" in err and "editseg train rlfseg --model toy-shapes" in err
    assert "--lora" in err and "Traceback" not in err and not (tmp_path / "out").exists()


def test_default_model_uses_the_shipped_lora(monkeypatch, lora):
    from editseg.methods import rlfseg

    monkeypatch.setattr(rlfseg, "TOY_LORA_DIR", lora)
    assert rlfseg.resolve_lora(None, None) == lora and rlfseg.resolve_lora("toy-shapes", None) == lora
    assert rlfseg.resolve_lora("sd15", "/x/lora") == Path("/x/lora")  # an explicit LoRA always wins
    method = rlfseg.RLFseg.from_pretrained(device="cpu")  # the LoRA's config names its base model
    assert method.lora == str(lora) and method.settings()["model"] == "tiny-random-sd15"


def test_shipped_lora_is_package_data():
    """pyproject's package-data globs cover the shipped LoRA, and it fits the 5 MB budget."""
    import tomllib

    import editseg
    from editseg.methods.rlfseg import TOY_LORA_DIR

    if not TOY_LORA_DIR.is_dir():
        pytest.skip("no toy LoRA in this checkout")
    root = Path(editseg.__file__).parent
    globs = tomllib.loads((root.parent.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["editseg"]
    covered = {p for g in globs for p in root.glob(g) if p.is_file()}
    files = [p for p in TOY_LORA_DIR.iterdir() if p.is_file()]
    assert {"pytorch_lora_weights.safetensors", "rlfseg_config.json"} <= {p.name for p in files}
    assert set(files) <= covered
    assert sum(p.stat().st_size for p in files) <= 5 * 1024 * 1024
