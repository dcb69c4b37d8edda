"""The paper's analyses on a tiny toy editor: J(t, l) and the attention mass equal a naive
transcription of appendix A1 (eqs. A1-A3) on independently recorded features, and every figure
and the Markdown report are written."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.backbones.flux2 import Flux2KleinBackbone
from editseg.config import MethodConfig
from editseg.data.shapes import shapes_benchmark
from editseg.evaluation.metrics import MetricAccumulator
from editseg.probing.recorder import ProbePlan
from editseg.toy.model import ToyConfig, build_toy_pipeline
from editseg.toy.paper_analyses import analyse_tier, grid_rows
from editseg.toy.probe_grid import grid_mask, probe_grid

pytest.importorskip("matplotlib")

TINY = ToyConfig(heads=2, head_dim=16, double_blocks=1, single_blocks=1)
STEPS = 3


@pytest.fixture(scope="module")
def toy():
    from editseg import Segmenter

    backbone = Flux2KleinBackbone(build_toy_pipeline(TINY, seed=0), name="toy-test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Segmenter(backbone)


@pytest.fixture(scope="module")
def samples():
    return shapes_benchmark(2, tier="basic", world_seed=11)


def naive_grid(mask: np.ndarray, patch: int) -> np.ndarray:
    """The pixel under each token's centre (the toy's images are never resized or cropped)."""
    rows, cols = mask.shape[0] // patch, mask.shape[1] // patch
    return np.array([[mask[r * patch + patch // 2, c * patch + patch // 2] for c in range(cols)] for r in range(rows)])


def naive_j(features: np.ndarray, fg: list[bool]) -> float:
    """Eqs. A1-A3 term by term on L2-normalised rows."""
    rows = [f / math.sqrt(sum(x * x for x in f)) for f in features.astype(np.float64)]
    fore = [r for r, is_fg in zip(rows, fg) if is_fg]
    back = [r for r, is_fg in zip(rows, fg) if not is_fg]
    mu_f, mu_b = sum(fore) / len(fore), sum(back) / len(back)
    var_f = sum(float(((r - mu_f) ** 2).sum()) for r in fore) / len(fore)
    var_b = sum(float(((r - mu_b) ** 2).sum()) for r in back) / len(back)
    return float(((mu_f - mu_b) ** 2).sum()) / (var_f + var_b)


def test_separability_and_attention_mass_equal_a_naive_transcription(toy, samples):
    backbone = toy.backbone
    grid = probe_grid(toy, samples, grid_rows(backbone.num_blocks)[:2], range(STEPS), STEPS)
    assert grid.separability.shape == (2, STEPS, backbone.num_blocks)
    assert np.isfinite(grid.separability).all()
    for s, sample in enumerate(samples):
        image = backbone.prepare_image(Image.fromarray(sample.image))
        text = backbone.encode_text([sample.expression], [sample.instruction], image=image)
        fg = naive_grid(sample.mask, backbone.patch).reshape(-1)
        assert 0 < fg.sum() < fg.size
        positions = text.prompts[0].indices("expression")
        prompt = torch.zeros(1, text.text_len)
        prompt[0, positions] = 1.0
        blocks = frozenset(range(backbone.num_blocks))
        for k in range(STEPS):
            backbone.trajectories.clear()  # from scratch, not the analysis's shared trajectory
            plan = ProbePlan(layout=backbone.layout_for(image, text), prompt_mask=prompt, attention_blocks=blocks,
                             features={"attn": blocks})
            recorder = backbone.probe_forward(image, text, plan, seed=0, step_index=k, num_steps=STEPS)
            for b in range(backbone.num_blocks):
                expected = naive_j(recorder.features[("attn", b)][0].numpy(), list(fg))
                assert grid.separability[s, k, b] == pytest.approx(expected, rel=1e-5)
                c = recorder.cam[b][0].numpy().astype(np.float64)
                target = sum(v for v, f in zip(c, fg) if f) / fg.sum()
                background = sum(v for v, f in zip(c, fg) if not f) / (fg.size - fg.sum())
                assert grid.mass_target[s, k, b] == pytest.approx(target, rel=1e-5)
                assert grid.mass_background[s, k, b] == pytest.approx(background, rel=1e-5)
    # the steps differ (a real trajectory, not the first step three times)
    assert not np.allclose(grid.separability[:, 0], grid.separability[:, -1])
    # the full-method row read from the grid at step 0 equals the method's own prediction
    toy.set_image(samples[0].image)
    own = toy.predict([samples[0].expression], MethodConfig().replace(num_inference_steps=STEPS))[0]
    single = probe_grid(toy, samples[:1], grid_rows(backbone.num_blocks)[:1], [0], STEPS)
    accumulator = MetricAccumulator()
    accumulator.add_masks(own.mask, samples[0].mask)
    assert single.rows["full method (tau 0.8, all blocks)"][0]["mIoU"] == pytest.approx(accumulator.summary()["mIoU"])


def test_grid_mask_rules(toy, samples):
    toy.set_image(samples[0].image)
    geometry = toy.method.image.geometry
    mask = samples[0].mask
    assert np.array_equal(grid_mask(mask, geometry, "nearest"), naive_grid(mask, geometry.patch))
    p = geometry.patch
    coverage = mask.reshape(mask.shape[0] // p, p, mask.shape[1] // p, p).mean(axis=(1, 3)) > 0.5
    assert np.array_equal(grid_mask(mask, geometry, "coverage"), coverage)
    with pytest.raises(ValueError):
        grid_mask(mask, geometry, "bilinear")


@pytest.fixture(scope="module")
def tier(toy, samples):
    return analyse_tier(toy, samples, num_steps=2)


def test_tier_tables_and_report(tier, toy, tmp_path):
    from editseg.toy.paper_figures import FIGURES
    from editseg.toy.paper_report import report_markdown

    sweep = tier["sweep"]
    assert [r["timestep"] for r in sweep["timestep_rows"]][::7] == [0, 1]
    assert len(sweep["tau"]) == 9 and len(sweep["prompt_tokens"]) == 4
    assert len(sweep["attention_mass"]) == toy.backbone.num_blocks
    rows = {r["label"]: r for r in tier["headline"]["rows"]}
    # Table 2's rows and the grid's step-0 rows read the same forward: equal numbers
    assert rows["RAM only (map > 0.5)"]["mIoU"] == pytest.approx(
        next(r for r in sweep["timestep_rows"] if r["label"] == "step 0: RAM, all blocks")["mIoU"])
    paths = {name: tmp_path / "figs" / f"basic-{name}.png" for name in FIGURES}
    result = {"model": "toy-test", "generator_version": "x", "world_seed": 11, "architecture": "1 + 1", "tiers": {"basic": tier}}
    text = report_markdown(result, {"basic": paths}, tmp_path / "report.md", command="python bench/toy_paper_analyses.py --n 2")
    for name in FIGURES:
        assert f"(figs/basic-{name}.png)" in text
    assert "J(t, l)" in text and "ceiling (a)" in text and "chance" in text and "Table 2" in text


def test_every_figure_is_written(tier, tmp_path):
    from editseg.toy.paper_figures import FIGURES, write_figures

    paths = write_figures(tier, tmp_path / "figs", prefix="basic-", caption="tiny", dpi=40)
    assert sorted(paths) == sorted(FIGURES)
    for path in paths.values():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 150 and image.height > 100
