r"""A generator that follows the flow: persistent latent-particle pairs (docs/theory.md section 8).

Algorithm 1 builds the flow map recursively, y = G_n(z) + eps drift(G_n(z)),
G_{n+1} ~ y: every fit error enters the next targets and the next drift. This method
keeps the flow's state where fit errors cannot reach it (section 8, remedy (a)). It holds
N pairs (z_i, x_i) with x_i(0) = G_0(z_i), and one iteration is

1. calibrate D on fresh data against a random batch of the x_i (eq. 21);
2. move every x_i by eps * m(e^{-f(x_i)}) grad f(x_i): one Euler step of ODE (2), the
   drift of eq. (20) / section 7 estimated by D (:func:`ganflow.particle_flow.particle_step`);
3. K descent steps of G on (1/m) sum_i |G(z_i) - x_i|^2 (or, ``fit_loss`` "l1", on
   (1/m) sum_i |G(z_i) - x_i|), each on a fresh random batch of m pairs (:func:`fit_pairs`);
   with ``nearest`` = w > 0, plus w times the same loss of G at m FRESH latents z'
   against the particle nearest to each G(z').

The x_i are the particle solution of ODE (2) started from G_0's law; x_i(t) =
X_t(G_0(z_i)), so G is regressed on the flow map G_t = X_t o G_0 itself, point by point.
G's error never feeds back into the x_i, so it does not compound: it is the fit's error at
time t alone. Flow time advances by eps per iteration (or the controlled step of the
faithful mode, which applies to the particles' move).

With ``repair_every`` > 0 (the trainer's default for flow-map: 100) the pairs are re-paired
by minibatch optimal transport every so many iterations (:func:`repair_pairs`). The set of
the x_i is kept, so the flow's state is unchanged, and G's error still never enters it; but
G is then regressed on a transport of the latent law onto the particles close to its own
map, not on X_t o G_0, which on sharp modes sends neighbouring latents to different modes
(a map a continuous G cannot fit: on ring8 its samples fell between the modes). Where a
block still pairs neighbouring latents with two modes, the "l1" fit (the trainer's default
for flow-map) puts G at one of them, where the "mse" fit puts it at their mean, between.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .algorithm import StepConfig, StepInfo
from .fitting import assignment_permutation
from .particle_flow import particle_step

__all__ = ["FIT_LOSSES", "NEAREST_POOL", "REPAIR_BLOCK", "fit_pairs", "flow_map_step",
           "initial_pairs", "repair_pairs"]

# the losses of fit_pairs, as functions of the squared residuals |G(z_i) - x_i|^2 (m,):
# "mse" regresses G on the conditional MEAN of its targets, "l1" (the Euclidean norm, not
# squared) on their geometric MEDIAN: where neighbouring latents are paired with particles
# of two modes, the mean lies between the modes and the median at one of them
FIT_LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mse": lambda sq: sq.mean(),
    "l1": lambda sq: sq.add(1e-12).sqrt().mean(),  # + 1e-12: finite gradient at 0
}

# particles searched per step by the nearest-particle term of fit_pairs (all of them up
# to this many, else a random subset): a (batch x pool) distance matrix and its argmin
# per fit step, so it is kept small; a random 1024 of the particles still put a particle
# near every point of their support (the target only has to be on it)
NEAREST_POOL = 1024

# pairs per block of repair_pairs: an assignment costs O(block^3), and larger blocks did no
# better on ring8 (benchmarks/README.md, "flow-map")
REPAIR_BLOCK = 512


@torch.no_grad()
def initial_pairs(
    G: nn.Module, n: int, latent_dim: int, generator: torch.Generator, *,
    device: torch.device | str = "cpu", chunk: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""N pairs (z_i, x_i = G_0(z_i)): z (n, latent_dim) ~ N(0, I) from ``generator`` (on
    the CPU, so the draw is the same on every device), x (n, d) by G in chunks."""
    z = torch.randn(n, latent_dim, generator=generator).to(device)
    x = torch.cat([G(z[s:s + chunk]) for s in range(0, n, chunk)])
    return z, x


def fit_pairs(
    G: nn.Module,
    opt_g: torch.optim.Optimizer,
    latents: torch.Tensor,
    particles: torch.Tensor,
    pick: Callable[[int], torch.Tensor],
    *,
    batch_size: int,
    steps: int,
    loss: str = "mse",
    nearest: float = 0.0,
    sample_latent: Callable[[int], torch.Tensor] | None = None,
) -> float:
    r"""``steps`` descent steps of G on a fresh random batch of m = ``batch_size`` pairs
    each (``pick(m)`` gives their indices), on the :data:`FIT_LOSSES` ``loss`` of the
    residuals G(z_i) - x_i. Returns the mean squared residual (1/m) sum |G(z_i) - x_i|^2
    over the steps whatever the loss (each taken before its update), NaN if one was not
    finite.

    With ``nearest`` = w > 0 each step adds w times the same loss of the residuals
    G(z'_j) - x_{nn(j)} at m fresh latents z'_j = ``sample_latent(m)``, x_{nn(j)} the
    particle nearest to G(z'_j) (among all of them, or :data:`NEAREST_POOL` drawn by
    ``pick``). The pairs pin G down at N latents only; this term pulls G's samples at
    every other latent onto the particles' support, where a continuous G interpolating
    between pairs of two modes (or two images) would put them between. It is one-sided
    (every sample near some particle, not every particle near some sample), so only the
    pairs term keeps G's law from collapsing onto fewer modes, and a large w can
    outweigh it: keep w of the order of 1."""
    if nearest > 0 and sample_latent is None:
        raise ValueError("fit_pairs: nearest > 0 needs sample_latent")
    fit = FIT_LOSSES[loss]
    n = particles.shape[0]
    total = 0.0
    for _ in range(steps):
        idx = pick(batch_size)
        opt_g.zero_grad(set_to_none=True)
        sq = (G(latents[idx]) - particles[idx]).pow(2).sum(-1)
        objective = fit(sq)
        if nearest > 0:
            pool = particles if n <= NEAREST_POOL else particles[pick(NEAREST_POOL)]
            gz = G(sample_latent(batch_size))
            with torch.no_grad():
                target = pool[torch.cdist(gz, pool).argmin(1)]
            objective = objective + nearest * fit((gz - target).pow(2).sum(-1))
        objective.backward()
        opt_g.step()
        total += float(sq.detach().mean())
    mean = total / steps
    return mean if math.isfinite(mean) else float("nan")


def flow_map_step(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer | None,
    latents: torch.Tensor,
    particles: torch.Tensor,
    sample_data: Callable[[int], torch.Tensor],
    pick: Callable[[int], torch.Tensor],
    cfg: StepConfig,
    *,
    chunk: int = 8192,
    repair_every: int = 0,
    iteration: int = 0,
    seed: int = 0,
    fit_loss: str = "mse",
    fit_nearest: float = 0.0,
    sample_latent: Callable[[int], torch.Tensor] | None = None,
    drift_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> StepInfo:
    r"""One iteration of the flow-map method (module docstring): calibrate, move, fit.

    Args:
        G: the generator, R^n -> R^d.
        D: the logit f. With ``opt_d`` None it is taken as exact, f = ln(rho_d / u_t)
            (an oracle, e.g. in a closed-form test), and not calibrated.
        latents: (N, n) the z_i; particles: (N, d) the x_i, moved IN PLACE.
        sample_data: ``sample_data(m)`` draws a fresh data batch on the device.
        pick: ``pick(m)`` returns m pair indices (D's fake batch and the fit batches).
        cfg: ``batch_size`` m, ``d_steps``, ``fit_steps`` K, ``eps``, ``divergence``, the
            faithful mode's step control and ``d_penalty``; ``pairing`` is unused (the
            pairs are the pairing).
        repair_every: if > 0, every ``repair_every``-th iteration (``iteration`` + 1 a
            multiple of it) re-pairs the latents with the moved particles before the fit
            (:func:`repair_pairs`), the blocks drawn from ``seed`` and ``iteration`` alone,
            so that a resumed run re-pairs as one that never stopped.
        iteration: the number of iterations done before this one.
        fit_loss: the loss of :func:`fit_pairs` (:data:`FIT_LOSSES`).
        fit_nearest, sample_latent: the weight of :func:`fit_pairs`'s nearest-particle
            term at fresh latents, and where they come from (0: off).
        drift_fn: the drift at every particle (:func:`ganflow.particle_flow.particle_step`).
    Returns a :class:`StepInfo`: ``g_loss`` the mean fit loss, ``fit_ratio`` the RMS
    residual of the fit over the RMS move of this step (how many steps G lags behind its
    particles); ``drift_max`` NaN if some move was not finite (the caller must stop).
    """
    info = particle_step(D, opt_d, particles, sample_data, pick, cfg, chunk=chunk,
                         drift_fn=drift_fn)
    if repair_every > 0 and (iteration + 1) % repair_every == 0:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + iteration)
        repair_pairs(G, latents, particles, gen, chunk=chunk)
    g_loss = fit_pairs(G, opt_g, latents, particles, pick, batch_size=cfg.batch_size,
                       steps=cfg.fit_steps, loss=fit_loss, nearest=fit_nearest,
                       sample_latent=sample_latent)
    move = info.flow_time * info.drift_rms
    info.g_loss = g_loss
    info.fit_steps = cfg.fit_steps
    info.fit_ratio = math.sqrt(g_loss) / move if move > 0 else float("nan")
    return info


@torch.no_grad()
def repair_pairs(
    G: nn.Module,
    latents: torch.Tensor,
    particles: torch.Tensor,
    generator: torch.Generator,
    *,
    block: int = REPAIR_BLOCK,
    chunk: int = 8192,
) -> tuple[float, float]:
    r"""Re-pair the z_i with the x_i by minibatch optimal transport; permutes ``particles``
    IN PLACE and returns the RMS residual |G(z_i) - x_i| before and after.

    The pairs are split into random blocks of ``block`` (the split drawn by ``generator``,
    a CPU generator); within each block the x_i are permuted by the assignment that
    minimises sum_i |G(z_i) - x_sigma(i)|^2 (Hungarian algorithm,
    :func:`ganflow.fitting.assignment_permutation`). The set of the x_i, so the particle
    law and the flow's state, is unchanged; only the map that G must learn changes: from
    the flow map X_t o G_0, which sends neighbouring latents to different modes once the
    modes are sharp, to the pairing closest to G's current outputs inside each block
    (cyclically monotone with respect to them), which a continuous G can fit.
    """
    n = latents.shape[0]
    gz = torch.cat([G(latents[s:s + chunk]) for s in range(0, n, chunk)])
    before = float((gz - particles).pow(2).sum(-1).mean().sqrt())
    order = torch.randperm(n, generator=generator).to(latents.device)
    for s in range(0, n, block):
        idx = order[s:s + block]
        if idx.numel() > 1:
            particles[idx] = particles[idx][assignment_permutation(gz[idx], particles[idx])]
    after = float((gz - particles).pow(2).sum(-1).mean().sqrt())
    return before, after
