r"""Particle simulation of the distribution-dependent ODE (2) with a density-estimated drift.

Each particle moves with the drift of docs/theory.md section 7,

    dY/dt = m(e^{-f}) grad f(Y),   f = ln rho_d - ln rho_hat,

where rho_d is exact and rho_hat is a Gaussian kernel density estimate of the particles
themselves (:mod:`ganflow.kde`, Silverman bandwidth by default, recomputed at every
evaluation). In d <= 2 the KDE is evaluated on a grid (linear binning, FFT convolution,
linear interpolation: O(N) per evaluation, relative error ~1e-3, see
:func:`ganflow.kde.kde_log_density_and_score_binned`); ``kde="direct"`` sums all N^2
pairs (the reference, and the only choice in d > 2). For the JSD this is eq. (2) =
eq. (20) with the optimal discriminator logit; for KL it is the deterministic "blob"
particle method for the Fokker-Planck equation. Time stepping is explicit: Euler (first
order) or Heun (second order).
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
from .kde import (
    kde_log_density,
    kde_log_density_and_score,
    kde_log_density_and_score_binned,
    resolve_bandwidth,
    resolve_kde,
)
from .pde import FokkerPlanckSolution
from .targets import GaussianMixture, load_target

__all__ = [
    "ParticleSolution",
    "simulate_particles",
    "particle_drift",
    "particles_on_grid",
    "PDEComparison",
    "compare_with_pde",
    "l1_gap_to_pde",
    "estimate_particle_memory",
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


def _log_prob_and_score(target: GaussianMixture, x: torch.Tensor):
    """ln rho_d and grad ln rho_d at ``x`` (N, d) from one pass over the components.

    Components are laid out (K, N) so that reductions over k run along contiguous rows
    (a reduction over a trailing dimension of size K = 2..25 is several times slower)."""
    w, mu, s = target._params(x)
    d = x.shape[1]
    inv_var = s.pow(-2)
    const = torch.log(w) - 0.5 * d * torch.log(2 * math.pi * s**2)
    comp = torch.stack([(x - mu[k]).pow_(2).sum(1).mul_(-0.5 * inv_var[k]).add_(const[k])
                        for k in range(len(w))])  # (K, N)
    top = comp.amax(0)
    log_p = (comp - top).exp_().sum(0).log_().add_(top)
    resp = comp.sub_(log_p).exp_()  # (K, N) responsibilities
    # sum_k r_k (mu_k - x) / s_k^2 without a (K, N, d) intermediate
    score = resp.T @ (mu * inv_var[:, None]) - x * (inv_var @ resp)[:, None]
    return log_p, score


def particle_drift(
    x: torch.Tensor,
    target: GaussianMixture,
    divergence: Divergence,
    bandwidth: float | str = "silverman",
    *,
    kde: str = "auto",
) -> torch.Tensor:
    r"""m(e^{-f}) grad f at the particles ``x`` (N, d), f = ln rho_d - ln rho_hat (ODE (2)).

    ``kde``: how rho_hat and grad ln rho_hat are evaluated: ``"binned"`` (grid + FFT,
    O(N), d <= 2; :func:`ganflow.kde.kde_log_density_and_score_binned`), ``"direct"``
    (all N^2 pairs, exact), or ``"auto"`` (binned where d <= 2).
    """
    b = resolve_bandwidth(x, bandwidth)
    if resolve_kde(x.shape[1], kde) == "binned":
        log_hat, score_hat = kde_log_density_and_score_binned(x, x, b)
    else:
        log_hat, score_hat = kde_log_density_and_score(x, x, b)
    if x.ndim == 2 and isinstance(target, GaussianMixture):
        log_p, score = _log_prob_and_score(target, x)
    else:
        log_p, score = target.log_prob(x), target.score(x)
    return divergence.drift(log_p - log_hat, score - score_hat)


def estimate_particle_memory(
    n: int,
    dim: int,
    *,
    dtype: torch.dtype = torch.float64,
    n_saves: int = 2,
    kde: str = "binned",
    n_components: int = 1,
) -> dict[str, int]:
    r"""Bytes a run of :func:`simulate_particles` needs, estimated before allocating.

    ``working``: the state, the two Heun stages, the drift's temporaries (target
    components, KDE: float64 copies, 2^d interpolation indices and weights per particle
    for ``"binned"``; 2^20-entry blocks for ``"direct"``), on the simulation's device.
    ``saved``: the snapshots kept at ``n_saves`` times, stacked at the end (on the host).
    An upper estimate (no allocator reuse counted).
    """
    n, dim = int(n), int(dim)
    item = torch.empty((), dtype=dtype).element_size()
    per_particle = item * (12 * dim + 3 * n_components + 6)
    if kde == "binned":
        per_particle += 16 * 2**dim + 8 * (6 * dim + 4)
        fixed = 100 * 2**22  # grid at the cell cap: counts, spectra, fields (~100 B/cell)
    else:
        per_particle += 8 * (3 * dim + 2)
        fixed = 8 * 4 * 2**20
    return {"working": n * per_particle + fixed, "saved": 2 * n * dim * item * n_saves}


def _available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: the driver's count; CPU: MemAvailable)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # no driver, or another accelerator API: no check
            return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(
    n: int, rho: GaussianMixture, dtype: torch.dtype, n_saves: int, kde: str, device
) -> None:
    """Refuse (GanflowError) a run whose estimated memory exceeds what is available."""
    est = estimate_particle_memory(n, rho.dim, dtype=dtype, n_saves=n_saves, kde=kde,
                                   n_components=rho.n_components)
    dev = torch.device(device)
    host = _available_bytes(torch.device("cpu"))
    need_host = est["saved"] + (est["working"] if dev.type == "cpu" else 0)
    checks = [("host memory", need_host, host)]
    if dev.type != "cpu":
        checks.append((f"{dev} memory", est["working"], _available_bytes(dev)))
    for what, need, have in checks:
        if have is not None and need > have:
            raise GanflowError(
                f"{n:.4g} particles in {rho.dim}-D ({str(dtype).replace('torch.', '')}, "
                f"kde={kde!r}, {n_saves} saved snapshots) need about {need / 1e9:.3g} GB "
                f"of {what}; {have / 1e9:.3g} GB is available. Use fewer particles "
                "(or fewer --save-at times)."
            )


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
    kde: str = "auto",
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
        kde: ``"auto"`` (binned where d <= 2), ``"binned"`` or ``"direct"``; see
            :func:`particle_drift`.

    Before allocating anything, the memory the run needs is estimated
    (:func:`estimate_particle_memory`) and a :class:`~ganflow.GanflowError` naming the
    numbers is raised when it exceeds the memory available.
    """
    div = get_divergence(divergence)
    rho = load_target(target)
    if method not in ("euler", "heun"):
        raise GanflowError(f"method must be 'euler' or 'heun', got {method!r}")
    for name, val in (("t_end", t_end), ("dt", dt)):
        if not (isinstance(val, (int, float)) and math.isfinite(val) and val > 0):
            raise GanflowError(f"{name} must be a positive number, got {val!r}")
    kde = resolve_kde(rho.dim, kde)
    n_saves = 2 + (len(save_at) if save_at is not None else 0)
    if isinstance(init, torch.Tensor):
        if init.ndim != 2 or init.shape[1] != rho.dim:
            raise GanflowError(
                f"initial particles must have shape (N, {rho.dim}), got {tuple(init.shape)}"
            )
        _check_memory(init.shape[0], rho, dtype, n_saves, kde, device)
        x = init.to(device=device, dtype=dtype).clone()
        if not torch.isfinite(x).all():
            raise GanflowError("initial particles contain NaN or Inf")
    else:
        init_mix = load_target(init)
        if init_mix.dim != rho.dim:
            raise GanflowError(f"init has dimension {init_mix.dim}, target has {rho.dim}")
        if not (isinstance(n, (int, float)) and math.isfinite(n)) or int(n) != n or n < 2:
            raise GanflowError(f"number of particles must be an integer >= 2, got {n!r}")
        _check_memory(int(n), rho, dtype, n_saves, kde, device)
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
        return particle_drift(y, rho, div, bandwidth, kde=kde)

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
    positions: np.ndarray | torch.Tensor,
    grid: Grid,
    bandwidth: float | str = "silverman",
    *,
    kde: str = "direct",
) -> np.ndarray:
    """KDE of a particle cloud at the grid's cell centres, renormalised on the box.

    ``kde="binned"`` (d <= 2) evaluates it in O(N + cells) instead of O(N x cells)
    (:func:`ganflow.kde.kde_log_density_and_score_binned`; relative error ~1e-3)."""
    pts = torch.as_tensor(np.asarray(positions), dtype=torch.float64)
    b = resolve_bandwidth(pts, bandwidth)
    query = torch.from_numpy(grid.points())
    if resolve_kde(pts.shape[1], kde) == "binned":
        log_u = kde_log_density_and_score_binned(query, pts, b)[0]
    else:
        log_u = kde_log_density(query, pts, b)
    u = torch.exp(log_u - torch.logsumexp(log_u, 0)).numpy() / grid.cell_volume
    return u.reshape(grid.shape)


def l1_gap_to_pde(
    particles: ParticleSolution,
    pde: FokkerPlanckSolution,
    bandwidth: float | str = "silverman",
    *,
    smooth_pde: bool = False,
    kde: str = "direct",
) -> np.ndarray:
    """||KDE(particles at t) - u(t)||_1 on the PDE grid, for each saved particle time.

    With ``smooth_pde=True`` the PDE solution is convolved with the same Gaussian kernel
    first (u(t) * K_b): the KDE's own smoothing bias then cancels, and what remains is
    the particle dynamics' error plus sampling noise, both of which vanish as N grows.
    The raw gap (default) also contains the O(b^2) smoothing bias of the KDE, which can
    cancel against the O(b^2) bias of the KDE drift, so it need not fall monotonically.
    ``kde``: how the particles' KDE is evaluated on the grid (see :func:`particles_on_grid`).
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
        gaps.append(float(np.abs(particles_on_grid(p, pde.grid, b, kde=kde) - u).sum() * vol))
    return np.array(gaps)


@dataclass
class PDEComparison:
    """The PDE reference of a particle run and the L1 gaps at the particles' times."""

    pde: FokkerPlanckSolution
    l1: np.ndarray  # ||KDE - u(t)||_1
    l1_smoothed: np.ndarray  # ||KDE - u(t) * K_b||_1 (the KDE's smoothing bias cancels)


def compare_with_pde(particles: ParticleSolution, target: str | GaussianMixture,
                     init: str | GaussianMixture, *,
                     bandwidth: float | str = "silverman", box: float | None = None,
                     cells: int = 400, dt: float = 0.01) -> PDEComparison:
    """Solve eq. (25) of the particles' flow (towards ``target``, from the same start
    ``init``) to their saved times, and the L1 gaps of :func:`l1_gap_to_pde` (raw and
    against the smoothed PDE)."""
    import warnings

    from .pde import solve_fokker_planck

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # grid-resolution notes: the gaps say enough
        sol = solve_fokker_planck(target, init, divergence=particles.divergence,
                                  box=box, cells=cells, t_end=float(particles.times[-1]),
                                  dt=dt, save_at=list(particles.times))
    return PDEComparison(sol, l1_gap_to_pde(particles, sol, bandwidth),
                         l1_gap_to_pde(particles, sol, bandwidth, smooth_pde=True))
