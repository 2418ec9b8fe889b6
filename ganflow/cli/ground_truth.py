"""Ground-truth commands: ``ganflow pde`` (the Fokker-Planck equation (25) on a grid)
and ``ganflow particles`` (ODE (2) with a KDE drift, against the PDE)."""

from __future__ import annotations

import math
import sys
import warnings
from typing import Annotated

import numpy as np
import typer

from .._errors import GanflowError
from ._common import (
    BoxOpt,
    CellsOpt,
    DivOpt,
    InitOpt,
    JsonOpt,
    PlotOpt,
    TargetOpt,
    check_device,
    check_outputs,
    exit_on_error,
    fail,
    fmt,
    write_json,
)


def _parse_times(text: str | None, t_end: float) -> list[float]:
    if not text:
        return []
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GanflowError(f"--save-at must be comma-separated numbers, got {text!r}") from None
    bad = [v for v in vals if not 0 <= v <= t_end]
    if bad:
        raise GanflowError(f"--save-at times must lie in [0, {t_end}], got {bad}")
    return vals


def _default_save_times(t_end: float, k: int = 4) -> list[float]:
    # geometric spacing shows both the fast early and the slow late dynamics
    return sorted({float(f"{t_end / 4**j:.6g}") for j in range(k)})


def pde(
    target: TargetOpt = "bimodal",
    init: InitOpt = "normal:0:0.4",
    divergence: DivOpt = "jsd",
    box: BoxOpt = None,
    cells: CellsOpt = 800,
    t_end: Annotated[float, typer.Option("--t-end", help="final flow time.")] = 16.0,
    dt: Annotated[float, typer.Option("--dt", help="initial time step.")] = 0.01,
    dt_max: Annotated[
        float | None,
        typer.Option(
            "--dt-max", help="largest time step (dt grows x1.2 after easy steps); default t_end/40."
        ),
    ] = None,
    save_at: Annotated[
        str | None,
        typer.Option(
            "--save-at", help="comma-separated snapshot times (default: t_end/64, /16, /4, t_end)."
        ),
    ] = None,
    json_out: JsonOpt = None,
    plot: PlotOpt = None,
    snapshots: Annotated[bool, typer.Option(help="include the saved densities in --json.")] = False,
) -> None:
    """Solve the Fokker-Planck equation (25) of the chosen flow on a grid (1-D or 2-D)."""
    from ..pde import solve_fokker_planck

    with exit_on_error():
        check_outputs(json_out, plot)
        times = _parse_times(save_at, t_end) or _default_save_times(t_end)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sol = solve_fokker_planck(
                target,
                init,
                divergence=divergence,
                box=box,
                cells=cells,
                t_end=t_end,
                dt=dt,
                dt_max=dt_max if dt_max is not None else max(dt, t_end / 40),
                save_at=times,
                progress=sys.stderr.isatty(),
            )
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
    g = sol.grid
    typer.echo(
        f"{sol.divergence} flow, target {sol.target}, init {sol.init}: dim {g.dim}, box "
        f"[-{g.half_width:g}, {g.half_width:g}], {g.cells} cells/dim, {sol.n_steps} steps "
        f"({sol.rejected_steps} rejected), mass error {sol.mass_error:.1e}"
    )
    typer.echo(f"{'t':>10} {'JSD':>10} {'L1':>10} {'max u/rho':>10} {'min u':>10}")
    for t in sol.snapshot_times:
        k = int(np.argmin(np.abs(sol.times - t)))
        typer.echo(
            f"{t:>10.4g} {fmt(sol.jsd[k]):>10} {fmt(sol.l1[k]):>10} "
            f"{sol.max_ratio[k]:>10.4g} {fmt(sol.min_u[k]):>10}"
        )
    if json_out is not None:
        write_json(json_out, sol.to_dict(with_snapshots=snapshots))
        typer.echo(f"wrote {json_out}")
    if plot is not None:
        from ..plots import plot_solution

        plot_solution(sol, plot)
        typer.echo(f"wrote {plot}")


def _particles_json(part, sol, gap, gap_smooth, **run) -> dict:
    """What ``ganflow particles --json`` writes: the run's options, the gaps and moments."""
    return {
        "divergence": part.divergence,
        "target": part.target,
        "n": int(part.positions.shape[1]),
        **run,
        "seconds": part.seconds,
        "times": part.times.tolist(),
        "l1": None if gap is None else gap.tolist(),
        "l1_smoothed_pde": None if gap_smooth is None else gap_smooth.tolist(),
        "mean": part.means().tolist(),
        "var": part.variances().tolist(),
        "bandwidth": part.bandwidths.tolist(),
        "pde": None
        if sol is None
        else {k: v for k, v in sol.to_dict().items() if k in ("times", "jsd", "l1", "mass")},
    }


def particles(
    target: TargetOpt = "bimodal",
    init: InitOpt = "normal:0:0.4",
    divergence: DivOpt = "jsd",
    n: Annotated[float, typer.Option(
        "--n", help="number of particles (an integer; 1e6 notation accepted).")] = 2000,
    t_end: Annotated[float, typer.Option("--t-end", help="final flow time.")] = 2.0,
    dt: Annotated[
        float, typer.Option("--dt", help="time step (explicit: keep it <~ b^2).")
    ] = 0.005,
    method: Annotated[str, typer.Option("--method", help="euler or heun.")] = "heun",
    bandwidth: Annotated[
        str, typer.Option("--bandwidth", help="KDE bandwidth: 'silverman' or a number.")
    ] = "silverman",
    save_at: Annotated[
        str | None,
        typer.Option(
            "--save-at", help="comma-separated report times (default: t_end/8, /4, /2, t_end)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the initial draw.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")] = "cpu",
    dtype: Annotated[str, typer.Option(
        "--dtype", help="float64 (reference) or float32 (faster KDE sums).")] = "float64",
    kde: Annotated[str, typer.Option(
        "--kde", help="KDE drift: binned (grid + FFT, O(N), default in 1-D/2-D) or direct "
        "(all N^2 pairs; the reference, and the only choice above 2-D).")] = "auto",
    box: BoxOpt = None,
    cells: CellsOpt = 400,
    no_pde: Annotated[bool, typer.Option("--no-pde", help="skip the PDE reference.")] = False,
    json_out: JsonOpt = None,
    plot: PlotOpt = None,
) -> None:
    """Simulate ODE (2) with N particles (KDE drift) and compare with the PDE solution."""
    from ..kde import resolve_kde
    from ..particles import compare_with_pde, simulate_particles

    try:
        bw: float | str = bandwidth if bandwidth == "silverman" else float(bandwidth)
    except ValueError:
        fail(GanflowError(f"--bandwidth must be 'silverman' or a number, got {bandwidth!r}"))
    import torch

    if dtype not in ("float32", "float64"):
        fail(GanflowError(f"--dtype must be float32 or float64, got {dtype!r}"))
    with exit_on_error():
        check_device(device)
        check_outputs(json_out, plot)
        times = _parse_times(save_at, t_end) or [t_end / 8, t_end / 4, t_end / 2, t_end]
        part = simulate_particles(
            target,
            init,
            divergence=divergence,
            n=int(n) if math.isfinite(n) and n == int(n) else n,
            t_end=t_end,
            dt=dt,
            method=method,
            bandwidth=bw,
            save_at=times,
            seed=seed,
            device=device,
            dtype=getattr(torch, dtype),
            progress=sys.stderr.isatty(),
            kde=kde,
        )
        dim = part.positions.shape[2]
        cmp = None if no_pde or dim > 2 else compare_with_pde(
            part, target, init, bandwidth=bw, box=box, cells=cells, dt=min(dt * 4, 0.01))
    sol = cmp.pde if cmp is not None else None
    gap = cmp.l1 if cmp is not None else None
    gap_smooth = cmp.l1_smoothed if cmp is not None else None
    typer.echo(
        f"{part.divergence} flow, target {part.target}: {part.positions.shape[1]} particles, "
        f"{part.n_steps} {method} steps in {part.seconds:.1f} s"
    )
    # "L1 to PDE*K": the PDE smoothed with the same kernel, so the KDE's own smoothing
    # bias cancels and only the particle dynamics' error and sampling noise remain.
    typer.echo(
        f"{'t':>8} {'bandwidth':>10} {'L1 to PDE':>10} {'L1 to PDE*K':>12} {'PDE JSD':>10}  mean"
    )
    for k, t in enumerate(part.times):
        pj = fmt(sol.jsd[int(np.argmin(np.abs(sol.times - t)))]) if sol is not None else "-"
        g = fmt(gap[k]) if gap is not None else "-"
        gs = fmt(gap_smooth[k]) if gap_smooth is not None else "-"
        mean = np.array2string(part.positions[k].mean(0), precision=3)
        typer.echo(f"{t:>8.4g} {part.bandwidths[k]:>10.3g} {g:>10} {gs:>12} {pj:>10}  {mean}")
    if json_out is not None:
        out = _particles_json(part, sol, gap, gap_smooth, method=method,
                              kde=resolve_kde(dim, kde), dt=dt, seed=seed)
        write_json(json_out, out)
        typer.echo(f"wrote {json_out}")
    if plot is not None and sol is not None:
        from ..plots import plot_solution

        plot_solution(sol, plot, particles=part, particle_gap=(part.times, gap))
        typer.echo(f"wrote {plot}")


