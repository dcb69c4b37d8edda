"""Ablation sweeps and the separability study on the tiny random model (two shapes scenes).

Checks: sweep metrics equal separate ``evaluate`` runs, forwards are shared (counted), resume gives
identical tables, plots are valid PNGs of the promised size, the ground truth reaches the token grid
through the crop, and J equals a naive computation of eqs. A1-A3 from recorded features.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.config import MethodConfig
from editseg.data.shapes_dataset import shapes_benchmark_dataset
from editseg.evaluation.ablations import (
    build_sweep,
    config_dirname,
    mask_to_token_grid,
    parse_sweep_names,
    run_sweep,
    separability_study,
)
from editseg.evaluation.metrics import resize_mask
from editseg.evaluation.runner import EvaluationError, evaluate, read_records
from editseg.geometry import ImageGeometry
from editseg.probing.recorder import ProbePlan

PANEL = (200, 150)


@pytest.fixture(scope="module")
def data():
    return shapes_benchmark_dataset(2)


@contextmanager
def counted_forwards(segmenter):
    calls: list[int] = []
    handle = segmenter.backbone.pipeline.transformer.register_forward_hook(lambda *args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def swept(seg, data, tmp_path_factory):
    """modules + feature_site + tau (0.5, 0.8): 6 distinct configs, one forward per image."""
    out = tmp_path_factory.mktemp("sweep")
    with counted_forwards(seg) as calls:
        results = run_sweep(seg, data, ["modules", "feature_site", "tau"], out, taus=(0.5, 0.8), panel_size=PANEL)
    return out, results, len(calls)


def test_sweep_shares_one_forward_per_image(swept, data):
    out, results, forwards = swept
    assert forwards == len(data)  # 6 configs, 2 images, one expression each
    assert set(results) == {"modules", "feature_site", "tau"}
    assert [r.setting.label for r in results["modules"].rows] == ["CAMs", "CAMs + RAMs", "CAMs + RAMs + FSL"]
    # the full method at tau 0.8 with MMSA features is one config in three sweeps: one records folder
    assert results["modules"].rows[2].directory == results["tau"].rows[1].directory == results["feature_site"].rows[2].directory
    assert len(list((out / "configs").iterdir())) == 6


def test_sweep_equals_separate_evaluate_runs(swept, seg, data, tmp_path):
    out, results, _ = swept
    for label, config in [("CAMs", MethodConfig(mode="cam")), ("AdaLN (adaln)", MethodConfig(feature_site="adaln")), ("tau 0.5", MethodConfig(tau=0.5))]:
        row = next(r for sweep in results.values() for r in sweep.rows if r.setting.label == label)
        summary = evaluate(seg, data, tmp_path / row.directory.name / "records.jsonl", config=config, progress=False)
        assert row.metrics == summary["metrics"], label
        ours = json.loads((row.directory / "summary.json").read_text())
        assert ours["settings"] == summary["settings"] and ours["metrics"] == summary["metrics"]
        strip = lambda records: [{k: v for k, v in r.items() if k != "timings"} for r in records]  # noqa: E731
        assert strip(read_records(row.directory / "records.jsonl")[1]) == strip(read_records(tmp_path / row.directory.name / "records.jsonl")[1])


def test_timestep_and_prompt_sweeps_count_their_forwards(seg, data, tmp_path):
    # t=0 and the default prompt set share one forward; t=2 of 3 steps costs 2 denoising + 1 probed
    # forward; the three other prompt-token sets cost one each.
    with counted_forwards(seg) as calls:
        results = run_sweep(seg, data, ["timestep", "prompt_tokens"], tmp_path, limit=1, timesteps=(0, 2), num_steps=3, plots=False)
    assert len(calls) == 1 + 3 + 3
    assert results["timestep"].rows[0].directory == results["prompt_tokens"].rows[0].directory  # both the base config
    assert results["timestep"].rows[0].directory.name == "default"


def test_resume_after_interruption_gives_identical_tables(swept, seg, data, tmp_path):
    out, _, _ = swept
    sweeps = ["modules", "feature_site", "tau"]
    run_sweep(seg, data, sweeps, tmp_path, limit=1, taus=(0.5, 0.8), plots=False)
    # A crash mid-image: one config has its line cut short, another lost its record entirely.
    configs = sorted((tmp_path / "configs").iterdir())
    cut, lost = configs[0] / "records.jsonl", configs[1] / "records.jsonl"
    text = cut.read_text()
    cut.write_text(text[: len(text) - 25])
    lost.write_text(lost.read_text().splitlines(keepends=True)[0])
    with counted_forwards(seg) as calls, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncated line is reported with a warning
        run_sweep(seg, data, sweeps, tmp_path, taus=(0.5, 0.8), panel_size=PANEL)
    assert len(calls) == 2  # the damaged first image again (for the two configs), then the second
    for name in sweeps:
        assert (tmp_path / f"{name}.md").read_text() == (out / f"{name}.md").read_text()
        ours, reference = (json.loads((d / f"{name}.json").read_text())["rows"] for d in (tmp_path, out))
        assert [r["metrics"] for r in ours] == [r["metrics"] for r in reference]
    with counted_forwards(seg) as calls:  # complete: nothing to do
        run_sweep(seg, data, sweeps, tmp_path, taus=(0.5, 0.8), plots=False)
    assert calls == []


def test_sweep_refuses_records_of_other_settings(seg, data, tmp_path):
    run_sweep(seg, data, ["modules"], tmp_path, limit=1, plots=False)
    seg_settings = json.loads((tmp_path / "configs" / "mode-cam" / "records.jsonl").read_text().splitlines()[0])
    seg_settings["settings"]["max_side"] = 999
    path = tmp_path / "configs" / "mode-cam" / "records.jsonl"
    path.write_text(json.dumps(seg_settings) + "\n")
    with pytest.raises(EvaluationError, match="max_side"):
        run_sweep(seg, data, ["modules"], tmp_path, limit=1, plots=False)


def test_plots_are_pngs_of_the_promised_size(swept, seg, data, tmp_path):
    out, results, _ = swept
    for result in results.values():
        with Image.open(result.plot_path) as image:
            image.verify()
        with Image.open(result.plot_path) as image:
            assert image.format == "PNG" and image.size == (2 * PANEL[0], PANEL[1])
    # crossed sweeps: a heatmap (feature_block x timestep) and lines per category (attention blocks)
    crossed = run_sweep(
        seg, data, ["feature_block*timestep", "attention_blocks*timestep"], tmp_path, limit=1,
        timesteps=(0,), blocks=(1, 3), panel_size=(160, 120),
    )  # fmt: skip
    for result in crossed.values():
        assert result.sweep.crossed
        with Image.open(result.plot_path) as image:
            assert image.format == "PNG" and image.size == (320, 120)
    assert "published" not in (out / "modules.md").read_text().split("\n\n")[1]  # shapes: no published columns


def test_published_columns_on_a_paper_benchmark(swept):
    from editseg.evaluation.ablations import SweepResult, sweep_table

    _, results, _ = swept
    result = results["feature_site"]
    table = sweep_table(SweepResult(result.sweep, result.rows, ("refcoco", "val"), result.model))
    assert "oIoU (published)" in table and "| MMSA (attn) |" in table and "53.94" in table and "57.56" in table
    assert "Table 3" in table


def test_sweep_definitions():
    base = MethodConfig()
    assert parse_sweep_names("tau, feature_block*timestep,tau") == ["tau", "feature_block*timestep"]
    with pytest.raises(EvaluationError, match="unknown sweep"):
        parse_sweep_names("taus")
    modules = build_sweep("modules", base, num_blocks=5)
    assert [s.config.mode for s in modules.settings] == ["cam", "ram", "full"]
    assert all(s.config.map_threshold == 0.5 for s in modules.settings)
    assert [s.config.feature_block for s in build_sweep("feature_block", base, 57, block_stride=10).settings] == [0, 10, 20, 30, 40, 50]
    blocks = build_sweep("attention_blocks", base, 5)
    assert [(s.config.mode, s.config.attention_blocks) for s in blocks.settings][:3] == [("cam", "all"), ("cam", "double"), ("cam", "single")]
    grid = build_sweep("feature_block*timestep", base, 5, timesteps=(0, 5), num_steps=28)
    assert len(grid.settings) == 10 and {s.config.timestep_index for s in grid.settings} == {0, 5}
    assert grid.settings[0].config.num_inference_steps == 28
    timestep = build_sweep("timestep", base, 5, timesteps=(0, 3), num_steps=4).settings
    assert timestep[0].config == base and timestep[1].config.num_inference_steps == 4
    with pytest.raises(EvaluationError, match="outside"):
        build_sweep("timestep", base, 5, timesteps=(0, 28))
    assert config_dirname(MethodConfig(), 3) == config_dirname(MethodConfig(feature_block=3), 3) == "default"
    assert config_dirname(MethodConfig(mode="cam", attention_blocks=(0, 2)), 3) == "mode-cam__attention_blocks-0+2"


def test_mask_to_token_grid_through_resize_and_crop():
    # a 10x8 input resized to 20x16, the centre 16x16 kept, 4-pixel tokens: a 4x4 grid
    geometry = ImageGeometry(input_size=(10, 8), resized_size=(20, 16), crop=(2, 0, 16, 16), patch=4)
    mask = np.random.default_rng(0).random((8, 10)) > 0.5
    # token (r, c) centre: resized (2 + 4c + 2, 4r + 2) -> input (2 + 2c, 2r + 1)
    expected = mask[np.ix_([1, 3, 5, 7], [2, 4, 6, 8])]
    np.testing.assert_array_equal(mask_to_token_grid(mask, geometry), expected)
    plain = ImageGeometry(input_size=(32, 24), resized_size=(32, 24), crop=(0, 0, 32, 24), patch=4)
    big = np.random.default_rng(1).random((24, 32)) > 0.5
    np.testing.assert_array_equal(mask_to_token_grid(big, plain), resize_mask(big, plain.grid))
    with pytest.raises(ValueError, match="10x8"):
        mask_to_token_grid(np.zeros((10, 8), bool), geometry)


def naive_separability(features: np.ndarray, fg: np.ndarray) -> float:
    """Eqs. A1-A3 written out with loops over tokens, on L2-normalised features."""
    rows = [f / np.linalg.norm(f) for f in features.astype(np.float64)]
    fg_rows = [r for r, m in zip(rows, fg.reshape(-1)) if m]
    bg_rows = [r for r, m in zip(rows, fg.reshape(-1)) if not m]
    mu_fg, mu_bg = sum(fg_rows) / len(fg_rows), sum(bg_rows) / len(bg_rows)
    var_fg = sum(float(np.sum((r - mu_fg) ** 2)) for r in fg_rows) / len(fg_rows)
    var_bg = sum(float(np.sum((r - mu_bg) ** 2)) for r in bg_rows) / len(bg_rows)
    return float(np.sum((mu_fg - mu_bg) ** 2)) / (var_fg + var_bg)


def test_separability_equals_naive_computation(seg, data, tmp_path):
    sample = data[0]
    summary = separability_study(seg, data, timesteps=(0, 1), blocks=(1, 3), num_steps=2, limit=1, out_dir=tmp_path, panel_size=PANEL)
    backbone = seg.backbone
    image = backbone.prepare_image(sample.load_image(), max_side=seg.max_side)
    text = backbone.encode_text([sample.expression], [seg.instruction_for(sample.expression)])
    fg = mask_to_token_grid(sample.load_mask(), image.geometry)
    assert 0 < fg.sum() < fg.size
    plan = ProbePlan(backbone.layout_for(image, text), torch.zeros(1, text.text_len), frozenset(), {"attn": frozenset({1, 3})})
    entry = summary["samples"][0]
    assert entry["id"] == sample.sample_id and entry["fg_tokens"] == int(fg.sum())
    for t in (0, 1):
        recorder = backbone.probe_forward(image, text, plan, seed=seg.config.seed, step_index=t, num_steps=2)
        for block in (1, 3):
            expected = naive_separability(recorder.features[("attn", block)][0].numpy(), fg)
            assert entry["J"][str(t)][str(block)] == pytest.approx(expected, rel=1e-9)
    assert summary["plot_block"] == 3  # the tiny model's default feature block
    with Image.open(tmp_path / "separability.png") as image_file:
        assert image_file.format == "PNG" and image_file.size == PANEL
    saved = json.loads((tmp_path / "separability.json").read_text())
    assert saved["stats"]["0"]["3"]["n"] == 1
    # resumed: no forward the second time, same summary
    with counted_forwards(seg) as calls:
        again = separability_study(seg, data, timesteps=(0, 1), blocks=(1, 3), num_steps=2, limit=1, out_dir=tmp_path, panel_size=PANEL)
    assert calls == [] and again["samples"] == summary["samples"]


def test_cli_eval_sweep_and_separability(tmp_path, capsys, monkeypatch, seg):
    import editseg.cli.options as cli
    from editseg.cli.main import main

    monkeypatch.setattr(cli, "segmenter_from_args", lambda args: seg)
    out = tmp_path / "sweep"
    assert main(["eval-sweep", "--dataset", "shapes", "--limit", "1", "--sweep", "modules,tau", "--taus", "0.5,0.8", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "**modules**" in printed and "| tau 0.5 |" in printed
    assert {p.name for p in out.iterdir()} >= {"modules.md", "modules.png", "tau.json", "configs"}
    assert main(["eval-separability", "--dataset", "shapes", "--limit", "1", "--timesteps", "0", "--out", str(tmp_path / "sep"), "--no-progress"]) == 0
    assert "separability J (attn features, block 3)" in capsys.readouterr().out
    assert main(["eval-sweep", "--dataset", "shapes", "--limit", "1", "--sweep", "nope", "--out", str(out)]) == 2
    assert "unknown sweep 'nope'" in capsys.readouterr().err
