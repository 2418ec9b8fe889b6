r"""Particle simulation of the distribution-dependent ODE (2) with a density-estimated drift.

Each particle moves with the drift of THEORY.md section 7,

    dY/dt = m(e^{-f}) grad f(Y),   f = ln rho_d - ln rho_hat,

where rho_d is exact and rho_hat is a Gaussian kernel density estimate of the particles
themselves (:mod:`ganflow.kde`, Silverman bandwidth by default, recomputed at every
evaluation). For the JSD this is eq. (2) = eq. (20) with the optimal discriminator
logit; for KL it is the deterministic "blob" particle method for the Fokker-Planck
equation. Time stepping is explicit: Euler (first order) or Heun (second order).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ._errors import GanflowError
from .divergences import Divergence, get_divergence
from .grid import Grid
from .kde import kde_log_density, kde_log_density_and_score, resolve_bandwidth
from .pde import FokkerPlanckSolution
from .targets import GaussianMixture, load_target

__all__ = [
    "ParticleSolution",
    "simulate_particles",
    "particle_drift",
    "particles_on_grid",
    "l1_gap_to_pde",
]


@dataclass
class ParticleSolution:
    """Result of :func:`simulate_particles`.

    ``times`` (k,) are the saved times (0 first); ``positions`` (k, N, d) the particles
    there; ``bandwidths`` (k,) the KDE bandwidth used at each saved time; ``n_steps``
    the number of time steps taken; ``seconds`` the wall time of the loop.
    """

    divergence: str
    target: str
    times: np.ndarray
    positions: np.ndarray
    bandwidths: np.ndarray
    n_steps: int
    seconds: float

    def at(self, t: float) -> np.ndarray:
        k = int(np.argmin(np.abs(self.times - t)))
        if abs(self.times[k] - t) > 1e-9 * max(1.0, abs(t)):
            raise GanflowError(
                f"no saved particles at t={t!r}; saved times are {self.times.tolist()}"
            )
        return self.positions[k]

    def means(self) -> np.ndarray:
        return self.positions.mean(1)

    def variances(self) -> np.ndarray:
        """Per-axis sample variances, shape (k, d)."""
        return self.positions.var(1, ddof=1)


def particle_drift(
    x: torch.Tensor,
    target: GaussianMixture,
    divergence: Divergence,
    bandwidth: float | str = "silverman",
) -> torch.Tensor:
    r"""m(e^{-f}) grad f at the particles ``x`` (N, d), f = ln rho_d - ln rho_hat (ODE (2))."""
    b = resolve_bandwidth(x, bandwidth)
    log_hat, score_hat = kde_log_density_and_score(x, x, b)
    f = target.log_prob(x) - log_hat
    grad_f = target.score(x) - score_hat
    return divergence.drift(f, grad_f)


def simulate_particles(
    target: GaussianMixture | str,
    init: GaussianMixture | str | torch.Tensor,
    *,
    divergence: Divergence | str = "jsd",
    n: int = 2000,
    t_end: float = 1.0,
    dt: float = 0.01,
    method: str = "heun",
    bandwidth: float | str = "silverman",
    save_at=None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> ParticleSolution:
    r"""Integrate ODE (2) for ``n`` particles from rho_0 to ``t_end``.

    Args:
        target: rho_d (mixture or spec for :func:`ganflow.load_target`), any dimension.
        init: rho_0 as a mixture/spec (``n`` particles are drawn with ``seed``) or an
            (N, d) tensor of starting positions.
        divergence: the flow (drift m(e^{-f}) grad f).
        dt: fixed time step; steps are shortened to land on ``save_at`` and ``t_end``.
        method: ``"euler"`` or ``"heun"`` (explicit trapezoid, second order).
        bandwidth: ``"silverman"`` (recomputed from the particles each evaluation) or a float.
    """
    div = get_divergence(divergence)
    rho = load_target(target)
    if method not in ("euler", "heun"):
        raise GanflowError(f"method must be 'euler' or 'heun', got {method!r}")
    for name, val in (("t_end", t_end), ("dt", dt)):
        if not (isinstance(val, (int, float)) and math.isfinite(val) and val > 0):
            raise GanflowError(f"{name} must be a positive number, got {val!r}")
    if isinstance(init, torch.Tensor):
        x = init.to(device=device, dtype=dtype).clone()
        if x.ndim != 2 or x.shape[1] != rho.dim:
            raise GanflowError(
                f"initial particles must have shape (N, {rho.dim}), got {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise GanflowError("initial particles contain NaN or Inf")
    else:
        init_mix = load_target(init)
        if init_mix.dim != rho.dim:
            raise GanflowError(f"init has dimension {init_mix.dim}, target has {rho.dim}")
        if int(n) != n or n < 2:
            raise GanflowError(f"number of particles must be an integer >= 2, got {n!r}")
        gen = torch.Generator().manual_seed(int(seed))
        x = init_mix.sample(int(n), generator=gen, dtype=dtype, device=device)
    first_bandwidth = resolve_bandwidth(x, bandwidth)  # validates before any step

    save_times = sorted(
        {float(s) for s in (save_at if save_at is not None else [])} | {float(t_end)}
    )
    for s in save_times:
        if not (0 <= s <= t_end):
            raise GanflowError(f"save_at times must lie in [0, t_end={t_end}], got {s!r}")

    def drift(y: torch.Tensor) -> torch.Tensor:
        return particle_drift(y, rho, div, bandwidth)

    start = time.perf_counter()
    t, steps = 0.0, 0
    times, positions, bws = [0.0], [x.cpu().numpy().copy()], [first_bandwidth]
    t_eps = 1e-12 * max(1.0, t_end)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=t_end, desc=f"particles {div.name}", unit="t", leave=False)
    for target_t in save_times:
        while t < target_t - t_eps:
            step = min(dt, target_t - t)
            k1 = drift(x)
            if method == "euler":
                x = x + step * k1
            else:
                k2 = drift(x + step * k1)
                x = x + 0.5 * step * (k1 + k2)
            if not torch.isfinite(x).all():
                raise GanflowError(
                    f"particles became non-finite at t={t + step:.6g}; reduce dt (now {dt})"
                )
            t += step
            steps += 1
            if bar is not None:
                bar.n = min(t, t_end)
                bar.refresh()
        t = target_t
        if target_t > 0:
            times.append(t)
            positions.append(x.cpu().numpy().copy())
            bws.append(resolve_bandwidth(x, bandwidth))
    if bar is not None:
        bar.close()
    return ParticleSolution(
        divergence=div.name,
        target=rho.name,
        times=np.array(times),
        positions=np.stack(positions),
        bandwidths=np.array(bws),
        n_steps=steps,
        seconds=time.perf_counter() - start,
    )


def particles_on_grid(
    positions: np.ndarray | torch.Tensor, grid: Grid, bandwidth: float | str = "silverman"
) -> np.ndarray:
    """KDE of a particle cloud at the grid's cell centres, renormalised on the box."""
    pts = torch.as_tensor(np.asarray(positions), dtype=torch.float64)
    b = resolve_bandwidth(pts, bandwidth)
    log_u = kde_log_density(torch.from_numpy(grid.points()), pts, b)
    u = torch.exp(log_u - torch.logsumexp(log_u, 0)).numpy() / grid.cell_volume
    return u.reshape(grid.shape)


def l1_gap_to_pde(
    particles: ParticleSolution,
    pde: FokkerPlanckSolution,
    bandwidth: float | str = "silverman",
    *,
    smooth_pde: bool = False,
) -> np.ndarray:
    """||KDE(particles at t) - u(t)||_1 on the PDE grid, for each saved particle time.

    With ``smooth_pde=True`` the PDE solution is convolved with the same Gaussian kernel
    first (u(t) * K_b): the KDE's own smoothing bias then cancels, and what remains is
    the particle dynamics' error plus sampling noise, both of which vanish as N grows.
    The raw gap (default) also contains the O(b^2) smoothing bias of the KDE, which can
    cancel against the O(b^2) bias of the KDE drift, so it need not fall monotonically.
    """
    from scipy.ndimage import gaussian_filter

    vol = pde.grid.cell_volume
    gaps = []
    for t, p in zip(particles.times, particles.positions, strict=True):
        b = resolve_bandwidth(torch.from_numpy(p), bandwidth)
        u = pde.u(t)
        if smooth_pde:
            u = gaussian_filter(u, sigma=b / pde.grid.h, mode="constant", truncate=6.0)
            u = u / (u.sum() * vol)
        gaps.append(float(np.abs(particles_on_grid(p, pde.grid, b) - u).sum() * vol))
    return np.array(gaps)
