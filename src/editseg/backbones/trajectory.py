"""Sharing one denoising trajectory across timestep settings.

Probing step ``t`` of a ``num_steps`` schedule first denoises steps ``0 .. t-1``. A sweep over
timesteps (paper Figs. 3-4) probes several ``t`` of the same image, text and seed; without
sharing each one re-runs the trajectory from step 0 (``Σ t`` transformer forwards instead of
``max t``). :class:`TrajectoryCache` keeps the latents reached at each probed step of the latest
trajectory so that a later, larger ``t`` resumes from the closest earlier one. Resuming runs the
same forwards on the same tensors, so the result equals a run from scratch bit for bit (tested).
"""

from __future__ import annotations

from typing import Any

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
