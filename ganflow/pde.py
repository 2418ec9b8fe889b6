r"""The nonlinear Fokker-Planck equation (25) of a divergence flow, solved on a grid.

    du/dt = div( rho_d m(u/rho_d) grad(u/rho_d) )        (docs/theory.md section 7)

which for the JSD mobility m(v) = 1/(2(1+v)) is eq. (25), du/dt = 1/2 div(rho_d grad
ln(1 + u/rho_d)), and for KL (m = 1) the linear Ornstein-Uhlenbeck-type equation.

Discretisation (ground truth, so every property of docs/theory.md section 4 holds exactly):

* conservative finite volumes on [-L, L]^d, cell-centred, zero-flux walls: mass is
  conserved to the Newton tolerance;
* face flux  G_f = rho_d(face) * m((v_i + v_j)/2) * (v_j - v_i) / h  with v = u/rho_d:
  centred, second order in h on smooth data, and a non-negative multiple of the jump in
  v, so the implicit step has a discrete maximum principle for v: u >= 0 and
  max u/rho_d never exceeds its initial value, for every dt;
* backward Euler in time, i.e. the Crandall-Liggett scheme u^{n+1} = (I + dt A)^{-1} u^n
  of the paper's existence proof: first order in dt, and, since phi is convex,
  JSD(u^{n+1}) <= JSD(u^n) for every dt;
* Newton's method with the exact Jacobian (m' by autograd) and sparse LU solves
  (scipy.sparse); a step whose Newton iteration fails is retried with half the dt, and
  a clear :class:`NewtonConvergenceError` is raised when that does not help.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from scipy.special import xlogy

from ._errors import GanflowError, NewtonConvergenceError
from .divergences import Divergence, get_divergence
from .grid import Grid
from .targets import GaussianMixture, load_target

__all__ = ["FokkerPlanckSolution", "solve_fokker_planck", "jsd_on_grid", "l1_on_grid"]

# The init must put at least this much of its mass inside the box to be "a density on
# the box"; the target, whose tails set the equilibrium, at least _TARGET_MIN_MASS.
_INIT_MIN_MASS = 0.999
_TARGET_MIN_MASS = 1 - 1e-6


def jsd_on_grid(u: np.ndarray, rho: np.ndarray, cell_volume: float) -> float:
    """JSD(u, rho) = 1/2 sum [u ln(2u/(u+rho)) + rho ln(2rho/(u+rho))] h^d.

    The grid version of J in docs/theory.md section 1.
    """
    s = u + rho
    with np.errstate(divide="ignore", invalid="ignore"):
        val = xlogy(u, 2 * u / np.where(s > 0, s, 1)) + xlogy(rho, 2 * rho / np.where(s > 0, s, 1))
    return float(0.5 * val.sum() * cell_volume)


def l1_on_grid(u: np.ndarray, rho: np.ndarray, cell_volume: float) -> float:
    """||u - rho||_1 = 2 TV on the grid."""
    return float(np.abs(u - rho).sum() * cell_volume)


@dataclass
class FokkerPlanckSolution:
    r"""Result of :func:`solve_fokker_planck`.

    Per accepted step (arrays of length n_steps + 1, index 0 is t = 0): ``times``,
    ``dts`` (0 at t = 0), ``mass`` (sum u h^d), ``min_u``, ``max_ratio`` (max u/rho_d),
    ``jsd`` (JSD(u, rho_d) on the grid), ``l1`` (||u - rho_d||_1), ``energy`` (the flow's
    own divergence int rho_d phi(u/rho_d), NaN if the divergence has no phi),
    ``newton_iterations`` (0 at t = 0).
    Snapshots: ``snapshot_times`` (k,), ``snapshots`` (k, *grid.shape).
    """

    grid: Grid
    divergence: str
    target: str
    init: str
    rho_d: np.ndarray
    times: np.ndarray
    dts: np.ndarray
    mass: np.ndarray
    min_u: np.ndarray
    max_ratio: np.ndarray
    jsd: np.ndarray
    l1: np.ndarray
    energy: np.ndarray
    newton_iterations: np.ndarray
    snapshot_times: np.ndarray
    snapshots: np.ndarray
    rejected_steps: int = 0
    extras: dict = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return len(self.times) - 1

    @property
    def mass_error(self) -> float:
        """Largest relative deviation of the mass from its initial value."""
        return float(np.abs(self.mass / self.mass[0] - 1).max())

    def u(self, t: float) -> np.ndarray:
        """The saved density at time ``t`` (one of ``snapshot_times``), shape grid.shape."""
        k = int(np.argmin(np.abs(self.snapshot_times - t)))
        if abs(self.snapshot_times[k] - t) > 1e-9 * max(1.0, abs(t)):
            raise GanflowError(
                f"no snapshot at t={t!r}; saved times are {self.snapshot_times.tolist()} "
                "(pass save_at= to solve_fokker_planck)"
            )
        return self.snapshots[k]

    def to_dict(self, *, with_snapshots: bool = False) -> dict:
        out = {
            "divergence": self.divergence,
            "target": self.target,
            "init": self.init,
            "dim": self.grid.dim,
            "box": self.grid.half_width,
            "cells": self.grid.cells,
            "times": self.times.tolist(),
            "dt": self.dts.tolist(),
            "jsd": self.jsd.tolist(),
            "l1": self.l1.tolist(),
            "mass": self.mass.tolist(),
            "min_u": self.min_u.tolist(),
            "max_ratio": self.max_ratio.tolist(),
            "energy": [None if math.isnan(e) else e for e in self.energy.tolist()],
            "newton_iterations": self.newton_iterations.tolist(),
            "rejected_steps": self.rejected_steps,
            "mass_error": self.mass_error,
            "snapshot_times": self.snapshot_times.tolist(),
        }
        if with_snapshots:
            out["snapshots"] = self.snapshots.tolist()
            out["centres"] = self.grid.centres.tolist()
        return out


class _ImplicitOperator:
    """Residual and Jacobian of one backward-Euler step, vectorised over faces."""

    def __init__(
        self,
        grid: Grid,
        log_rho_cells: np.ndarray,
        log_rho_faces: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        divergence: Divergence,
    ) -> None:
        self.grid = grid
        self.left, self.right = left, right
        self.inv_rho = np.exp(-log_rho_cells)
        h = grid.h
        # rho_f / rho_cell computed in log space: bounded by exp(h |grad ln rho| / 2).
        self.ratio_left = np.exp(log_rho_faces - log_rho_cells[left]) / h
        self.ratio_right = np.exp(log_rho_faces - log_rho_cells[right]) / h
        self.divergence = divergence
        n = grid.size
        self.rows = np.concatenate([left, left, right, right, np.arange(n)])
        self.cols = np.concatenate([left, right, left, right, np.arange(n)])
        self.n = n

    def _face_terms(self, u: np.ndarray):
        """m and m' at the face mean of v, and the jump rho_f (v_r - v_l) / h."""
        v = u * self.inv_rho
        v_face = 0.5 * (v[self.left] + v[self.right])
        m, dm = self.divergence.mobility_and_derivative(torch.from_numpy(v_face))
        # rho_f (v_r - v_l) / h, written with bounded ratios to avoid 0 * inf in far tails
        jump = self.ratio_right * u[self.right] - self.ratio_left * u[self.left]
        return m.numpy(), dm.numpy(), jump

    def _divergence_of_flux(self, m: np.ndarray, jump: np.ndarray) -> np.ndarray:
        g = m * jump / self.grid.h  # G / h with G = rho_f m (v_r - v_l) / h
        return np.bincount(self.left, g, self.n) - np.bincount(self.right, g, self.n)

    def residual_and_jacobian(self, u: np.ndarray, u_old: np.ndarray, dt: float):
        m, dm, jump = self._face_terms(u)
        residual = u - u_old - dt * self._divergence_of_flux(m, jump)
        # dG/du_r and dG/du_l: the m' term uses rho_f (v_r - v_l) / (2 rho_cell).
        with np.errstate(invalid="ignore", over="ignore"):
            half_dm_jump = 0.5 * dm * jump
            g_r = self.ratio_right * m + half_dm_jump * self.inv_rho[self.right]
            g_l = -self.ratio_left * m + half_dm_jump * self.inv_rho[self.left]
        g_r = np.nan_to_num(g_r, nan=0.0)
        g_l = np.nan_to_num(g_l, nan=0.0)
        c = dt / self.grid.h
        data = np.concatenate([-c * g_l, -c * g_r, c * g_l, c * g_r, np.ones(self.n)])
        jac = sp.csc_matrix((data, (self.rows, self.cols)), shape=(self.n, self.n))
        return residual, jac


def _diagnostics(u, rho, grid: Grid, divergence: Divergence):
    vol = grid.cell_volume
    if divergence.phi is not None:
        energy = float((rho * divergence.phi(torch.from_numpy(u / rho)).numpy()).sum() * vol)
    else:
        energy = math.nan
    return (
        float(u.sum() * vol),
        float(u.min()),
        float((u / rho).max()),
        jsd_on_grid(u, rho, vol),
        l1_on_grid(u, rho, vol),
        energy,
    )


# Peak resident memory per grid cell of a solve (the sparse Jacobian, its LU factors
# with their fill-in, face arrays, snapshots), by dimension; upper bounds rounded up
# from measured solves (docs/history.md).
_BYTES_PER_CELL = {1: 600, 2: 2400}


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (else physical memory; None if unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**40:.3g} TiB" if n_bytes >= 2**40 else f"{n_bytes / 2**30:.3g} GiB"


def check_memory(dim: int, cells: int) -> None:
    """Refuse, before allocating anything, a grid whose solve would not fit in memory."""
    if dim not in _BYTES_PER_CELL or int(cells) != cells or cells < 1:
        return  # Grid's own checks name these
    need = _BYTES_PER_CELL[dim] * float(cells) ** dim
    avail = _available_memory()
    if avail is not None and need > avail:
        largest = int((avail / _BYTES_PER_CELL[dim]) ** (1 / dim))
        raise GanflowError(
            f"--cells {cells} in {dim}-D means {cells}^{dim} = {float(cells) ** dim:.3g} "
            f"cells, about {_gib(need)} of memory (sparse Jacobian and its LU factors); "
            f"only {_gib(avail)} is available: use --cells {largest} or fewer"
        )


def _positive(name: str, value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise GanflowError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(x) and x > 0):
        raise GanflowError(f"{name} must be a positive number, got {value!r}")
    return x


def solve_fokker_planck(
    target: GaussianMixture | str,
    init: GaussianMixture | str | np.ndarray,
    *,
    divergence: Divergence | str = "jsd",
    box: float | None = None,
    cells: int = 400,
    t_end: float = 4.0,
    dt: float = 0.01,
    dt_max: float | None = None,
    growth: float = 1.2,
    save_at=None,
    newton_tol: float = 1e-12,
    max_newton: int = 30,
    max_halvings: int = 12,
    progress: bool = False,
) -> FokkerPlanckSolution:
    r"""Solve du/dt = div(rho_d m(u/rho_d) grad(u/rho_d)), u(0) = rho_0 (eq. (25) for JSD).

    Args:
        target: rho_d: a mixture or a spec for :func:`ganflow.load_target`; d = 1 or 2.
        init: rho_0: a mixture/spec, or cell values of shape ``(cells,)*d``.
        divergence: the flow (``"jsd"`` is the paper's, ``"kl"`` the linear one, ...).
        box: half-width L of [-L, L]^d; default: the target's and init's means +- 6 std.
        cells: cells per dimension.
        t_end: final time (flow time, the same unit as eps x iterations in Algorithm 1).
        dt: the (initial) time step.
        dt_max: if given and > dt, dt grows by ``growth`` after every easy step (Newton
            in <= 4 iterations) up to ``dt_max``; backward Euler keeps every property
            above for any dt, so this only trades accuracy for speed at late times.
        save_at: times at which to keep u (t = 0 and t_end are always kept); steps
            are shortened to land on them exactly.
        newton_tol: Newton stops when sum |residual| h^d (a mass) is below this.
        progress: show a progress bar with the current JSD.

    Returns:
        :class:`FokkerPlanckSolution` with the per-step diagnostics and snapshots.

    Raises:
        GanflowError: bad input (message names the value).
        NewtonConvergenceError: a step failed even after ``max_halvings`` dt halvings.
    """
    div = get_divergence(divergence)
    rho_mix = load_target(target)
    cells = int(cells) if isinstance(cells, (int, np.integer)) else cells
    t_end = _positive("--t-end", t_end)
    dt = _positive("--dt", dt)
    dt_max = dt if dt_max is None else _positive("--dt-max", dt_max)
    growth = _positive("growth", growth)
    if isinstance(init, np.ndarray):
        init_mix, init_name = None, "array"
    else:
        init_mix = load_target(init)
        init_name = init_mix.name
    if box is None:
        box = max(rho_mix.extent(), init_mix.extent() if init_mix is not None else 0.0)
    check_memory(rho_mix.dim, cells)
    grid = Grid(rho_mix.dim, _positive("--box", box), cells)
    grid.check_target(rho_mix, "target", _TARGET_MIN_MASS)

    log_rho, _ = grid.log_density(rho_mix)
    left, right, mids = grid.faces()
    log_rho_faces, _ = grid.log_density(rho_mix, mids)
    rho = np.exp(log_rho)

    if init_mix is not None:
        grid.check_target(init_mix, "init", _INIT_MIN_MASS)
        u = grid.density(init_mix)
    else:
        u = grid.as_density(init)

    op = _ImplicitOperator(grid, log_rho, log_rho_faces, left, right, div)
    save_times = sorted({float(s) for s in (save_at if save_at is not None else [])} | {t_end})
    for s in save_times:
        if not (0 <= s <= t_end):
            raise GanflowError(f"save_at times must lie in [0, t_end={t_end}], got {s!r}")

    times, dts, iters = [0.0], [0.0], [0]
    diag = [_diagnostics(u, rho, grid, div)]
    snap_t, snaps = [0.0], [u.reshape(grid.shape).copy()]
    t, rejected = 0.0, 0
    next_save = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=t_end, desc=f"pde {div.name}", unit="t", leave=False)
    # tolerance for "landed on a save time"; steps shorter than this are merged
    t_eps = 1e-12 * max(1.0, t_end)
    while t < t_end - t_eps:
        while next_save < len(save_times) and save_times[next_save] <= t + t_eps:
            next_save += 1
        step = min(dt, save_times[next_save] - t)
        u_new, n_iter, halvings = None, 0, 0
        while u_new is None:
            u_new, n_iter = _newton(op, u, step, newton_tol, max_newton)
            if u_new is None:
                halvings += 1
                rejected += 1
                if halvings > max_halvings:
                    raise NewtonConvergenceError(
                        f"Newton did not converge at t={t:.6g} even with dt={step:.3g} "
                        f"({max_halvings} halvings, tolerance {newton_tol:g}); "
                        "try more cells, a smaller --dt, or a larger newton_tol"
                    )
                step *= 0.5
                dt = step
        t += step
        if save_times[next_save] - t <= t_eps:
            t = save_times[next_save]
        u = u_new
        times.append(t)
        dts.append(step)
        iters.append(n_iter)
        diag.append(_diagnostics(u, rho, grid, div))
        if any(abs(t - s) <= t_eps for s in save_times):
            snap_t.append(t)
            snaps.append(u.reshape(grid.shape).copy())
        if halvings == 0 and n_iter <= 4 and step >= dt * (1 - 1e-12):
            dt = min(dt * growth, dt_max)
        if bar is not None:
            bar.n = min(t, t_end)
            bar.set_postfix(jsd=f"{diag[-1][3]:.3e}", dt=f"{step:.2g}", refresh=False)
            bar.refresh()
    if bar is not None:
        bar.close()

    d = np.array(diag)
    return FokkerPlanckSolution(
        grid=grid,
        divergence=div.name,
        target=rho_mix.name,
        init=init_name,
        rho_d=rho.reshape(grid.shape),
        times=np.array(times),
        dts=np.array(dts),
        mass=d[:, 0],
        min_u=d[:, 1],
        max_ratio=d[:, 2],
        jsd=d[:, 3],
        l1=d[:, 4],
        energy=d[:, 5],
        newton_iterations=np.array(iters),
        snapshot_times=np.array(snap_t),
        snapshots=np.stack(snaps),
        rejected_steps=rejected,
    )


def _newton(op: _ImplicitOperator, u_old: np.ndarray, dt: float, tol: float, max_iter: int):
    """Solve u - u_old - dt div G(u) = 0; return (u, iterations) or (None, iterations)."""
    u = u_old.copy()
    vol = op.grid.cell_volume
    for it in range(1, max_iter + 1):
        residual, jac = op.residual_and_jacobian(u, u_old, dt)
        if not np.isfinite(residual).all():
            return None, it
        if np.abs(residual).sum() * vol < tol and it > 1:
            return u, it - 1
        try:
            # the Jacobian is structurally symmetric (a 2d+1-point stencil), so minimum
            # degree on A^T + A, an ordering for symmetric patterns, suits it better than
            # the default COLAMD (timing: docs/history.md)
            du = spla.spsolve(jac, -residual, permc_spec="MMD_AT_PLUS_A")
        except RuntimeError:  # singular factor
            return None, it
        if not np.isfinite(du).all():
            return None, it
        # The exact implicit solution is non-negative (M-matrix); an intermediate Newton
        # iterate may undershoot in the far tails, where clamping is the safe choice.
        u = np.maximum(u + du, 0.0)
    residual, _ = op.residual_and_jacobian(u, u_old, dt)
    if np.isfinite(residual).all() and np.abs(residual).sum() * vol < tol:
        return u, max_iter
    return None, max_iter
