"""The Segmenter API end to end on a tiny random FLUX.2 [klein] pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from editseg import MethodConfig
from editseg.errors import ConfigError, ExpressionError


def test_results_have_input_resolution_and_metadata(segmenter, random_image):
    single = segmenter.segment(random_image, "the red circle")
    assert single.mask.shape == (64, 80) and single.mask.dtype == bool
    assert single.cam.shape == single.ram.shape == (64, 80)
    assert single.cam_tokens.shape == (16, 20)  # the tiny VAE: 4 px per token
    for heat in (single.cam_tokens, single.ram_tokens):
        assert heat.min() == 0.0 and heat.max() == pytest.approx(1.0)
    assert single.instruction == "remove the red circle"
    assert "".join(single.prompt_tokens).strip() == "the red circle"
    assert {"text_encode_s", "transformer_s", "method_s", "image_encode_s"} <= set(single.timings)
    assert single.config["feature_block"] == segmenter.backbone.default_feature_block


def test_batching_does_not_change_results_and_seed_is_reproducible(tiny_backbone, random_image):
    from editseg import Segmenter

    exprs = ["the red circle", "the man on the left", "zebra"]
    batched = Segmenter(tiny_backbone, batch_size=3).segment(random_image, exprs)
    one_by_one = Segmenter(tiny_backbone, batch_size=1).segment(random_image, exprs)
    for a, b in zip(batched, one_by_one):
        np.testing.assert_allclose(a.ram_tokens, b.ram_tokens, atol=1e-5)
        assert (a.mask != b.mask).mean() < 0.01
    other_seed = Segmenter(tiny_backbone, config=MethodConfig(seed=1)).segment(random_image, "zebra")
    assert not np.allclose(other_seed.cam_tokens, batched[2].cam_tokens)


def test_modes_and_switches(segmenter, random_image):
    segmenter.set_image(random_image)
    full = segmenter.predict("the dog")[0]
    ram = segmenter.predict("the dog", MethodConfig(mode="ram"))[0]
    cam = segmenter.predict("the dog", MethodConfig(mode="cam"))[0]
    np.testing.assert_array_equal(ram.mask, ram.ram > 0.5)
    np.testing.assert_array_equal(cam.mask, cam.cam > 0.5)
    np.testing.assert_allclose(full.ram, ram.ram)
    double = segmenter.predict("the dog", MethodConfig(attention_blocks="double"))[0]
    single = segmenter.predict("the dog", MethodConfig(attention_blocks="single"))[0]
    assert not np.allclose(double.ram_tokens, single.ram_tokens)
    content = segmenter.predict("the dog", MethodConfig(prompt_tokens="expression-content"))[0]
    assert "".join(content.prompt_tokens).strip() == "dog"
    for site in ("attn", "adaln", "block"):
        segmenter.predict("the dog", MethodConfig(feature_site=site, feature_block=0))
    refined = segmenter.predict("the dog", MethodConfig(instruction_template="refined"))[0]
    assert refined.instruction == "Remove the dog from the image."


def test_api_errors(segmenter, tiny_backbone, random_image):
    from editseg import Segmenter

    with pytest.raises(ConfigError, match="set_image"):
        Segmenter(tiny_backbone).predict("dog")
    segmenter.set_image(random_image)
    with pytest.raises(ConfigError, match="feature_block"):
        segmenter.predict("dog", MethodConfig(feature_block=99))
    with pytest.raises(ConfigError, match="do not exist"):
        segmenter.predict("dog", MethodConfig(attention_blocks=(0, 42)))
    with pytest.raises(ExpressionError):
        segmenter.predict(["dog", ""])
    with pytest.raises(ConfigError):
        MethodConfig(tau=1.0)
    with pytest.raises(ConfigError):
        MethodConfig(mode="sam")


def test_instruction_refiner_is_used_and_checked(tiny_backbone, random_image):
    from editseg import Segmenter

    seg = Segmenter(tiny_backbone, instruction_refiner=lambda e: f"please remove {e} entirely")
    result = seg.segment(random_image, "the cat")
    assert result.instruction == "please remove the cat entirely"
    assert "".join(result.prompt_tokens).strip() == "the cat"
    bad = Segmenter(tiny_backbone, instruction_refiner=lambda e: "remove it")
    with pytest.raises(ExpressionError, match="refiner"):
        bad.segment(random_image, "the cat")


def test_max_side_shrinks_the_model_input_but_not_the_mask(tiny_backbone):
    from editseg import Segmenter

    image = np.zeros((100, 150, 3), np.uint8)
    result = Segmenter(tiny_backbone, max_side=96).segment(image, "dog")
    assert result.mask.shape == (100, 150)
    assert result.cam_tokens.shape == (16, 24)  # 64 x 96 pixels at 4 px per token


def test_random_weights_warn(tiny_backbone):
    from editseg import Segmenter

    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        Segmenter(tiny_backbone)


def test_predict_sweep_shares_forwards_and_equals_separate_predicts(segmenter, random_image):
    configs = [
        MethodConfig(),
        MethodConfig(mode="cam"),
        MethodConfig(tau=0.5, feature_block=1, feature_site="adaln"),
        MethodConfig(attention_blocks="single", similarity="dot"),
        MethodConfig(prompt_tokens="all"),  # a different forward
    ]
    segmenter.set_image(random_image)
    transformer = segmenter.backbone.pipeline.transformer
    calls = []
    handle = transformer.register_forward_hook(lambda *args: calls.append(1))
    try:
        swept = segmenter.predict_sweep(["the dog", "a red car"], configs)
    finally:
        handle.remove()
    assert len(calls) == 2  # one forward for the first four configs, one for prompt_tokens="all"
    for config, results in zip(configs, swept):
        separate = segmenter.predict(["the dog", "a red car"], config)
        for a, b in zip(results, separate):
            np.testing.assert_array_equal(a.mask, b.mask)
            np.testing.assert_allclose(a.ram_tokens, b.ram_tokens)
            assert a.config == b.config


def test_timestep_index_changes_the_noisy_tokens_only(segmenter, random_image):
    segmenter.set_image(random_image)
    first = segmenter.predict("the dog", MethodConfig())[0]
    first_again = segmenter.predict("the dog", MethodConfig(num_inference_steps=10))[0]
    later = segmenter.predict("the dog", MethodConfig(timestep_index=5, num_inference_steps=10))[0]
    np.testing.assert_allclose(first.ram_tokens, first_again.ram_tokens)  # step 0 is sigma 1 for any schedule
    assert not np.allclose(first.ram_tokens, later.ram_tokens)
    with pytest.raises(ConfigError):
        MethodConfig(timestep_index=10, num_inference_steps=10)


def test_max_side_keeps_the_short_side_at_the_pipelines_minimum(tiny_backbone):
    """A wide image shrunk to max_side would fall below Flux2's 64 px minimum: its short side stays 64."""
    geometry = tiny_backbone.preprocess_geometry((400, 200), max_side=64)
    assert geometry.resized_size == (128, 64)
    assert tiny_backbone.preprocess_geometry((400, 300), max_side=200).resized_size == (200, 150)
