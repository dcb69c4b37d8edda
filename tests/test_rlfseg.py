"""RLFseg: flow math against naive transcriptions of the paper's equations, RDS, LoRA plumbing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from editseg.methods import rlfseg_flow as flow
from editseg.train.rlfseg import rds


# ----------------------------------------------------------------------------- eq. 2 and eq. 4
def test_interpolation_and_flow_loss_match_naive_transcription():
    g = torch.Generator().manual_seed(0)
    z1, z0, v = (torch.randn(3, 2, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([0.0, 0.3, 1.0])
    z_t = flow.interpolate(z1, z0, t)
    loss = flow.flow_loss(v, z1, z0)
    for b in range(3):
        expected_zt = t[b] * z1[b] + (1 - t[b]) * z0[b]
        assert torch.allclose(z_t[b], expected_zt)
        total = 0.0
        for value in ((z1[b] - z0[b]) - v[b]).flatten().tolist():
            total += value * value
        assert loss[b].item() == pytest.approx(total / z1[b].numel(), rel=1e-5)
    assert torch.equal(z_t[0], z0[0]) and torch.equal(z_t[2], z1[2])  # t = 0 is the mask, t = 1 the image


def test_dynamic_selection_is_eq4_per_sample():
    original = torch.tensor([0.5, 2.0, 1.0, 3.0], requires_grad=True)
    refined = torch.tensor([1.0, 1.0, 1.0, 0.1], requires_grad=True)
    selected, indicator = flow.dynamic_selection(original, refined)
    for i in range(4):
        one = 1.0 if original[i].item() < refined[i].item() else 0.0  # ties go to the refined label
        assert selected[i].item() == pytest.approx(one * original[i].item() + (1 - one) * refined[i].item())
        assert bool(indicator[i]) == (one == 1.0)
    selected.sum().backward()
    assert original.grad.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert refined.grad.tolist() == [0.0, 1.0, 1.0, 1.0]


# ----------------------------------------------------------------------------- eqs. 5-10
def _linear_velocity(scale: torch.Tensor, offset: torch.Tensor):
    """A velocity field depending on z and t (so multi-step differs from one step)."""
    return lambda z, t: scale * z + offset * t.view(-1, 1, 1, 1)


def _naive_gamma(reference, z0_pred, delta, eps):
    num = den = 0.0
    for r, p, d in zip(reference.flatten().tolist(), z0_pred.flatten().tolist(), delta.flatten().tolist()):
        if abs(r - p) < eps:
            num += abs(r - p)
            den += abs(d)
    return 0.0 if den == 0 else num / den


def test_aos_matches_naive_transcription_of_eq7():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(2, 2, 3, 3, generator=g)
    velocity = _linear_velocity(torch.randn(1, 2, 1, 1, generator=g) * 0.5, torch.randn(1, 2, 3, 3, generator=g))
    z_black = torch.randn(1, 2, 3, 3, generator=g)
    eps = 1.0
    z_aos, gamma = flow.adaptive_one_step(z1, velocity, z_black, eps)
    for b in range(2):
        delta = -velocity(z1[b : b + 1], torch.ones(1))[0]  # Δz = v_{1→0} Δt
        z0_pred = z1[b] + delta  # eq. 5
        expected_gamma = _naive_gamma(z_black[0], z0_pred, delta, eps)  # eqs. 6-7
        assert 0 < expected_gamma  # the test exercises a non-empty stable set
        assert gamma[b].item() == pytest.approx(expected_gamma, rel=1e-5)
        assert torch.allclose(z_aos[b], z1[b] + delta * (1 + expected_gamma), atol=1e-5)


def test_aos_with_empty_stable_set_is_the_plain_one_step():
    z1 = torch.zeros(1, 1, 2, 2)
    velocity = lambda z, t: torch.ones_like(z)  # noqa: E731
    z_aos, gamma = flow.adaptive_one_step(z1, velocity, torch.full((1, 1, 2, 2), 100.0), epsilon=0.1)
    assert gamma.item() == 0.0 and torch.equal(z_aos, flow.one_step(z1, velocity)[0])


def test_multi_step_and_hss_match_naive_transcription_of_eqs_8_to_10():
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(2, 2, 3, 3, generator=g)
    velocity = _linear_velocity(torch.randn(1, 2, 1, 1, generator=g) * 0.5, torch.randn(1, 2, 3, 3, generator=g))
    steps, eps = 5, 0.5
    z_hss, gamma = flow.hybrid_step(z1, velocity, steps, eps)
    for b in range(2):
        z = z1[b : b + 1].clone()
        for k in range(steps):  # Euler from t = 1 down to 0, Δt = 1/K
            t = 1.0 - k / steps
            z = z - (1.0 / steps) * velocity(z, torch.tensor([t]))
        assert torch.allclose(flow.multi_step(z1, velocity, steps)[b], z[0], atol=1e-5)
        delta = -velocity(z1[b : b + 1], torch.ones(1))[0]
        expected = _naive_gamma(z[0], z1[b] + delta, delta, eps)
        assert expected > 0
        assert gamma[b].item() == pytest.approx(expected, rel=1e-5)
        assert torch.allclose(z_hss[b], z1[b] + delta * (1 + expected), atol=1e-5)


def test_sample_dispatch_and_errors():
    z1 = torch.randn(1, 1, 2, 2)
    velocity = lambda z, t: 0.5 * z  # noqa: E731
    assert torch.allclose(flow.sample(z1, velocity, "one-step"), 0.5 * z1)
    with pytest.raises(ValueError, match="z_black"):
        flow.sample(z1, velocity, "aos")
    with pytest.raises(ValueError, match="unknown sampler"):
        flow.sample(z1, velocity, "ddim")


# ----------------------------------------------------------------------------- RDS (eq. 3, Algorithm 1)
def test_anchor_points_are_kmeans_centres_of_the_foreground():
    mask = np.zeros((20, 40), dtype=bool)
    mask[2:6, 2:6] = True  # centre (3.5, 3.5)
    mask[12:18, 30:36] = True  # centre (32.5, 14.5)
    points = rds.anchor_points(mask, 2)
    assert sorted(map(tuple, np.round(points, 3))) == [(3.5, 3.5), (32.5, 14.5)]
    assert len(rds.anchor_points(mask[:3, :3], 5)) == 1  # k capped at the number of foreground pixels


class FakeSam:
    """Returns the queued masks in turn and records the prompts."""

    def __init__(self, masks):
        self.masks, self.calls, self.images = list(masks), [], 0

    def set_image(self, image):
        self.images += 1

    def predict_box(self, box, points_xy=None, labels=None, multimask=False):
        self.calls.append((tuple(box), np.asarray(points_xy)))
        return self.masks.pop(0)[None], np.ones(1)


def _square(lo, hi, n=16):
    m = np.zeros((n, n), dtype=bool)
    m[lo:hi, lo:hi] = True
    return m


def test_refinement_iterates_with_fixed_anchors_until_iou_converges():
    m0, m1, m2, m3 = _square(4, 10), _square(3, 11), _square(3, 12), _square(3, 12)
    sam = FakeSam([m1, m2, m3, _square(0, 16)])
    refined, iterations = rds.refine_mask(sam, np.zeros((16, 16, 3), np.uint8), m0, rds.RefineConfig(anchors=3, tau=0.95))
    # IoU(m1, m0) = 36/64, IoU(m2, m1) = 64/81 < 0.95, IoU(m3, m2) = 1 >= 0.95: stop after 3
    assert iterations == 3 and np.array_equal(refined, m3)
    assert [c[0] for c in sam.calls] == [rds.mask_box(m0), rds.mask_box(m1), rds.mask_box(m2)]
    assert all(np.array_equal(c[1], sam.calls[0][1]) for c in sam.calls)  # anchors fixed
    assert sam.images == 1


def test_refinement_as_typeset_stops_when_iou_drops_below_tau():
    m0 = _square(4, 10)
    sam = FakeSam([_square(4, 10), _square(0, 2), _square(4, 10)])
    refined, iterations = rds.refine_mask(sam, None, m0, rds.RefineConfig(stop="as-typeset", tau=0.5))
    assert iterations == 2 and np.array_equal(refined, _square(0, 2))


def test_refinement_keeps_the_label_when_empty():
    sam = FakeSam([np.zeros((16, 16), bool)])
    refined, _ = rds.refine_mask(sam, None, _square(4, 10))
    assert np.array_equal(refined, _square(4, 10))
    assert rds.refine_mask(sam, None, np.zeros((16, 16), bool))[1] == 0


def test_refined_labels_are_cached(tmp_path):
    sam = FakeSam([_square(3, 11), _square(3, 11)])
    labels = rds.RefinedLabels(sam, tmp_path, rds.RefineConfig(tau=0.9))
    first = labels.get("a/b", None, _square(4, 10))
    again = rds.RefinedLabels(None, tmp_path).get("a/b", None, _square(4, 10))
    assert np.array_equal(first, again) and len(sam.calls) == 2
    with pytest.raises(FileNotFoundError, match="no SAM"):
        rds.RefinedLabels(None, tmp_path).get("other", None, _square(4, 10))


# ----------------------------------------------------------------------------- LoRA on the real classes
@pytest.fixture(scope="module")
def sd15():
    from editseg.methods.rlfseg_models import load_flow_backbone

    return load_flow_backbone("tiny-random-sd15")


def _loss_and_grads(flow_backbone):
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, flow_backbone.resolution, flow_backbone.resolution, generator=g) * 2 - 1
    masks = (torch.rand(2, 1, flow_backbone.resolution, flow_backbone.resolution, generator=g) > 0.5).float() * 2 - 1
    z1, z0 = flow_backbone.encode_pixels(pixels), flow_backbone.encode_pixels(masks.expand(-1, 3, -1, -1))
    cond = flow_backbone.encode_text(flow_backbone.prompts(["a red circle", "the blue square"]))
    cond["reference"] = z1
    t = torch.tensor([0.3, 0.9])
    loss = flow.flow_loss(flow_backbone.velocity(flow_backbone.denoiser, flow.interpolate(z1, z0, t), t, cond), z1, z0).mean()
    loss.backward()
    return loss


@pytest.mark.parametrize("name", ["tiny-random-sd15", "tiny-random-flux2"])
def test_only_lora_parameters_receive_gradients(name):
    from editseg.methods.rlfseg_models import load_flow_backbone

    fb = load_flow_backbone(name)
    fb.add_lora(rank=4)
    _loss_and_grads(fb)
    lora, other = [], []
    for module in fb.modules():
        for pname, p in module.named_parameters():
            (lora if "lora_" in pname else other).append((pname, p))
    assert lora and other
    assert all(p.requires_grad and p.grad is not None for _, p in lora)
    assert any(p.grad.abs().sum() > 0 for n, p in lora if "lora_B" in n)
    assert all(not p.requires_grad and p.grad is None for _, p in other)


@pytest.mark.parametrize("name", ["tiny-random-sd15", "tiny-random-flux2"])
def test_lora_save_load_round_trip_gives_identical_outputs(name, tmp_path):
    from editseg.methods.rlfseg import predict_probability
    from editseg.methods.rlfseg_models import LORA_CONFIG, load_flow_backbone

    torch.manual_seed(0)
    trained = load_flow_backbone(name)
    trained.add_lora(rank=4, init=False)  # random A and B: the LoRA changes the output
    trained.save_lora(tmp_path)
    assert json.loads((tmp_path / LORA_CONFIG).read_text())["rank"] == 4
    fresh = load_flow_backbone(name)
    pixels = torch.rand(1, 3, fresh.resolution, fresh.resolution, generator=torch.Generator().manual_seed(3)) * 2 - 1
    base = predict_probability(fresh, pixels, ["a red circle"], sampler="one-step")
    fresh.load_lora(tmp_path)
    expected = predict_probability(trained, pixels, ["a red circle"], sampler="one-step")
    loaded = predict_probability(fresh, pixels, ["a red circle"], sampler="one-step")
    assert torch.equal(expected, loaded)
    assert not torch.allclose(base, loaded)


def test_lora_file_is_readable_by_diffusers_pipeline_loader(sd15, tmp_path):
    """The saved file is the standard diffusers LoRA format: ``pipe.load_lora_weights`` gives the same UNet."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from editseg.methods.rlfseg_models import load_flow_backbone

    torch.manual_seed(0)
    trained = load_flow_backbone("tiny-random-sd15")
    trained.add_lora(rank=4, init=False)
    trained.save_lora(tmp_path)
    fresh = load_flow_backbone("tiny-random-sd15")
    pipe = StableDiffusionPipeline(vae=fresh.vae, text_encoder=fresh.text_encoder, tokenizer=fresh.tokenizer, unet=fresh.denoiser,
                                   scheduler=DDPMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.load_lora_weights(tmp_path)
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = trained.denoiser(z, 500, encoder_hidden_states=text).sample
        b = pipe.unet(z, 500, encoder_hidden_states=text).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_load_lora_errors_and_base_mismatch_warning(sd15, tmp_path):
    import warnings

    from editseg.backbones.tiny_sd15 import build_tiny_sd15
    from editseg.errors import ModelNotFoundError
    from editseg.methods.rlfseg_models import SD15Flow

    with pytest.raises(ModelNotFoundError, match="No LoRA weights"):
        sd15.load_lora(tmp_path)
    trained = SD15Flow(*build_tiny_sd15(seed=0), resolution=32)
    trained.add_lora(rank=2)
    trained.save_lora(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SD15Flow(*build_tiny_sd15(seed=0), resolution=32).load_lora(tmp_path)  # same base: silent
    with pytest.warns(UserWarning, match="other .* weights"):
        SD15Flow(*build_tiny_sd15(seed=1), resolution=32).load_lora(tmp_path)


def test_rds_with_the_sam_component(tmp_path):
    """Algorithm 1 through the real SAM component (tiny random SamModel): the protocol fits."""
    sam_module = pytest.importorskip("editseg.components.sam")
    from editseg.data.shapes import ShapesWorld

    sam = sam_module.SamComponent.from_pretrained("tiny-random-sam", device="cpu")
    sample = ShapesWorld(seed=0).sample("train", 0)
    refined, iterations = rds.refine_mask(sam, sample.image, sample.mask, rds.RefineConfig(max_iterations=3))
    assert refined.shape == sample.mask.shape and refined.dtype == bool and 1 <= iterations <= 3
