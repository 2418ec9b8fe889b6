r"""One iteration of Algorithm 1 (docs/theory.md section 5) from three separate callables.

* :func:`calibrate_discriminator` - ascent on the logistic objective (21),
  E_data[ln D] + E_G[ln(1 - D)] with D = sigmoid(f), for a fixed number of steps or,
  in the faithful mode, until it is calibrated (criterion below).
* :func:`push_targets` - y = G(z) + eps * drift(G(z)) (22), the drift being the
  divergence's m(e^{-f}) grad f (section 7; JSD: 1/2 sigmoid(f) grad f, eq. (20)),
  grad f by autograd; y is detached.
* :func:`ganflow.fitting.fit_generator` - K descent steps on one generator loss with the
  same z (23).

:func:`algorithm_step` composes them. The GAN baselines are the same step with another
generator loss (:func:`ganflow.fitting.generator_loss`):

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
(``fit_solver="optimizer"``, default) or by :func:`ganflow.fitting.gauss_newton_fit`
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

import torch
import torch.nn.functional as F
from torch import nn

from ._errors import GanflowError
from .divergences import Divergence, get_divergence
from .fitting import FIT_SOLVERS, GAN_LOSSES, PAIRINGS, fit_generator, generator_loss

__all__ = [
    "METHODS",
    "STEP_CONTROLS",
    "StepConfig",
    "StepInfo",
    "algorithm_step",
    "calibrate_discriminator",
    "check_step_options",
    "controlled_move",
    "discriminator_drift",
    "discriminator_loss",
    "push_targets",
]

METHODS = ("flow", *GAN_LOSSES)
_CALIB_WINDOW = 5


def _as_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_step_options(cfg, flag: Callable[[str], str] = _as_flag) -> None:
    """Validate the per-iteration options of ``cfg`` (a :class:`StepConfig` or the
    trainer's config, which has the same fields); ``flag(name)`` names a field in the
    messages (by default its ``ganflow train`` flag: ``--d-penalty``)."""
    for name, registry in (("pairing", PAIRINGS), ("fit_solver", FIT_SOLVERS)):
        if getattr(cfg, name) not in registry:
            raise GanflowError(f"unknown {flag(name)} {getattr(cfg, name)!r}: expected one of "
                               f"{list(registry)}")
    get_divergence(cfg.divergence)  # raises on an unknown name
    q = cfg.step_quantile
    if not (isinstance(q, int | float) and 0 < q <= 1):
        raise GanflowError(f"{flag('step_quantile')} must be in (0, 1], got {q!r}")
    p = cfg.d_penalty
    if not (isinstance(p, int | float) and math.isfinite(p) and p >= 0):
        raise GanflowError(f"{flag('d_penalty')} must be a finite number >= 0 (0: off), "
                           f"got {p!r}")
    if cfg.faithful and not PAIRINGS[cfg.pairing].pointwise:
        raise GanflowError(
            f"{flag('pairing')} {cfg.pairing} has no point-wise residual for the fit "
            f"tolerance of --faithful: use {flag('pairing')} index or assignment with "
            "--faithful")
    for name in ("eps", "cfl", "fit_tol", "calib_tol"):
        v = getattr(cfg, name)
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise GanflowError(f"{flag(name)} must be a positive finite number, got {v!r}")


@dataclass(frozen=True)
class StepConfig:
    r"""Options of one iteration (see the module docstring for the faithful mode).

    ``eps`` is the flow time step of (22) (the largest one in the faithful mode);
    ``length_scale`` is the data's finest feature, in data units (set by the trainer).
    Faithful only: ``step_quantile`` is the quantile of |drift| that sets the CFL step
    (1: the max); ``fit_solver`` is "optimizer" (steps of G's optimizer, as outside the
    faithful mode) or "gauss-newton" (:func:`ganflow.fitting.gauss_newton_fit`).
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
        check_step_options(self)
        if not (isinstance(self.length_scale, int | float) and self.length_scale > 0):
            raise GanflowError(f"length_scale must be a positive finite number, got "
                               f"{self.length_scale!r}")
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


def _fixed_step(drift: torch.Tensor, cfg: StepConfig) -> tuple[torch.Tensor, float]:
    return cfg.eps * drift, cfg.eps


def _cfl_step(drift: torch.Tensor, cfg: StepConfig) -> tuple[torch.Tensor, float]:
    eps = cfg.eps
    limit = cfg.cfl * cfg.length_scale
    speed = drift.norm(dim=-1)
    # torch.quantile refuses inputs of more than 2^24 elements; speeds are one per point
    vq = float(torch.quantile(speed.double(), cfg.step_quantile))
    if vq > 0:
        eps = min(eps, limit / vq)
    move = eps * drift
    norm = move.norm(dim=-1, keepdim=True)
    return move * torch.clamp(limit / norm.clamp_min(1e-30), max=1.0), eps


# step controllers: (drift (m, d), StepConfig) -> (move (m, d), flow time advanced);
# "cfl" is the faithful mode's
STEP_CONTROLS: dict[str, Callable[[torch.Tensor, StepConfig], tuple[torch.Tensor, float]]] = {
    "fixed": _fixed_step,
    "cfl": _cfl_step,
}


def controlled_move(drift: torch.Tensor, cfg: StepConfig) -> tuple[torch.Tensor, float]:
    r"""The move eps * drift of (22) and the flow time eps it advances
    (:data:`STEP_CONTROLS`).

    Outside the faithful mode (``"fixed"``) eps = ``cfg.eps``. In the faithful mode
    (``"cfl"``) the CFL-like rule on a robust statistic: eps = min(cfg.eps, cfl *
    length_scale / q), q the ``step_quantile`` quantile of |drift_i| (1: the max), so a
    few points with a large drift cannot freeze flow time; those few have their move
    clipped to cfl * length_scale (they lag the ODE). ``drift`` has shape (m, d).
    """
    return STEP_CONTROLS["cfl" if cfg.faithful else "fixed"](drift, cfg)


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
    pairing = PAIRINGS[cfg.pairing]
    y = pairing.match(x0, x0 + move)  # eq. (22), matched to the batch
    disp = float((y - x0).pow(2).sum(-1).mean().sqrt())
    # step 4: fit, eq. (23); outside the faithful mode always by G's optimizer
    fit = FIT_SOLVERS[cfg.fit_solver if cfg.faithful else "optimizer"](
        G, opt_g, z, y, pairing, cfg, disp)
    return StepInfo(
        d_loss, fit.loss, d_taken, fit.steps, eps,
        drift_rms=float(speed.pow(2).mean().sqrt()), drift_max=float(speed.max()),
        fit_ratio=fit.residual / disp if disp > 0 else 0.0,
    )
