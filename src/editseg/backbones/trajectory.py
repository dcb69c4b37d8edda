"""Sharing one denoising trajectory across timestep settings.

Probing step ``t`` of a ``num_steps`` schedule first denoises steps ``0 .. t-1``. A sweep over
timesteps (paper Figs. 3-4) probes several ``t`` of the same image, text and seed; without
sharing each one re-runs the trajectory from step 0 (``Σ t`` transformer forwards instead of
``max t``). :class:`TrajectoryCache` keeps the latents reached at each probed step of the latest
trajectory so that a later, larger ``t`` resumes from the closest earlier one. Resuming runs the
same forwards on the same tensors, so the result equals a run from scratch bit for bit (tested).
:func:`denoised_step_inputs` is that resumable denoising loop, written once for the families
whose joint sequence is ``[text | noisy | clean]`` (FLUX.1 Kontext, FLUX.2 [klein], Qwen-Image-Edit).
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class TrajectoryCache:
    """Latents of ONE trajectory (the latest key) at the steps reached so far.

    The key holds the prepared image (compared by identity, kept alive while cached, so a
    recycled ``id`` can never match), the encoded text (the same object, or equal tensors: each
    ``predict`` call encodes its text anew) and the seed and schedule."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._states: dict[int, torch.Tensor] = {}

    @staticmethod
    def key(image: Any, text: Any, *settings: Any) -> tuple[Any, ...]:
        """The trajectory of ``image`` and ``text`` (by identity) under ``settings`` (seed, steps, ...)."""
        return (image, text, settings)

    def _same(self, key: tuple[Any, ...]) -> bool:
        if self._key is None:
            return False
        return key[0] is self._key[0] and _same_text(key[1], self._key[1]) and key[2] == self._key[2]

    def resume(self, key: tuple[Any, ...], step_index: int) -> tuple[int, torch.Tensor | None]:
        """(step, latents) of the latest cached step <= ``step_index`` of this trajectory, or (0, None)."""
        if not self._same(key):
            return 0, None
        reached = [step for step in self._states if step <= step_index]
        if not reached:
            return 0, None
        step = max(reached)
        return step, self._states[step]

    def store(self, key: tuple[Any, ...], step_index: int, latents: torch.Tensor) -> None:
        if not self._same(key):
            self._key, self._states = key, {}
        self._states[step_index] = latents.detach().clone()

    def clear(self) -> None:
        self._key, self._states = None, {}


def _same_text(a: Any, b: Any) -> bool:
    """The same encoded text: one object, or the same tensors (other entries by identity)."""
    if a is b:
        return True
    ta, tb = getattr(a, "tensors", None), getattr(b, "tensors", None)
    if not isinstance(ta, dict) or not isinstance(tb, dict) or ta.keys() != tb.keys():
        return False
    for name, value in ta.items():
        other = tb[name]
        if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor):
            if value.shape != other.shape or value.dtype != other.dtype or not torch.equal(value, other):
                return False
        elif value is not other:
            return False
    return True


def denoised_step_inputs(
    transformer: Any,
    trajectories: TrajectoryCache,
    key: tuple[Any, ...],
    inputs: dict[str, Any],
    noisy_len: int,
    scheduler: Any,
    timesteps: torch.Tensor,
    step_index: int,
    *,
    hidden_dtype: torch.dtype | None = None,
    scale_then_cast: bool = False,
    guidance_scale: float = 1.0,
    negative_inputs: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``inputs`` (the first step's transformer kwargs, hidden states ``[noisy | clean]``) moved to
    step ``step_index`` of ``timesteps``: the noisy tokens are denoised with ``scheduler`` (already
    set to ``timesteps``) from the latest step of this trajectory in ``trajectories`` (``key``),
    or from step 0, and the step reached is stored. The clean tokens stay as they are.

    Family differences: ``hidden_dtype`` casts the joint hidden states (FLUX.2 casts to the
    transformer's dtype); the timestep input is ``t / 1000`` of ``t`` cast to the latents' dtype, or
    with ``scale_then_cast`` divided first (FLUX.2); with ``guidance_scale > 1`` and
    ``negative_inputs`` (kwargs replacing the text inputs, e.g. an empty prompt's, built before the
    first forward and only if one runs) classifier-free guidance ``u + s (c - u)``."""
    start, latents = trajectories.resume(key, step_index)  # a shared trajectory: resume
    if latents is None:
        latents = inputs["hidden_states"][:, :noisy_len].clone()
    scheduler.set_begin_index(start)
    clean = inputs["hidden_states"][:, noisy_len:]
    batch = latents.shape[0]

    def joint(noisy: torch.Tensor) -> torch.Tensor:
        hidden = torch.cat([noisy, clean], dim=1)
        return hidden if hidden_dtype is None else hidden.to(hidden_dtype)

    def model_timestep(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if scale_then_cast:
            return (t.expand(batch) / 1000).to(dtype)
        return t.expand(batch).to(dtype) / 1000

    negative = None
    if negative_inputs is not None and guidance_scale > 1 and start < step_index:
        negative = negative_inputs()
    with torch.inference_mode():
        for t in timesteps[start:step_index]:
            step = dict(inputs, hidden_states=joint(latents))
            step["timestep"] = model_timestep(t, latents.dtype)
            velocity = transformer(**step, return_dict=False)[0][:, :noisy_len]
            if negative is not None:
                step.update(negative)
                uncond = transformer(**step, return_dict=False)[0][:, :noisy_len]
                velocity = uncond + guidance_scale * (velocity - uncond)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
    trajectories.store(key, step_index, latents)
    inputs["hidden_states"] = joint(latents)
    inputs["timestep"] = model_timestep(timesteps[step_index], latents.dtype)
    return inputs
