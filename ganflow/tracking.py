r"""Does a trained generator follow the gradient flow? (``ganflow track``)

Algorithm 1 claims to simulate ODE (2): after ``k`` iterations the generator's law
should be the Fokker-Planck solution u(t) of eq. (25) at flow time t = eps x k (the
faithful mode records the flow time it actually advanced). :func:`track_run` measures
this directly for a run on a 1-D or 2-D mixture target:

1. the initial density rho_0 is the run's ``init`` law when it is a Gaussian mixture
   (``--init normal:MEAN:STD`` or a mixture): the exact start that the generator was
   fitted to, so the gap at t = 0 measures that fit; otherwise the law of the run's
   generator at iteration 0, estimated by a Gaussian KDE of ``n`` samples on the grid
   (bandwidth by likelihood cross-validation, :func:`ganflow.kde.cv_bandwidth`), and
   the gap at t = 0 is 0 by construction;
2. the PDE of the run's divergence is solved from that rho_0 (:func:`solve_fokker_planck`);
3. at every saved generator snapshot (the trainer keeps one per evaluation) the
   generator's KDE (n samples, cross-validated bandwidth b_t) is compared with u(t):
   the "flow-tracking error" (L1 and JSD). It is exactly 0 at t = 0 (u(0) is that KDE).
   Its noise floor at each t is the same distance for n samples drawn from u(t) itself,
   smoothed with their own cross-validated bandwidth (``l1_floor``): a gap near the
   floor means "on the flow, as far as n samples can tell"; ``on_flow`` is the verdict
   L1 gap <= 2 x floor.

Both the gap and the floor are random: with one draw of n samples each, their ratio
scatters by tens of percent around its mean. ``draws`` R > 1 averages each over R
independent draws (fresh latents, or fresh subsamples of a particle snapshot, and fresh
exact samples of u(t)), so that the verdict compares the expected gap with the expected
floor; the first draw is the single-draw result, and every draw is kept
(``l1_gap_draws``, ``l1_floor_draws``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ._errors import GanflowError
from .grid import Grid
from .kde import cv_bandwidth
from .particles import particles_on_grid
from .pde import FokkerPlanckSolution, jsd_on_grid, l1_on_grid, solve_fokker_planck
from .targets import GaussianMixture, load_target

__all__ = ["ON_FLOW_FACTOR", "TrackingResult", "track_run"]

# "on the flow": the L1 gap to u(t) is at most this many times the gap that n exact
# samples of u(t) show (two samples of one law differ by about sqrt(2) x one's floor)
ON_FLOW_FACTOR = 2.0


@dataclass
class TrackingResult:
    """Per snapshot (arrays of equal length): ``iterations``, ``times`` (flow time),
    ``l1_gap`` / ``jsd_gap`` (generator's KDE vs u(t)), ``l1_floor`` (the same for n
    samples of u(t)), ``gen_jsd``
    (generator's KDE vs rho_d), ``pde_jsd`` (u(t) vs rho_d, the flow's own progress),
    ``floor_jsd`` (the KDE of n exact samples of u(t) vs rho_d: what ``gen_jsd`` would be
    on the flow, estimator bias and noise included),
    ``bandwidths``, ``on_flow`` (L1 gap <= ``ON_FLOW_FACTOR`` x floor); ``start`` says
    where u(0) came from; plus the PDE solution and the generator samples (for plots).
    The gaps, floors and JSDs are means over ``draws`` independent draws;
    ``l1_gap_draws`` and ``l1_floor_draws`` (draws, snapshots) hold each draw's."""

    run_dir: Path
    divergence: str
    iterations: np.ndarray
    times: np.ndarray
    l1_gap: np.ndarray
    jsd_gap: np.ndarray
    l1_floor: np.ndarray
    gen_jsd: np.ndarray
    pde_jsd: np.ndarray
    floor_jsd: np.ndarray
    bandwidths: np.ndarray
    n_samples: int
    pde: FokkerPlanckSolution
    samples: list[np.ndarray]
    start: str = "kde"
    l1_gap_draws: np.ndarray | None = None
    l1_floor_draws: np.ndarray | None = None

    @property
    def draws(self) -> int:
        return 1 if self.l1_gap_draws is None else len(self.l1_gap_draws)

    @property
    def on_flow(self) -> np.ndarray:
        return self.l1_gap <= ON_FLOW_FACTOR * self.l1_floor

    def to_dict(self) -> dict:
        return {
            "run": str(self.run_dir),
            "divergence": self.divergence,
            "start": self.start,
            "on_flow": self.on_flow.tolist(),
            "n_samples": self.n_samples,
            "draws": self.draws,
            "cells": self.pde.grid.cells,
            "box": self.pde.grid.half_width,
            "iterations": self.iterations.tolist(),
            "times": self.times.tolist(),
            "l1_gap": self.l1_gap.tolist(),
            "jsd_gap": self.jsd_gap.tolist(),
            "l1_floor": self.l1_floor.tolist(),
            "gen_jsd": self.gen_jsd.tolist(),
            "pde_jsd": self.pde_jsd.tolist(),
            "floor_jsd": self.floor_jsd.tolist(),
            "bandwidths": self.bandwidths.tolist(),
            **({} if self.l1_gap_draws is None else {
                "l1_gap_draws": self.l1_gap_draws.tolist(),
                "l1_floor_draws": self.l1_floor_draws.tolist()}),
        }


def _snapshots(run_dir: Path) -> list[tuple[int, Path]]:
    # G-<it>: generator weights; P-<it>: particles (particle runs); C-<it>: flow-chain
    from .training.methods.base import SNAPSHOT_PREFIXES

    snaps = sorted((run_dir / "snapshots").glob(f"[{SNAPSHOT_PREFIXES}]-*.safetensors"))
    return [(int(p.stem.split("-")[1]), p) for p in snaps]


def _flow_times(run_dir: Path) -> dict[int, float]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise GanflowError(f"{str(run_dir)!r} has no metrics.jsonl: not a ganflow run folder")
    from .training import read_metrics  # the one reader: it skips a torn last line

    rows = read_metrics(run_dir)
    return {int(r["iteration"]): float(r["flow_time"]) for r in rows}


def _sample_grid_density(u: np.ndarray, grid: Grid, n: int, gen: torch.Generator):
    """n draws from a cell-wise constant density: a cell by its mass, then uniform in it."""
    probs = torch.from_numpy(np.maximum(u.reshape(-1), 0) * grid.cell_volume)
    cells = torch.multinomial(probs, n, replacement=True, generator=gen)
    centres = torch.from_numpy(grid.points())[cells]
    jitter = (torch.rand(n, grid.dim, generator=gen, dtype=torch.float64) - 0.5) * grid.h
    return centres + jitter


def track_run(
    run_dir: str | Path,
    *,
    n: int = 5000,
    cells: int | None = None,
    box: float | None = None,
    dt: float = 0.01,
    seed: int = 0,
    draws: int = 1,
    progress: bool = False,
) -> TrackingResult:
    r"""Compare a run's generator snapshots (or a ``particles`` run's particle snapshots)
    with the PDE solution u(t) at flow time t = eps x iterations (the gan baselines take
    the same t: Proposition 8).

    Args:
        run_dir: a run folder of ``ganflow train`` on a 1-D or 2-D mixture.
        n: samples per snapshot (the KDE's; noise falls like n^(-2/(d+4))); for a particle
            run at most the snapshot's particles (``n_samples`` of the result says).
        cells: grid cells per dimension (default: 2 per finest std/bandwidth, at most
            2000 in 1-D and 256 in 2-D).
        box: half-width of the grid (default: the target's extent and the samples').
        dt: the PDE's initial step (it grows up to the spacing of snapshot times / 4).
        seed: seed of the first draw's samples (later draws derive theirs from it).
        draws: independent draws of n samples (generator and floor) averaged per
            snapshot (module docstring); 1 is the single-draw estimate.
    """
    from .training import load_run

    run_dir = Path(run_dir)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise GanflowError(f"draws={draws!r}: expected a positive integer (the number of "
                           "independent sample draws averaged per snapshot)")
    if not (run_dir / "config.json").exists():
        raise GanflowError(f"{str(run_dir)!r} is not a run folder: no config.json in it")
    cfg = json.loads((run_dir / "config.json").read_text())
    run = load_run(run_dir)
    mixture = run.data.mixture
    if mixture is None or mixture.dim > 2:
        raise GanflowError(
            f"tracking needs a 1-D or 2-D Gaussian-mixture target (a known density); "
            f"data {cfg['data']!r} is {'sample-only' if mixture is None else f'{mixture.dim}-D'}"
        )
    snaps = _snapshots(run_dir)
    if not snaps or snaps[0][0] != 0:
        raise GanflowError(
            f"{str(run_dir)!r} has no snapshot at iteration 0 (snapshots/[GPC]-*.safetensors): "
            "re-train with this version of ganflow"
        )
    times_of = _flow_times(run_dir)
    snaps = [(it, p) for it, p in snaps if it in times_of]

    seeds = [_draw_seed(seed, r) for r in range(draws)]
    per_draw = _snapshot_samples(run, snaps, int(n), seeds)
    samples = per_draw[0]
    n = min(len(x) for x in samples)

    bws = [cv_bandwidth(x) for x in samples]
    d = mixture.dim
    start = _init_mixture(cfg.get("init", ""), d)
    if box is None:
        box = max(mixture.extent(), float(samples[0].abs().max()) + 6 * bws[0],
                  start.extent() if start is not None else 0.0)
    if cells is None:
        finest = min(mixture.length_scale, min(bws))
        cells = min(2000 if d == 1 else 256, max(64, math.ceil(2 * box / (finest / 2))))
    grid = Grid(d, float(box), int(cells))
    if start is not None:
        u0 = start.prob(torch.from_numpy(grid.points())).numpy()
        u0 = u0 / (u0.sum() * grid.cell_volume)  # the mass outside the box is negligible
    else:
        u0 = particles_on_grid(samples[0], grid, bws[0])
    times = np.array([times_of[it] for it, _ in snaps])
    t_end = float(times.max())
    if not t_end > 0:
        raise GanflowError("the run has not advanced any flow time yet: nothing to track")
    spacing = np.diff(np.unique(times)).min() if len(np.unique(times)) > 1 else t_end
    pde = solve_fokker_planck(
        mixture, u0.reshape(grid.shape), divergence=cfg["divergence"], box=grid.half_width,
        cells=grid.cells, t_end=t_end, dt=min(dt, t_end), dt_max=max(dt, spacing / 4),
        save_at=[t for t in times if t > 0], progress=progress,
    )
    each = [_gaps(pde, grid, times, xs, bws if r == 0 else [cv_bandwidth(x) for x in xs],
                  int(n), seeds[r]) for r, xs in enumerate(per_draw)]
    gaps = {k: np.mean([g[k] for g in each], axis=0) for k in each[0]}
    return TrackingResult(
        run_dir=run_dir, divergence=cfg["divergence"], iterations=np.array([s[0] for s in snaps]),
        times=times, **gaps, bandwidths=np.array(bws),
        n_samples=int(n), pde=pde, samples=[x.numpy() for x in samples],
        start="init law" if start is not None else "KDE of the iteration-0 samples",
        l1_gap_draws=np.array([g["l1_gap"] for g in each]),
        l1_floor_draws=np.array([g["l1_floor"] for g in each]),
    )


def _draw_seed(seed: int, draw: int) -> int:
    # draw 0 keeps ``seed`` itself: its numbers are the single-draw estimate's
    return seed + 7919 * draw


def _snapshot_samples(run, snaps: list[tuple[int, Path]], n: int, seeds: list[int]) -> list:
    """Per draw (one seed each), n samples (float64) of each snapshot: the generator saved
    there, or its particles (the first n for draw 0, a random subsample of n for a later
    draw). Each snapshot is loaded once for all draws."""
    per_draw: list[list] = [[] for _ in seeds]
    for _, path in snaps:
        state = load_file(str(path))
        sampler = (None if path.name.startswith("P-")
                   else run.session.method.snapshot_sampler(state))
        for r, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(seed)
            if path.name.startswith("P-"):
                # the snapshot's particles are exchangeable: its first n are a uniform subsample
                x = state["particles"].double()
                if r > 0:
                    x = x[torch.randperm(len(x), generator=gen)]
                x = x[:n]
            else:
                x = sampler(n, gen).double().cpu()
            if not torch.isfinite(x).all():
                raise GanflowError(f"snapshot {path.name} holds or produces NaN/Inf samples")
            per_draw[r].append(x)
    return per_draw


def _gaps(pde, grid: Grid, times, samples, bws, n: int, seed: int) -> dict[str, np.ndarray]:
    """Per snapshot time: the L1 and JSD gaps of the samples' KDE to u(t), the L1 noise
    floor (n exact samples of u(t)), and the JSDs to rho_d of the KDE, of u(t) and of
    the floor's reference."""
    vol, rho = grid.cell_volume, pde.rho_d
    out: dict[str, list] = {k: [] for k in ("l1_gap", "jsd_gap", "l1_floor", "gen_jsd",
                                            "pde_jsd", "floor_jsd")}
    gen = torch.Generator().manual_seed(seed + 7)
    for t, x, b in zip(times, samples, bws, strict=True):
        g = particles_on_grid(x, grid, b)
        u = pde.u(float(t))
        out["l1_gap"].append(l1_on_grid(g, u, vol))
        out["jsd_gap"].append(jsd_on_grid(g, u, vol))
        # the floor smooths u(t)'s own samples with their own cross-validated bandwidth:
        # the generator's b_t is tuned to the generator, which may look nothing like u(t)
        y = _sample_grid_density(u, grid, n, gen)
        ref = particles_on_grid(y, grid, cv_bandwidth(y))
        out["l1_floor"].append(l1_on_grid(ref, u, vol))
        out["floor_jsd"].append(jsd_on_grid(ref, rho, vol))
        out["gen_jsd"].append(jsd_on_grid(g, rho, vol))
        out["pde_jsd"].append(jsd_on_grid(u, rho, vol))
    return {k: np.array(v) for k, v in out.items()}


def _init_mixture(spec: str, dim: int) -> GaussianMixture | None:
    """The run's ``init`` law if it is a Gaussian mixture of the data's dimension."""
    if not spec:
        return None
    try:
        mix = load_target(spec)
    except GanflowError:  # a table or sample-only set: no density, use the KDE start
        return None
    return mix if mix.dim == dim else None


def plot_tracking(res: TrackingResult, path: str | Path) -> Path:
    """Tracking error and JSD curves against flow time, and generator-vs-PDE snapshots."""
    import matplotlib.pyplot as plt

    from .plots import save_figure

    grid = res.pde.grid
    k_show = np.unique(np.linspace(0, len(res.times) - 1, 3).round().astype(int))
    fig, axes = plt.subplots(1, len(k_show) + 1, figsize=(4.2 * (len(k_show) + 1), 3.8))
    ax = axes[0]
    t = np.maximum(res.times, 1e-12)
    ax.semilogy(t, np.maximum(res.l1_gap, 1e-16), "o-", label="L1(generator, u(t))")
    ax.semilogy(t, np.maximum(res.l1_floor, 1e-16), "o:", c="C0", alpha=0.5,
                label="L1 noise floor (n samples of u(t))")
    ax.semilogy(t, np.maximum(res.jsd_gap, 1e-16), "s-", label="JSD(generator, u(t))")
    ax.semilogy(t, np.maximum(res.pde_jsd, 1e-16), "k--", label="JSD(u(t), rho_d): the flow")
    ax.semilogy(t, np.maximum(res.gen_jsd, 1e-16), "x:", label="JSD(generator, rho_d)")
    ax.set_ylim(bottom=1e-5)  # the gap is exactly 0 at t = 0; keep the axis readable
    ax.set_xlabel("flow time t = eps x iterations")
    ax.set_title(f"flow tracking ({res.divergence})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ext = [-grid.half_width, grid.half_width]
    for ax, k in zip(axes[1:], k_show, strict=True):
        u = res.pde.u(float(res.times[k])) if res.times[k] > 0 else res.pde.snapshots[0]
        x = res.samples[k]
        if grid.dim == 1:
            ax.plot(grid.centres, u, "k-", lw=1.5, label="PDE u(t)")
            ax.plot(grid.centres, res.pde.rho_d, "k:", lw=1, label="rho_d")
            ax.hist(x[:, 0], bins=120, range=ext, density=True, alpha=0.5, label="generator")
            ax.legend(fontsize=7)
        else:
            ax.imshow(u.T, origin="lower", extent=ext + ext, cmap="magma", vmin=0)
            ax.scatter(x[:1500, 0], x[:1500, 1], s=0.5, c="c", alpha=0.6, linewidths=0)
            ax.set_xlim(ext)
            ax.set_ylim(ext)
        ax.set_title(f"iteration {res.iterations[k]}, t = {res.times[k]:.3g}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
