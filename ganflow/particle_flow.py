r"""Learning without a generator: particles moved by the discriminator's drift.

docs/theory.md section 6 (the paper's section 3.3) blames the generator's point-wise
MSE fit (23) for the divergence of GANs. This module removes the fit: N particles
X_1..N are moved directly along the drift of ODE (2) estimated by a discriminator,
calibrated exactly as in Algorithm 1:

1. calibrate D on fresh data against a random batch of m particles (eq. 21; the same
   :func:`~ganflow.algorithm.calibrate_discriminator`, knobs and faithful criterion);
2. move every particle, X_i <- X_i + eps * m(e^{-f(X_i)}) grad f(X_i) (eq. 22 with the
   generator replaced by the particles themselves; the faithful mode's CFL step control
   of :func:`~ganflow.algorithm.controlled_move`, taken over all N particles).

There is no step 3/4: the particles *are* the targets. If the particles converge where
a generator fitted to the same targets does not, the fit is the culprit; if both fail,
the calibration is.

:func:`distil_step` turns the final particles into a sampler afterwards: one set-wise fit
step of a generator to a random batch of particles (optimal assignment, then MSE), so
the generator is asked to match the particle *set*, not particular particles.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .algorithm import (
    StepConfig,
    StepInfo,
    calibrate_discriminator,
    controlled_move,
    discriminator_drift,
)
from .fitting import assignment_permutation

__all__ = ["distil_step", "particle_step"]


def particle_step(
    D: nn.Module,
    opt_d: torch.optim.Optimizer | None,
    particles: torch.Tensor,
    sample_data: Callable[[int], torch.Tensor],
    pick: Callable[[int], torch.Tensor],
    cfg: StepConfig,
    *,
    chunk: int = 8192,
    drift_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> StepInfo:
    r"""One iteration of the particle method: calibrate D (21), move every particle (22).

    Args:
        D: the logit f (any callable (n, d) -> (n,)); with ``opt_d`` None it is taken as
            exact (e.g. the oracle ln(rho_d / u_t) in a test) and not calibrated.
        particles: (N, d) on the training device, updated IN PLACE.
        sample_data: ``sample_data(m)`` draws a fresh data batch on the device.
        pick: ``pick(m)`` returns m particle indices (LongTensor) for D's fake batch.
        cfg: the step options; ``method``, ``fit_steps`` and ``pairing`` are unused.
        chunk: particles per drift evaluation (bounds D's activation memory).
        drift_fn: the drift at every particle, given the (N, d) particles (default:
            :func:`ganflow.algorithm.discriminator_drift` of ``D`` with ``cfg.divergence``);
            the trainer passes one that computes its rank's rows and gathers the others'
            (``chunk`` is then that function's business).
    Returns a :class:`StepInfo` with ``g_loss`` NaN and ``fit_steps`` 0 (there is no fit);
    ``drift_max`` is NaN/Inf when some move was not finite (the caller must stop).
    """
    m = cfg.batch_size
    d_loss, d_taken = float("nan"), 0
    if opt_d is not None:  # None: D is an exact logit (an oracle), nothing to calibrate
        d_loss, d_taken = calibrate_discriminator(
            D, opt_d, lambda: sample_data(m), lambda: particles[pick(m)], steps=cfg.d_steps,
            tol=cfg.calib_tol if cfg.faithful else None, max_steps=cfg.calib_max_steps,
            penalty=cfg.d_penalty,
        )
    if drift_fn is None:
        drift = discriminator_drift(D, particles, divergence=cfg.divergence, chunk=chunk)
    else:
        drift = drift_fn(particles)
    move, eps = controlled_move(drift, cfg)
    speed = drift.norm(dim=-1)
    drift_max = float(speed.max())
    if not bool(torch.isfinite(move).all()):
        drift_max = float("nan")
    particles.add_(move)
    return StepInfo(d_loss, float("nan"), d_taken, 0, eps,
                    drift_rms=float(speed.pow(2).mean().sqrt()), drift_max=drift_max)


def distil_step(
    G: nn.Module,
    opt_g: torch.optim.Optimizer,
    particles: torch.Tensor,
    z: torch.Tensor,
    pick: Callable[[int], torch.Tensor],
) -> float:
    r"""One set-wise fit step of G to the particles; returns the mean squared residual.

    G(z_1..m) is paired with m random particles by the optimal assignment on squared
    distances (section 6's set-wise remedy), then one optimizer step on the MSE. Repeated,
    this is minibatch optimal-transport fitting: G's law approaches the particles' law.
    """
    y = particles[pick(z.shape[0])]
    opt_g.zero_grad(set_to_none=True)
    x = G(z)
    y = y[assignment_permutation(x, y)]
    loss = (x - y).pow(2).sum(-1).mean()
    loss.backward()
    opt_g.step()
    value = float(loss.detach())
    return value if math.isfinite(value) else float("nan")
