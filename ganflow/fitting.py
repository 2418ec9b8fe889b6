r"""Step 4 of Algorithm 1: fitting the generator to its targets (docs/theory.md section 6).

Three small registries, so that a variant is one entry rather than a branch in
:func:`ganflow.algorithm.algorithm_step`:

* :data:`PAIRINGS` -- how the pushed targets y of (22) are matched to the batch G(z):
  ``index`` (the paper's MSE, eq. (23)), ``assignment`` (y re-ordered by the optimal
  assignment, then the MSE) and ``energy`` (the energy distance between the two point
  sets: no pairing at all). Register a new one with :func:`register_pairing`.
* :data:`GAN_LOSSES` -- the generator losses of the GAN baselines, functions of D:
  ``gan`` (1/m) sum ln(1 - D(G(z))) = -softplus(f) and ``gan-ns`` -(1/m) sum ln D(G(z)) =
  softplus(-f).
* :data:`FIT_SOLVERS` -- how the faithful mode drives the residual |G(z) - y| below its
  tolerance: ``optimizer`` (steps of G's optimizer, :func:`fit_generator`) or
  ``gauss-newton`` (:func:`gauss_newton_fit`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._errors import GanflowError

__all__ = [
    "FIT_SOLVERS",
    "GAN_LOSSES",
    "PAIRINGS",
    "FitResult",
    "Pairing",
    "assignment_permutation",
    "energy_fit_loss",
    "fit_generator",
    "gauss_newton_fit",
    "generator_loss",
    "register_pairing",
]

LossFn = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- pairings
def assignment_permutation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Permutation pi minimising sum_i |x_i - y_pi(i)|^2 (Hungarian algorithm, section 6).

    Shapes (m, d) each; returns a LongTensor of shape (m,) on ``y``'s device."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x.detach().double(), y.detach().double()).pow(2).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return torch.as_tensor(perm, dtype=torch.long, device=y.device)


def _smooth_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # sqrt(|a_i - b_j|^2 + tiny): differentiable at a_i = b_j (the diagonal of a set
    # with itself), where the plain norm's gradient is NaN
    d2 = (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)
    return (d2 + 1e-12).sqrt()


def energy_fit_loss(g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Energy distance between the point sets {g_i} and {y_j}, up to a constant in g.

    2/(m n) sum_ij |g_i - y_j| - 1/m^2 sum_ij |g_i - g_j| (the E|Y - Y'| term does not
    depend on g and is left out): the set-wise fit of docs/theory.md section 6 with a
    discrepancy between the two point sets instead of a pairing. It is zero-gradient
    when {g_i} = {y_j} as sets, in any order, and its second term pushes the generated
    points apart, so it penalises collapse, which the point-wise MSE does not."""
    m = g.shape[0]
    cross = _smooth_distances(g, y).mean()
    within = _smooth_distances(g, g).sum() / (m * m)
    return 2 * cross - within


def _mse(g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (g - y).pow(2).sum(-1).mean()


@dataclass(frozen=True)
class Pairing:
    r"""A way to match the targets y (m, d) to the batch x0 = G(z) (m, d).

    ``match(x0, y)`` returns y re-ordered (y_pi(i) is G(z_i)'s target); ``loss(g, y)`` is
    the fit loss of eq. (23) on the matched targets; ``pointwise`` says whether
    |G(z_i) - y_i| is a residual (the faithful mode's fit tolerance needs one)."""

    name: str
    match: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    pointwise: bool = True


PAIRINGS: dict[str, Pairing] = {}


def register_pairing(pairing: Pairing) -> Pairing:
    """Make ``pairing`` available as ``--pairing NAME``."""
    PAIRINGS[pairing.name] = pairing
    return pairing


register_pairing(Pairing("index", lambda x0, y: y, _mse))
register_pairing(Pairing("assignment", lambda x0, y: y[assignment_permutation(x0, y)], _mse))
register_pairing(Pairing("energy", lambda x0, y: y, energy_fit_loss, pointwise=False))

# the GAN baselines' generator losses, as functions of the logit f = D
GAN_LOSSES: dict[str, Callable[[nn.Module], LossFn]] = {
    "gan": lambda D: (lambda g: -F.softplus(D(g)).mean()),  # ln(1 - sigmoid f) = -softplus f
    "gan-ns": lambda D: (lambda g: F.softplus(-D(g)).mean()),  # -ln sigmoid f = softplus -f
}


def generator_loss(
    method: str, *, D: nn.Module | None = None, targets: torch.Tensor | None = None,
    pairing: str = "index",
) -> LossFn:
    r"""The generator loss of ``method`` as a function of the batch G(z).

    ``flow``: the ``pairing``'s loss to the (already matched) targets, eq. (23);
    ``gan``, ``gan-ns``: :data:`GAN_LOSSES` of D."""
    if method == "flow":
        if targets is None:
            raise GanflowError("method 'flow' needs targets y (push_targets), got None")
        y, loss = targets.detach(), PAIRINGS[pairing].loss
        return lambda g: loss(g, y)
    if method not in GAN_LOSSES:
        raise GanflowError(f"unknown method {method!r}: expected one of "
                           f"{['flow', *GAN_LOSSES]}")
    if D is None:
        raise GanflowError(f"method {method!r} needs the discriminator D, got None")
    return GAN_LOSSES[method](D)


# ----------------------------------------------------------------------------- solvers
def fit_generator(
    G: nn.Module,
    opt_g: torch.optim.Optimizer,
    z: torch.Tensor,
    loss_fn: LossFn,
    *,
    steps: int = 1,
    until: Callable[[], bool] | None = None,
    max_steps: int | None = None,
) -> tuple[float, int]:
    r"""Descent steps on ``loss_fn(G(z))`` with the same z (eq. (23); K = ``steps``).

    ``until()`` (optional) is checked after ``steps`` steps and then after each further
    one, up to ``max_steps`` in all: the faithful mode's fit tolerance.
    Returns (the loss at the start of the last step, steps taken).
    """
    cap = steps if until is None else max(steps, max_steps or steps)
    taken = 0
    loss = torch.tensor(float("nan"))
    while taken < cap:
        opt_g.zero_grad(set_to_none=True)
        loss = loss_fn(G(z))
        loss.backward()
        opt_g.step()
        taken += 1
        if until is not None and taken >= steps and until():
            break
    return float(loss.detach()), taken


_CG_MAX_ITERS = 20
_LM_DAMPING = 1e-3


def _cg_solve(jjt: Callable[[torch.Tensor], torch.Tensor], r: torch.Tensor, lam: float,
              goal: float) -> torch.Tensor:
    """Conjugate gradients on (J J^T + lam I) a = r until |residual|^2 <= goal."""
    a = torch.zeros_like(r)
    res = r.clone()
    d = res.clone()
    rr = float(res.pow(2).sum())
    for _ in range(_CG_MAX_ITERS):
        if rr <= goal:
            break
        q = jjt(d) + lam * d
        dq = float((d * q).sum())
        if not (dq > 0 and math.isfinite(dq)):
            break
        alpha = rr / dq
        a = a + alpha * d
        res = res - alpha * q
        rr_new = float(res.pow(2).sum())
        d = res + (rr_new / rr) * d
        rr = rr_new
    return a


def gauss_newton_fit(
    G: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor,
    *,
    tol: float,
    scale: float,
    min_steps: int = 1,
    max_steps: int = 20,
) -> tuple[float, int]:
    r"""Fit G(z) to the targets y of (22) by Gauss-Newton steps (the faithful mode's fit).

    Each step solves the linearised problem J delta = r (r = y - G(z), shape (m, d); J the
    Jacobian of the m x d outputs w.r.t. G's parameters) for its minimum-norm solution
    delta = J^T a, (J J^T) a = r, by conjugate gradients in output space (J^T u by a
    backward pass, J v by forward-mode autodiff; J is never formed). Unlike Adam, whose
    per-parameter normalisation moves every parameter by about lr whatever the target
    distance, the step is proportional to r: a displacement of 1e-3 is fitted as
    accurately, relatively, as one of 1 (the linearisation error is O(|r|^2)).

    Stops once the RMS residual |G(z) - y| is below ``tol * scale`` (``scale`` = the RMS
    displacement |y - G_0(z)|), after at least ``min_steps`` and at most ``max_steps``
    steps. Updates G's parameters in place (no optimizer state is touched).
    Returns (final RMS residual, steps taken).
    """
    from torch.func import functional_call, jvp, vjp

    params = {n: p for n, p in G.named_parameters() if p.requires_grad}
    y = y.detach()
    target = tol * scale

    def rms(r: torch.Tensor) -> float:
        return float(r.pow(2).sum(-1).mean().sqrt())

    def forward(p: dict) -> torch.Tensor:
        return functional_call(G, p, (z,))

    taken = 0
    with torch.no_grad():
        resid = y - G(z)
    lam = None  # Levenberg-Marquardt damping, relative to J J^T's scale (set on step 1)
    while taken < max_steps and not (taken >= min_steps and rms(resid) < target):
        base = {n: p.detach() for n, p in params.items()}
        _, pullback = vjp(forward, base)

        def jjt(u: torch.Tensor, base=base, pullback=pullback) -> torch.Tensor:
            (tangent,) = pullback(u)
            return jvp(forward, (base,), (tangent,))[1]

        if lam is None:
            # the Rayleigh quotient r.JJ^T r / r.r: the size of the NTK along r
            lam = _LM_DAMPING * float((resid * jjt(resid)).sum()) / float(resid.pow(2).sum())
        # the damped, minimum-norm Gauss-Newton step, to the accuracy the fit needs (half
        # of tol, measured against the displacement)
        a = _cg_solve(jjt, resid, lam, (0.5 * target) ** 2 * resid.shape[0])
        (delta,) = pullback(a)
        with torch.no_grad():
            for n, p in params.items():
                p.add_(delta[n])
            new_resid = y - G(z)
            if rms(new_resid) < rms(resid):  # accept; trust the linearisation more
                resid = new_resid
                lam = lam / 3
            else:  # reject: undo, damp harder (a shorter step, closer to gradient descent)
                for n, p in params.items():
                    p.sub_(delta[n])
                lam = lam * 10
        taken += 1
    return rms(resid), taken


@dataclass
class FitResult:
    """What a fit did: the loss, the steps taken, and the final RMS residual (NaN if none)."""

    loss: float
    steps: int
    residual: float


def _fit_by_optimizer(G, opt_g, z, y, pairing: Pairing, cfg, disp: float) -> FitResult:
    resid = [float("nan")]
    until = None
    if cfg.faithful:
        def until() -> bool:
            with torch.no_grad():
                resid[0] = float((G(z) - y).pow(2).sum(-1).mean().sqrt())
            return resid[0] < cfg.fit_tol * disp

    loss, taken = fit_generator(G, opt_g, z, lambda g: pairing.loss(g, y),
                                steps=cfg.fit_steps, until=until, max_steps=cfg.fit_max_steps)
    if not cfg.faithful and pairing.pointwise:
        # the residual before the last step (no extra forward pass); an energy distance
        # is no residual, so it stays NaN
        resid[0] = math.sqrt(max(loss, 0.0))
    return FitResult(loss, taken, resid[0])


def _fit_by_gauss_newton(G, opt_g, z, y, pairing: Pairing, cfg, disp: float) -> FitResult:
    resid, taken = gauss_newton_fit(G, z, y, tol=cfg.fit_tol, scale=disp,
                                    min_steps=cfg.fit_steps, max_steps=cfg.fit_max_steps)
    return FitResult(resid ** 2, taken, resid)


# (G, opt_g, z, matched targets y, pairing, StepConfig, RMS displacement) -> FitResult
FIT_SOLVERS: dict[str, Callable[..., FitResult]] = {
    "optimizer": _fit_by_optimizer,
    "gauss-newton": _fit_by_gauss_newton,
}
