r"""Figures: density snapshots (1-D curves, 2-D heat maps with particles) and JSD/L1 curves.

Every function draws with matplotlib's Agg backend (no screen needed) and, given
``path``, writes the PNG atomically (temp file + rename) and closes the figure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .particles import ParticleSolution  # noqa: E402
from .pde import FokkerPlanckSolution  # noqa: E402

__all__ = ["plot_solution", "save_figure"]


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix or ".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        plt.close(fig)
    return path


def _curves(ax, sol: FokkerPlanckSolution, particle_gap: tuple[np.ndarray, np.ndarray] | None):
    t = sol.times[1:]
    ax.loglog(t, np.maximum(sol.jsd[1:], 1e-300), label="JSD(u(t), rho_d)")
    ax.loglog(t, np.maximum(sol.l1[1:], 1e-300), label="||u(t) - rho_d||_1")
    if particle_gap is not None:
        pt, gap = particle_gap
        keep = pt > 0
        ax.loglog(pt[keep], gap[keep], "o-", label="||particles - u(t)||_1")
    ax.set_xlabel("flow time t")
    ax.set_title(f"{sol.divergence} flow: convergence")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plot_solution(
    sol: FokkerPlanckSolution,
    path: str | Path | None = None,
    *,
    particles: ParticleSolution | None = None,
    particle_gap: tuple[np.ndarray, np.ndarray] | None = None,
    max_snapshots: int = 4,
):
    """Snapshots of u(t) against rho_d and the JSD(t)/L1(t) curves on log axes.

    1-D: curves of u at the saved times; 2-D: heat maps with up to 2000 particles on top
    when ``particles`` has a position set at the same time.
    """
    idx = np.unique(np.linspace(0, len(sol.snapshot_times) - 1, max_snapshots).round().astype(int))
    grid = sol.grid
    if grid.dim == 1:
        fig, (ax_u, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
        x = grid.centres
        ax_u.plot(x, sol.rho_d, "k--", lw=1.5, label="rho_d")
        for k in idx:
            t = sol.snapshot_times[k]
            (line,) = ax_u.plot(x, sol.snapshots[k], label=f"u(t={t:g})")
            if particles is not None and np.any(np.isclose(particles.times, t)):
                pos = particles.at(t)[:, 0]
                ax_u.hist(
                    pos, bins=80, density=True, histtype="step", color=line.get_color(), alpha=0.6
                )
        ax_u.set_xlabel("y")
        ax_u.set_title(f"{sol.divergence} flow from {sol.init} to {sol.target}")
        ax_u.legend(fontsize=8)
        _curves(ax_c, sol, particle_gap)
    else:
        n = len(idx)
        fig, axes = plt.subplots(1, n + 2, figsize=(3.3 * (n + 2), 3.4))
        ext = [-grid.half_width, grid.half_width, -grid.half_width, grid.half_width]
        panels = [(sol.snapshot_times[k], sol.snapshots[k]) for k in idx] + [(None, sol.rho_d)]
        for ax, (t, u) in zip(axes[:-1], panels, strict=True):
            # each panel on its own colour scale: a concentrated start would otherwise
            # wash out every later density
            ax.imshow(u.T, origin="lower", extent=ext, cmap="magma", vmin=0, vmax=float(u.max()))
            ax.set_title("rho_d" if t is None else f"u(t={t:g})", fontsize=9)
            if t is not None and particles is not None and np.any(np.isclose(particles.times, t)):
                pos = particles.at(t)[:1000]
                ax.scatter(pos[:, 0], pos[:, 1], s=0.5, c="c", alpha=0.6, linewidths=0)
            ax.set_xticks([])
            ax.set_yticks([])
        _curves(axes[-1], sol, particle_gap)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
