"""RLFseg's rectified latent flow as pure tensor functions (eqs. 2, 4, 5-7 and appendix eqs. 8-10).

Conventions (the paper's, §3.2): ``z1`` is the image latent, ``z0`` the mask latent,
``z_t = t z1 + (1 - t) z0`` with ``t ~ U(0, 1)``, and the model ``v_θ(z_t, t)`` is trained to
predict the constant field ``v = z1 - z0``. Sampling runs from ``t = 1`` (the image) to ``t = 0``
(the mask): one Euler step of ``Δt = 1`` backwards gives ``Δz = -v_θ(z1, 1)`` and
``z0_pred = z1 + Δz`` (eq. 5 writes ``v_{1→0} · Δt``; we read ``v_{1→0} = -v_θ``, ``Δt = 1``).

Every function works on a batch: tensors are ``(batch, ...)`` and reductions are per sample.
"""

from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z_t, t of shape (batch,)) -> v


def interpolate(z1: torch.Tensor, z0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``z_t = t z1 + (1 - t) z0`` with ``t`` of shape (batch,)."""
    t = t.to(z1.dtype).view(-1, *([1] * (z1.dim() - 1)))
    return t * z1 + (1 - t) * z0


def flow_target(z1: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
    """The constant vector field of the straight path, ``v = z1 - z0``."""
    return z1 - z0


def flow_loss(prediction: torch.Tensor, z1: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
    """Eq. 2 per sample: ``mean ‖(z1 - z0) - v_θ(z_t, t)‖²`` over each sample's latent entries, (batch,)."""
    return (flow_target(z1, z0) - prediction).float().pow(2).flatten(1).mean(dim=1)


def dynamic_selection(loss_original: torch.Tensor, loss_refined: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4: ``L = 1 L_rf(M0) + (1 - 1) L_rf(M_refine)`` with ``1 = [L_rf(M0) < L_rf(M_refine)]``.

    Per sample (the paper reports the original label winning in ~15 % of "training cases").
    Returns the selected per-sample losses (gradients flow only through the selected one) and the
    indicator (bool, True where the original label was used).
    """
    indicator = (loss_original < loss_refined).detach()
    weight = indicator.to(loss_original.dtype)
    return weight * loss_original + (1 - weight) * loss_refined, indicator


def one_step(z1: torch.Tensor, velocity: Velocity) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5: ``Δz = -v_θ(z1, 1)`` and ``z0_pred = z1 + Δz``."""
    t = torch.ones(z1.shape[0], device=z1.device, dtype=z1.dtype)
    delta = -velocity(z1, t)
    return z1 + delta, delta


def multi_step(z1: torch.Tensor, velocity: Velocity, steps: int) -> torch.Tensor:
    """Euler integration from ``t = 1`` to ``t = 0`` in ``steps`` equal steps (eq. 8's MultiStepSample)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    z = z1
    times = torch.linspace(1.0, 0.0, steps + 1)
    for k in range(steps):
        t, dt = float(times[k]), float(times[k] - times[k + 1])
        v = velocity(z, torch.full((z.shape[0],), t, device=z.device, dtype=z.dtype))
        z = z - dt * v
    return z


def _rescale(reference: torch.Tensor, z0_pred: torch.Tensor, delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Per-sample ``γ = Σ_S |ref - z0_pred| / Σ_S |Δz|`` over ``S = {i : |ref[i] - z0_pred[i]| < ε}`` (γ = 0 if S is empty)."""
    deviation = (reference - z0_pred).abs().flatten(1)
    stable = deviation < epsilon
    numerator = (deviation * stable).sum(dim=1)
    denominator = (delta.abs().flatten(1) * stable).sum(dim=1)
    gamma = torch.where(denominator > 0, numerator / denominator.clamp_min(torch.finfo(deviation.dtype).tiny), torch.zeros_like(numerator))
    return gamma


def adaptive_one_step(
    z1: torch.Tensor, velocity: Velocity, z_black: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """AOS (eqs. 5-7): one step, then ``z0_AOS = z1 + Δz (1 + γ)`` with γ measured on the entries
    whose prediction lies within ``epsilon`` of the black-image latent ``z_black`` (background).

    ``z_black`` broadcasts against ``z1``. Returns ``(z0_AOS, γ)`` with γ of shape (batch,).
    """
    z0_pred, delta = one_step(z1, velocity)
    gamma = _rescale(z_black.expand_as(z0_pred), z0_pred, delta, epsilon)
    return z1 + delta * (1 + gamma.view(-1, *([1] * (z1.dim() - 1)))), gamma


def hybrid_step(
    z1: torch.Tensor, velocity: Velocity, steps: int, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """HSS (appendix A.2, eqs. 8-10): as AOS, but the reference is the ``steps``-step Euler result
    ``z0_multi`` and S collects the entries where single- and multi-step predictions agree within ε."""
    z0_pred, delta = one_step(z1, velocity)
    z0_multi = multi_step(z1, velocity, steps)
    gamma = _rescale(z0_multi, z0_pred, delta, epsilon)
    return z1 + delta * (1 + gamma.view(-1, *([1] * (z1.dim() - 1)))), gamma


SAMPLERS = ("one-step", "aos", "multi-step", "hss")


def sample(
    z1: torch.Tensor, velocity: Velocity, sampler: str = "aos", *, z_black: torch.Tensor | None = None,
    epsilon: float = 0.1, steps: int = 5,
) -> torch.Tensor:
    """The mask latent from the image latent with one of :data:`SAMPLERS` (``"aos"``: the paper's final choice)."""
    if sampler == "one-step":
        return one_step(z1, velocity)[0]
    if sampler == "aos":
        if z_black is None:
            raise ValueError("AOS needs the black-image latent z_black")
        return adaptive_one_step(z1, velocity, z_black, epsilon)[0]
    if sampler == "multi-step":
        return multi_step(z1, velocity, steps)
    if sampler == "hss":
        return hybrid_step(z1, velocity, steps, epsilon)[0]
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
