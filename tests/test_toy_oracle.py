"""Oracle tests: the shipped toy editor (toy-shapes v4) grounds expressions through its first-step
attention, and deliberately broken inputs score clearly worse, so a wrong token layout (clean and
noisy ranges swapped) or a method that ignores the words fails CI.

Everything goes through the real API (``Segmenter`` → ``Flux2KleinBackbone`` → probes → method) on
the first 64 samples of the basic tier of the shapes benchmark (fixed benchmark seed). Floors sit a
margin below the values measured on exactly these samples (MODEL_CARD.md, "Oracle tests").
"""

from __future__ import annotations

import pytest
import torch

from editseg.backbones.flux2 import Flux2KleinBackbone
from editseg.config import MethodConfig
from editseg.data.shapes import shapes_benchmark
from editseg.backbones.pixel_codec import PixelCodec
from editseg.toy.analysis import edit_baseline, shifted_expressions
from editseg.toy.evaluate import load_segmenter, noisy_as_clean, score
from editseg.toy.model import TOY_ASSET_DIR

N_SAMPLES = 64
TIER = "basic"
# Measured on these 64 samples with the shipped weights (toy-shapes v4, MODEL_CARD.md): full mIoU
# 0.475, RAM PA 0.531, CAM PA 0.500 (chance 0.072); the model's own first-step edit picks the
# referent 0.359 (chance 0.430) and its edit-difference map segments at mIoU 0.281. Floors: about
# 0.08-0.1 below (two standard errors of a 64-sample mean).
MIOU_FLOOR = 0.39
RAM_POINT_FLOOR = 0.43
CAM_POINT_FLOOR = 0.40
#: v4 reads the words in its clean stream but barely edits at t = 1 (logit-normal training rarely
#: visits the first step): the paper's readout must beat the model's own edit map by this much.
READOUT_OVER_EDIT_MARGIN = 0.10
#: The issue's goal for the basic tier (n = 1000 on an unseen world seed): mIoU >= 0.60, RAM point
#: accuracy >= 0.90, edit accuracy >= 0.95. On this 64-sample subset it is asserted less a
#: sampling margin of about two standard errors.
GOAL = {"miou": 0.60 - 0.05, "ram_pa": 0.90 - 0.07, "edit": 0.95 - 0.05}
GOAL_MET = False
GOAL_MARK = pytest.mark.xfail(
    not GOAL_MET, reason="toy-shapes v4 does not reach the issue's goal (MODEL_CARD.md says by how much and why)", strict=True
)


def test_the_weights_ship_with_the_package():
    assert (TOY_ASSET_DIR / "model_index.json").is_file(), f"toy-shapes weights missing from {TOY_ASSET_DIR}"
    size = sum(p.stat().st_size for p in TOY_ASSET_DIR.rglob("*") if p.is_file())
    assert size <= 20 * 2**20, size


@pytest.fixture(scope="module")
def toy_segmenter():
    torch.manual_seed(0)
    return load_segmenter("toy-shapes")


@pytest.fixture(scope="module")
def samples():
    return shapes_benchmark(N_SAMPLES, tier=TIER)


@pytest.fixture(scope="module")
def reference(toy_segmenter, samples):
    return score(toy_segmenter, samples, MethodConfig(), "full")


@pytest.fixture(scope="module")
def edits(toy_segmenter, samples):
    return edit_baseline(toy_segmenter.backbone, samples)


def test_toy_model_loads_as_a_trained_klein_backbone(toy_segmenter):
    backbone = toy_segmenter.backbone
    assert isinstance(backbone, Flux2KleinBackbone)
    assert backbone.name == "toy-shapes" and not backbone.is_random
    assert isinstance(backbone.pipeline.vae, PixelCodec) and backbone.patch == 4  # 16x16 tokens at 64 px
    assert backbone.max_sequence_length == 16 and backbone.default_max_side == 64
    assert backbone.chat_text("remove the red circle") == "remove the red circle"  # minimal template


def test_the_papers_readout_beats_the_models_own_edit(edits, reference, samples):
    """The first-step attention (what the paper reads) segments the referent better than the edit
    the model predicts at that same step (|x0 - source|, the segmentation baseline)."""
    chance = sum(1 / len(s.objects) for s in samples) / len(samples)
    assert 0.0 <= edits.object_accuracy <= 1.0 and 0.3 < chance < 0.6, (edits, chance)
    assert reference.mIoU >= edits.mIoU + READOUT_OVER_EDIT_MARGIN, (reference, edits)
    assert reference.ram_point_accuracy > edits.point_accuracy, (reference, edits)


def test_full_method_beats_the_miou_floor(reference):
    assert reference.mIoU >= MIOU_FLOOR, reference


def test_cam_and_ram_argmax_land_on_the_target_far_above_chance(reference):
    assert reference.chance < 0.09
    assert reference.cam_point_accuracy >= CAM_POINT_FLOOR and reference.cam_point_accuracy >= 2.5 * reference.chance, reference
    assert reference.ram_point_accuracy >= RAM_POINT_FLOOR and reference.ram_point_accuracy >= 3 * reference.chance, reference


@GOAL_MARK
def test_issue_quality_goal(reference, edits):
    assert reference.mIoU >= GOAL["miou"] and reference.ram_point_accuracy >= GOAL["ram_pa"], reference
    assert edits.object_accuracy >= GOAL["edit"], edits


#: Measured: with the next sample's expression the method scores mIoU 0.364, RAM PA 0.422, CAM PA
#: 0.281 against 0.475 / 0.531 / 0.500 with the right one: v4's clean-token maps follow the words
#: (v3's did not; this was a strict expected failure until v4).
def test_another_samples_expression_breaks_grounding(toy_segmenter, samples, reference):
    """Prompt tokens from another sample's expression: the maps must stop finding this referent."""
    broken = score(toy_segmenter, samples, MethodConfig(), "shifted", expressions=shifted_expressions(samples))
    assert broken.mIoU <= reference.mIoU - 0.05, (broken, reference)
    assert broken.cam_point_accuracy <= reference.cam_point_accuracy - 0.1, (broken, reference)


def test_noisy_tokens_in_place_of_clean_tokens_break_grounding(toy_segmenter, samples, reference):
    """The probes read the noisy tokens (pure noise at the first step) as the image."""
    broken = score(noisy_as_clean(toy_segmenter), samples, MethodConfig(), "noisy as clean")
    # measured: mIoU 0.182, RAM PA 0.125, CAM PA 0.156 (vs 0.475 / 0.531 / 0.500)
    assert broken.mIoU <= reference.mIoU - 0.08, (broken, reference)
    assert broken.ram_point_accuracy <= reference.ram_point_accuracy - 0.15, (broken, reference)
    assert broken.cam_point_accuracy <= reference.cam_point_accuracy - 0.12, (broken, reference)


def test_broken_variants_leave_the_method_alone(toy_segmenter, samples):
    """A broken variant is a second segmenter on the same backbone: the original scores as before."""
    before = score(toy_segmenter, samples[:8], MethodConfig(), "before")
    during = score(noisy_as_clean(toy_segmenter), samples[:8], MethodConfig(), "during")
    after = score(toy_segmenter, samples[:8], MethodConfig(), "after")
    assert (after.mIoU, after.ram_point_accuracy) == (before.mIoU, before.ram_point_accuracy)
    assert (during.mIoU, during.ram_point_accuracy) != (before.mIoU, before.ram_point_accuracy)


def test_toy_eval_command_prints_the_table_per_kind_and_the_edit_check(capsys):
    from editseg.cli.main import main

    assert main(["toy", "eval", "--n", "4", "--tier", "basic", "--world-seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "| full (tau 0.8, block 4, expression tokens) |" in out
    assert "| expression kind (first row) | n | mIoU | RAM PA |" in out and "n = 4 benchmark samples" in out
    assert "referred object changed most" in out
