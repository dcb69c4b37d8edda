"""Timestep sweeps share one denoising trajectory: probing step t after step s < t of the same
image, text and seed resumes at s, and equals a run from scratch bit for bit (issue 13 §3)."""

from __future__ import annotations

import numpy as np
import torch

from editseg.images import load_image


def _count_forwards(transformer):
    calls = []
    handle = transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def test_shared_trajectory_equals_separate_runs(tiny_backbone):
    rng = np.random.default_rng(5)
    image = tiny_backbone.prepare_image(load_image((rng.random((64, 80, 3)) * 255).astype(np.uint8)))
    text = tiny_backbone.encode_text(["the dog"], ["remove the dog"])
    transformer = tiny_backbone.pipeline.transformer
    steps = (2, 5, 7)

    separate = {}
    calls, handle = _count_forwards(transformer)
    try:
        for t in steps:
            tiny_backbone.trajectories.clear()
            separate[t] = tiny_backbone.step_inputs(image, text, seed=3, step_index=t, num_steps=8)
        from_scratch = len(calls)
        calls.clear()
        tiny_backbone.trajectories.clear()
        shared = {t: tiny_backbone.step_inputs(image, text, seed=3, step_index=t, num_steps=8) for t in steps}
        resumed = len(calls)
        calls.clear()
        # the same text encoded again (a new object, equal tensors) still shares the trajectory
        again = tiny_backbone.encode_text(["the dog"], ["remove the dog"])
        assert torch.equal(tiny_backbone.step_inputs(image, again, seed=3, step_index=7, num_steps=8)["hidden_states"], separate[7]["hidden_states"])
        assert len(calls) == 0
        # another seed or schedule is another trajectory
        other = tiny_backbone.step_inputs(image, text, seed=4, step_index=2, num_steps=8)
        assert len(calls) == 2 and not torch.equal(other["hidden_states"], separate[2]["hidden_states"])
    finally:
        handle.remove()
        tiny_backbone.trajectories.clear()
    guidance = 2 if not tiny_backbone.pipeline.config.is_distilled else 1  # CFG: two forwards per step
    assert from_scratch == guidance * sum(steps) and resumed == guidance * max(steps)
    for t in steps:
        for name in ("hidden_states", "timestep"):
            assert torch.equal(shared[t][name], separate[t][name]), (t, name)
