r"""One iteration of Algorithm 1 (docs/theory.md section 5) from three separate callables.

* :func:`calibrate_discriminator` - ascent on the logistic objective (21),
  E_data[ln D] + E_G[ln(1 - D)] with D = sigmoid(f), for a fixed number of steps or,
  in the faithful mode, until it is calibrated (criterion below).
* :func:`push_targets` - y = G(z) + eps * drift(G(z)) (22), the drift being the
  divergence's m(e^{-f}) grad f (section 7; JSD: 1/2 sigmoid(f) grad f, eq. (20)),
  grad f by autograd; y is detached.
* :func:`fit_generator` - K descent steps on one generator loss with the same z (23).

:func:`algorithm_step` composes them. The GAN baselines are the same step with another
generator loss (:func:`generator_loss`):

=========  ===============================================  ==============================
method     generator loss on the batch G(z_1..m)             origin
=========  ===============================================  ==============================
flow       (1/m) sum |G(z_i) - y_pi(i)|^2                    eq. (23), pi = pairing
flow       energy distance({G(z_i)}, {y_j})                  pairing "energy" (section 6)
gan        (1/m) sum ln(1 - D(G(z_i))) = -softplus(f)         saturating GAN
gan-ns     -(1/m) sum ln D(G(z_i)) = softplus(-f)             non-saturating GAN
=========  ===============================================  ==============================

Proposition 8: for ``flow`` with the JSD, index pairing and K = 1, the generator
gradient equals ``eps`` times the ``gan`` gradient, so with SGD one iteration of each
(learning rates lr and lr * eps) gives the same parameters (tests/test_algorithm.py).

Faithful mode (the ODE-solver reading of section 6): the time step is cut to
``eps_t = min(eps, cfl * length_scale / q)``, q the ``step_quantile`` quantile of |drift_i|
over the batch (1: the max), and every move eps_t * drift_i is clipped to
``cfl * length_scale`` (a CFL-like rule; the flow time advanced is ``eps_t``, reported per
step). A quantile rather than the max because a few points with a large drift (D's
sharpest slopes) otherwise set a step so small that flow time barely advances; those few
lag the ODE by their clipped excess instead. D is trained until its logistic loss on a
held-out check batch fell by less than ``calib_tol`` (relative) over the last 5 steps, at
least ``d_steps`` and at most ``calib_max_steps`` steps. G is fitted until the RMS
residual |G(z) - y| is below ``fit_tol`` times the RMS displacement |y - G_0(z)|, at
least ``fit_steps`` and at most ``fit_max_steps`` steps, by steps of G's optimizer
(``fit_solver="optimizer"``, default) or by :func:`gauss_newton_fit`
(``fit_solver="gauss-newton"``).

Limits of the faithful mode. With the optimizer fit (Adam) the residual does not fall
far below the CFL-limited displacement: Adam's per-parameter normalisation moves
parameters by about lr whatever the requested displacement. The Gauss-Newton fit ties
the parameter move to the requested displacement and does fit the batch while the
generator is still spread out, but once G sits on narrow modes the drift of a
calibrated D varies faster than G can follow, and the point-wise fit of that drift does
not generalise to a fresh z batch. The optimizer fit is the default because it then
gives the better distribution at a fraction of the cost per iteration (the runs are in
docs/history.md). Neither fit balances the weights
of modes separated by a wide gap of near-zero data density: the exact flow moves mass
across such a gap only on exponentially long times, so the weights settle while
particles land. With the JSD and a calibrated D, f is very negative
wherever the generator has mass and the data have none, so the drift
1/2 sigmoid(f) grad f vanishes there: that is the JSD flow itself
(its mobility 1/(2(1 + rho/rho_d)) vanishes there too), so the faithful JSD flow needs a
large ``eps`` cap and many steps; the KL flow (mobility 1) does not have this trap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._errors import GanflowError
from .divergences import Divergence, get_divergence

__all__ = [
    "METHODS",
    "PAIRINGS",
    "StepConfig",
    "StepInfo",
    "algorithm_step",
    "assignment_permutation",
    "calibrate_discriminator",
    "check_penalty_and_pairing",
    "controlled_move",
    "discriminator_drift",
    "discriminator_loss",
    "energy_fit_loss",
    "fit_generator",
    "gauss_newton_fit",
    "generator_loss",
    "push_targets",
]

METHODS = ("flow", "gan", "gan-ns")
PAIRINGS = ("index", "assignment", "energy")
FIT_SOLVERS = ("gauss-newton", "optimizer")

LossFn = Callable[[torch.Tensor], torch.Tensor]
_CALIB_WINDOW = 5


def check_penalty_and_pairing(d_penalty: float, pairing: str, faithful: bool) -> None:
    """Validate the options shared by :class:`StepConfig` and the trainer's config."""
    if not (isinstance(d_penalty, int | float) and math.isfinite(d_penalty) and d_penalty >= 0):
        raise GanflowError(
            f"--d-penalty must be a finite number >= 0 (0: off), got {d_penalty!r}")
    if pairing == "energy" and faithful:
        raise GanflowError(
            "--pairing energy has no point-wise residual for the fit tolerance of "
            "--faithful: use --pairing index or assignment with --faithful"
        )


@dataclass(frozen=True)
class StepConfig:
    r"""Options of one iteration (see the module docstring for the faithful mode).

    ``eps`` is the flow time step of (22) (the largest one in the faithful mode);
    ``length_scale`` is the data's finest feature, in data units (set by the trainer).
    Faithful only: ``step_quantile`` is the quantile of |drift| that sets the CFL step
    (1: the max); ``fit_solver`` is "optimizer" (steps of G's optimizer, as outside the
    faithful mode) or "gauss-newton" (:func:`gauss_newton_fit`).
    """

    method: str = "flow"
    divergence: str = "jsd"
    eps: float = 1.0
    fit_steps: int = 1
    pairing: str = "index"
    d_steps: int = 1
    batch_size: int = 256
    faithful: bool = False
    cfl: float = 0.5
    calib_tol: float = 1e-3
    calib_max_steps: int = 20
    fit_tol: float = 0.1
    fit_max_steps: int = 20
    step_quantile: float = 0.9
    fit_solver: str = "optimizer"
    d_penalty: float = 0.0
    length_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise GanflowError(f"unknown method {self.method!r}: expected one of {list(METHODS)}")
        if self.pairing not in PAIRINGS:
            raise GanflowError(
                f"unknown pairing {self.pairing!r}: expected one of {list(PAIRINGS)}"
            )
        if self.fit_solver not in FIT_SOLVERS:
            raise GanflowError(
                f"unknown fit solver {self.fit_solver!r}: expected one of {list(FIT_SOLVERS)}"
            )
        if not (isinstance(self.step_quantile, int | float) and 0 < self.step_quantile <= 1):
            raise GanflowError(f"step_quantile must be in (0, 1], got {self.step_quantile!r}")
        get_divergence(self.divergence)  # raises on an unknown name
        check_penalty_and_pairing(self.d_penalty, self.pairing, self.faithful)
        for name in ("eps", "cfl", "length_scale", "fit_tol", "calib_tol"):
            val = getattr(self, name)
            if not (isinstance(val, int | float) and math.isfinite(val) and val > 0):
                raise GanflowError(f"{name} must be a positive finite number, got {val!r}")
        for name in ("fit_steps", "d_steps", "batch_size", "calib_max_steps", "fit_max_steps"):
            val = getattr(self, name)
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise GanflowError(f"{name} must be a positive integer, got {val!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepInfo:
    """What one iteration did; floats are Python numbers (cheap to log)."""

    d_loss: float
    g_loss: float
    d_steps: int
    fit_steps: int
    flow_time: float  # flow time advanced by this step (eps, or the controlled eps_t)
    drift_rms: float = float("nan")
    drift_max: float = float("nan")
    fit_ratio: float = float("nan")  # final RMS residual / RMS displacement (flow only)


# ----------------------------------------------------------------------------- D
def discriminator_loss(f_real: torch.Tensor, f_fake: torch.Tensor) -> torch.Tensor:
    r"""Minus the objective (21): softplus(-f(x)) + softplus(f(G(z))), batch means.

    ``-ln D = softplus(-f)`` and ``-ln(1 - D) = softplus(f)`` for D = sigmoid(f), so the
    loss is finite for every logit."""
    return F.softplus(-f_real).mean() + F.softplus(f_fake).mean()


def calibrate_discriminator(
    D: nn.Module,
    opt_d: torch.optim.Optimizer,
    sample_real: Callable[[], torch.Tensor],
    sample_fake: Callable[[], torch.Tensor],
    *,
    steps: int = 1,
    tol: float | None = None,
    max_steps: int | None = None,
    penalty: float = 0.0,
) -> tuple[float, int]:
    r"""Train the logit f = D on the logistic loss (21); returns (last loss, steps taken).

    Args:
        sample_real, sample_fake: draw a fresh batch of data / of detached G(z), (m, d).
        steps: steps taken always (the paper: 1).
        tol: if given, continue after ``steps`` until the loss on a held-out check batch
            (drawn once here) fell by less than ``tol`` relative over the last 5 steps, at
            most ``max_steps`` steps in all: the faithful mode's calibration criterion.
        penalty: gamma of the R1 gradient penalty (gamma / 2) E_data |grad_x f|^2 added
            to (21) (Mescheder et al. 2018; not in the paper). It keeps grad f, hence the
            drift (20), from growing without bound on the data; 0: off. The returned loss
            is the logistic loss alone, comparable with and without the penalty.
    """
    check = None
    if tol is not None:
        check = (sample_real(), sample_fake())
        with torch.no_grad():
            history = [float(discriminator_loss(D(check[0]), D(check[1])))]
    cap = steps if tol is None else max(steps, max_steps or steps)
    loss = torch.tensor(float("nan"))
    taken = 0
    while taken < cap:
        x, y = sample_real(), sample_fake()
        opt_d.zero_grad(set_to_none=True)
        if penalty > 0:
            x = x.detach().requires_grad_(True)
            f_real = D(x)
            (grad_x,) = torch.autograd.grad(f_real.sum(), x, create_graph=True)
            loss = discriminator_loss(f_real, D(y))
            (loss + 0.5 * penalty * grad_x.pow(2).sum(-1).mean()).backward()
        else:
            loss = discriminator_loss(D(x), D(y))
            loss.backward()
        opt_d.step()
        taken += 1
        if check is not None:
            with torch.no_grad():
                now = float(discriminator_loss(D(check[0]), D(check[1])))
            history.append(now)
            # calibrated: the held-out loss fell by less than tol (relative) over the last
            # _CALIB_WINDOW steps (one step's change is below Adam's noise from the start)
            if taken >= max(steps, _CALIB_WINDOW):
                old = history[-_CALIB_WINDOW - 1]
                if old - now <= tol * abs(old):
                    break
    return float(loss.detach()), taken


# ----------------------------------------------------------------------------- targets
def push_targets(
    D: nn.Module, x: torch.Tensor, *, eps: float, divergence: str | Divergence = "jsd"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Targets of (22): y = x + eps * drift(x), drift = m(e^{-f}) grad f (section 7).

    Args:
        x: generated points G(z), shape (m, d) (detached here).
    Returns:
        (y, drift), both detached, shape (m, d).
    """
    div = get_divergence(divergence)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        f = D(x)
        # grad of sum_i f(x_i) w.r.t. x_i is grad f(x_i): the points do not interact.
        (grad_f,) = torch.autograd.grad(f.sum(), x)
    drift = div.drift(f.detach(), grad_f).detach()
    return (x.detach() + eps * drift), drift


def controlled_move(drift: torch.Tensor, cfg: StepConfig) -> tuple[torch.Tensor, float]:
    r"""The move eps * drift of (22) and the flow time eps it advances.

    Outside the faithful mode eps = ``cfg.eps``. In the faithful mode the CFL-like rule on
    a robust statistic: eps = min(cfg.eps, cfl * length_scale / q), q the
    ``step_quantile`` quantile of |drift_i| (1: the max), so a few points with a large
    drift cannot freeze flow time; those few have their move clipped to
    cfl * length_scale (they lag the ODE). ``drift`` has shape (m, d).
    """
    eps = cfg.eps
    if not cfg.faithful:
        return eps * drift, eps
    limit = cfg.cfl * cfg.length_scale
    speed = drift.norm(dim=-1)
    # torch.quantile refuses inputs of more than 2^24 elements; speeds are one per point
    vq = float(torch.quantile(speed.double(), cfg.step_quantile))
    if vq > 0:
        eps = min(eps, limit / vq)
    move = eps * drift
    norm = move.norm(dim=-1, keepdim=True)
    return move * torch.clamp(limit / norm.clamp_min(1e-30), max=1.0), eps


def discriminator_drift(
    D: nn.Module, x: torch.Tensor, *, divergence: str | Divergence = "jsd", chunk: int = 8192
) -> torch.Tensor:
    r"""The drift m(e^{-f}) grad f of ODE (2) (section 7) at every row of ``x`` (N, d).

    Computed ``chunk`` rows at a time, so that D's activations for N = 50 000 points never
    sit in memory at once; the points do not interact, so chunking changes nothing.
    Returns a detached tensor of x's shape."""
    if chunk < 1:
        raise GanflowError(f"chunk must be a positive integer, got {chunk!r}")
    out = torch.empty_like(x)
    for start in range(0, x.shape[0], chunk):
        out[start:start + chunk] = push_targets(
            D, x[start:start + chunk], eps=1.0, divergence=divergence)[1]
    return out


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


def generator_loss(
    method: str, *, D: nn.Module | None = None, targets: torch.Tensor | None = None,
    pairing: str = "index",
) -> LossFn:
    r"""The generator loss of ``method`` as a function of the batch G(z) (table above).

    For ``flow``, ``pairing="energy"`` gives :func:`energy_fit_loss`; any other pairing
    the MSE to the (already re-paired) targets."""
    if method == "flow":
        if targets is None:
            raise GanflowError("method 'flow' needs targets y (push_targets), got None")
        y = targets.detach()
        if pairing == "energy":
            return lambda g: energy_fit_loss(g, y)
        return lambda g: (g - y).pow(2).sum(-1).mean()
    if D is None:
        raise GanflowError(f"method {method!r} needs the discriminator D, got None")
    if method == "gan":
        return lambda g: -F.softplus(D(g)).mean()  # ln(1 - sigmoid(f)) = -softplus(f)
    if method == "gan-ns":
        return lambda g: F.softplus(-D(g)).mean()  # -ln sigmoid(f) = softplus(-f)
    raise GanflowError(f"unknown method {method!r}: expected one of {list(METHODS)}")


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

    names = [n for n, p in G.named_parameters() if p.requires_grad]
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
        base = {n: params[n].detach() for n in names}
        _, pullback = vjp(forward, base)

        def jjt(u: torch.Tensor, base=base, pullback=pullback) -> torch.Tensor:
            (tangent,) = pullback(u)
            return jvp(forward, (base,), (tangent,))[1]

        if lam is None:
            # the Rayleigh quotient r.JJ^T r / r.r: the size of the NTK along r
            lam = _LM_DAMPING * float((resid * jjt(resid)).sum()) / float(resid.pow(2).sum())
        # CG on (J J^T + lam I) a = r (the damped, minimum-norm Gauss-Newton step), to
        # the accuracy the fit needs (half of tol, measured against the displacement)
        a = torch.zeros_like(resid)
        res = resid.clone()
        d = res.clone()
        rr = float(res.pow(2).sum())
        cg_goal = (0.5 * target) ** 2 * resid.shape[0]
        for _ in range(_CG_MAX_ITERS):
            if rr <= cg_goal:
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
        (delta,) = pullback(a)
        with torch.no_grad():
            for n in names:
                params[n].add_(delta[n])
            new_resid = y - G(z)
            if rms(new_resid) < rms(resid):  # accept; trust the linearisation more
                resid = new_resid
                lam = lam / 3
            else:  # reject: undo, damp harder (a shorter step, closer to gradient descent)
                for n in names:
                    params[n].sub_(delta[n])
                lam = lam * 10
        taken += 1
    return rms(resid), taken


# ----------------------------------------------------------------------------- one step
def algorithm_step(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    sample_data: Callable[[int], torch.Tensor],
    sample_latent: Callable[[int], torch.Tensor],
    cfg: StepConfig,
) -> StepInfo:
    r"""One iteration of Algorithm 1 (section 5), or of a GAN baseline (``cfg.method``).

    ``sample_data(m)`` / ``sample_latent(m)`` return fresh batches on the training
    device (the trainer draws them from its seeded generator)."""
    m = cfg.batch_size

    def fake() -> torch.Tensor:
        with torch.no_grad():
            return G(sample_latent(m))

    # steps 1-2: calibrate D on fresh data and generated points, eq. (21)
    d_loss, d_taken = calibrate_discriminator(
        D, opt_d, lambda: sample_data(m), fake, steps=cfg.d_steps,
        tol=cfg.calib_tol if cfg.faithful else None, max_steps=cfg.calib_max_steps,
        penalty=cfg.d_penalty,
    )
    # step 3: fresh z
    z = sample_latent(m)
    if cfg.method != "flow":
        g_loss, g_taken = fit_generator(
            G, opt_g, z, generator_loss(cfg.method, D=D), steps=cfg.fit_steps
        )
        return StepInfo(d_loss, g_loss, d_taken, g_taken, cfg.eps)

    with torch.no_grad():
        x0 = G(z)
    _, drift = push_targets(D, x0, eps=1.0, divergence=cfg.divergence)
    speed = drift.norm(dim=-1)
    move, eps = controlled_move(drift, cfg)
    y = x0 + move  # eq. (22)
    if cfg.pairing == "assignment":
        y = y[assignment_permutation(x0, y)]
    disp = float((y - x0).pow(2).sum(-1).mean().sqrt())
    until = None
    resid = [float("nan")]
    # step 4: fit, eq. (23)
    if cfg.faithful and cfg.fit_solver == "gauss-newton":
        resid[0], g_taken = gauss_newton_fit(
            G, z, y, tol=cfg.fit_tol, scale=disp, min_steps=cfg.fit_steps,
            max_steps=cfg.fit_max_steps,
        )
        g_loss = resid[0] ** 2
    else:
        if cfg.faithful:
            def until() -> bool:
                with torch.no_grad():
                    resid[0] = float((G(z) - y).pow(2).sum(-1).mean().sqrt())
                return resid[0] < cfg.fit_tol * disp

        g_loss, g_taken = fit_generator(
            G, opt_g, z, generator_loss("flow", targets=y, pairing=cfg.pairing),
            steps=cfg.fit_steps, until=until, max_steps=cfg.fit_max_steps,
        )
    if not cfg.faithful and cfg.pairing != "energy":
        # the residual before the last step (no extra forward pass); an energy distance
        # is no residual, so its fit_ratio stays NaN (logged as null)
        resid[0] = math.sqrt(max(g_loss, 0.0))
    return StepInfo(
        d_loss, g_loss, d_taken, g_taken, eps,
        drift_rms=float(speed.pow(2).mean().sqrt()), drift_max=float(speed.max()),
        fit_ratio=resid[0] / disp if disp > 0 else 0.0,
    )
