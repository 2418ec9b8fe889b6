r"""Do the KDE particles of ODE (2) converge to the Fokker-Planck solution as N grows?

Two studies on the 1-D targets, each flow (docs/theory.md section 7: ``jsd``, eq. (2)/(25),
and ``kl``) solved twice: by the Fokker-Planck equation (``ganflow.solve_fokker_planck``,
fine grid: the ground truth) and by N particles (``ganflow.simulate_particles``, Heun,
the drift from a Gaussian KDE of the particles at Silverman's bandwidth, evaluated
binned: linear binning + FFT).

1. L1 gap against N. Targets ``bimodal`` (start N(0, 0.4^2)) and ``barrier`` (start
   N(-1.5, 0.5^2), as in bench_flows.py), flow time t <= ``--gap-t-end``, N in
   ``--n``. The gap is ||KDE_b(particles at t) - u(t)||_1 on the PDE grid (b =
   Silverman's of the particles at t; ``raw``), and the same against u(t) * K_b
   (``smoothed``: the KDE's own O(b^2) smoothing bias removed, what is left is the
   particle dynamics' error plus sampling noise). The rate is the least-squares slope
   of ln gap against ln N. The PDE's own error is estimated by solving it again with
   twice the time step (the scheme is first order in dt).
2. Barrier crossing against N (``barrier``, t <= ``--cross-t-end``, N in
   ``--cross-n``): the mass on x > 0 over rho_d's mass there (no bandwidth in it), and
   the times it reaches 50 % and 90 % (bench_flows.py's "crossed"), for the PDE and
   the particles; the lags are the differences.

Time step of the explicit particle scheme: dt = min(``--dt-max``, ``--dt-factor`` b0^2),
b0 the Silverman bandwidth of the start (the smallest of the run: the cloud only
spreads). A hand check, not part of this script's output: Heun with dt = 0.02 and 0.01
gave the same crossed mass at t = 16 to 1e-3 at N = 10^4 (b0^2 = 0.007).

    python benchmarks/bench_particle_convergence.py \
        --json benchmarks/results/bench_particle_convergence.json \
        --plot benchmarks/results/particle-convergence.png
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, print_table  # noqa: E402
from bench_flows import CROSSED, START, first_time_below, save_times  # noqa: E402

import ganflow as gf  # noqa: E402
from ganflow._io import write_json_atomic  # noqa: E402
from ganflow.particles import l1_gap_to_pde  # noqa: E402

# an earlier crossing level, reached within the horizon by the slow JSD flow too
HALF = 0.5
# target: (start, box half-width, std of the start)
SETUPS = {"bimodal": ("normal:0:0.4", 4.5, 0.4), "barrier": (START, 5.0, 0.5)}


def particle_dt(n: int, std0: float, args) -> float:
    b0 = std0 * (4.0 / (3.0 * n)) ** 0.2  # Silverman in 1-D, for the start's std
    return min(args.dt_max, args.dt_factor * b0 * b0)


def gap_study(args) -> list[dict]:
    times = [args.gap_t_end / 4, args.gap_t_end / 2, args.gap_t_end]
    rows = []
    for target, (start, box, std0) in SETUPS.items():
        for flow in args.flows:
            kw = dict(divergence=flow, box=box, cells=args.cells, t_end=args.gap_t_end,
                      save_at=times)
            pde = gf.solve_fokker_planck(target, start, dt=args.pde_dt, **kw)
            pde2 = gf.solve_fokker_planck(target, start, dt=2 * args.pde_dt, **kw)
            vol = pde.grid.cell_volume
            pde_err = [float(np.abs(pde.u(t) - pde2.u(t)).sum() * vol) for t in times]
            for n in args.n:
                dt = particle_dt(n, std0, args)
                sol = gf.simulate_particles(target, start, divergence=flow, n=n,
                                            t_end=args.gap_t_end, dt=dt, method="heun",
                                            save_at=times, seed=args.seed, kde="binned")
                raw = l1_gap_to_pde(sol, pde, kde="binned")
                smooth = l1_gap_to_pde(sol, pde, smooth_pde=True, kde="binned")
                rows.append({
                    "target": target, "flow": flow, "n": n, "dt": dt, "steps": sol.n_steps,
                    "seconds": round(sol.seconds, 2), "times": sol.times[1:].tolist(),
                    "bandwidth": sol.bandwidths[1:].tolist(), "l1_raw": raw[1:].tolist(),
                    "l1_smoothed": smooth[1:].tolist(), "pde_dt_error": pde_err,
                })
                print(f"  {target} {flow} N={n}: dt={dt:.4g}, {sol.n_steps} steps, "
                      f"{sol.seconds:.1f} s, L1 raw {raw[-1]:.4g}, smoothed {smooth[-1]:.4g}",
                      flush=True)
    return rows


def fitted_rates(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["target"], r["flow"]) for r in rows}):
        sel = sorted((r for r in rows if (r["target"], r["flow"]) == key), key=lambda r: r["n"])
        ln_n = np.log([r["n"] for r in sel])
        rec = {"target": key[0], "flow": key[1]}
        for kind in ("l1_raw", "l1_smoothed"):
            gaps = np.array([r[kind][-1] for r in sel])
            rec[f"slope_{kind}"] = float(np.polyfit(ln_n, np.log(gaps), 1)[0])
            for r, g in zip(sel, gaps, strict=True):
                rec[f"{kind}(N={r['n']:.0e})"] = float(g)
        rec["pde_dt_error"] = sel[0]["pde_dt_error"][-1]
        out.append(rec)
    return out


def crossing_study(args) -> list[dict]:
    start, box, std0 = SETUPS["barrier"]
    target = gf.load_target("barrier")
    t_end = args.cross_t_end
    saves = save_times(t_end)
    rows = []
    for flow in args.cross_flows:
        pde = gf.solve_fokker_planck("barrier", start, divergence=flow, box=box,
                                     cells=args.cells, t_end=t_end, dt=1e-3, dt_max=0.25,
                                     save_at=saves)
        right = pde.grid.points()[:, 0] > 0
        need = float(pde.rho_d.reshape(-1)[right].sum() * pde.grid.cell_volume)
        frac = np.array([float(u.reshape(-1)[right].sum() * pde.grid.cell_volume) / need
                         for u in pde.snapshots])
        t_pde = first_time_below(pde.snapshot_times, 1 - frac, 1 - CROSSED)
        t_pde_half = first_time_below(pde.snapshot_times, 1 - frac, 1 - HALF)
        rows.append({"flow": flow, "solver": "PDE", "n": None, "t_crossed": t_pde,
                     "t_half": t_pde_half,
                     "times": pde.snapshot_times.tolist(), "crossed_fraction": frac.tolist(),
                     **_at(pde.snapshot_times, frac)})
        for n in args.cross_n:
            dt = particle_dt(n, std0, args)
            sol = gf.simulate_particles(target, start, divergence=flow, n=n, t_end=t_end,
                                        dt=dt, method="heun", save_at=saves, seed=args.seed,
                                        kde="binned")
            frac_p = (sol.positions[:, :, 0] > 0).mean(1) / need
            t_p = first_time_below(sol.times, 1 - frac_p, 1 - CROSSED)
            t_half = first_time_below(sol.times, 1 - frac_p, 1 - HALF)
            rows.append({"flow": flow, "solver": "particles", "n": n, "dt": dt,
                         "steps": sol.n_steps, "seconds": round(sol.seconds, 1),
                         "t_crossed": t_p,
                         "lag": None if (t_p is None or t_pde is None) else t_p - t_pde,
                         "t_half": t_half,
                         "lag_half": None if (t_half is None or t_pde_half is None)
                         else t_half - t_pde_half,
                         "times": sol.times.tolist(), "crossed_fraction": frac_p.tolist(),
                         **_at(sol.times, frac_p)})
            print(f"  barrier {flow} N={n}: dt={dt:.4g}, {sol.n_steps} steps, "
                  f"{sol.seconds:.1f} s, crossed at t = {t_p}", flush=True)
    return rows


def _at(times: np.ndarray, frac: np.ndarray) -> dict:
    return {f"crossed(t={t:g})": float(frac[int(np.argmin(np.abs(times - t)))])
            for t in (1.0, 4.0, 16.0) if t <= times[-1] + 1e-9}


def plot(path: Path, gaps: list[dict], rates: list[dict], cross: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for rec in rates:
        sel = sorted((r for r in gaps if (r["target"], r["flow"]) == (rec["target"], rec["flow"])),
                     key=lambda r: r["n"])
        ns = [r["n"] for r in sel]
        for kind, style in (("l1_raw", "-o"), ("l1_smoothed", "--s")):
            ax.loglog(ns, [r[kind][-1] for r in sel], style,
                      label=f"{rec['target']} {rec['flow']} {kind[3:]} "
                            f"(slope {rec['slope_' + kind]:.2f})")
    ax.set_xlabel("N particles")
    ax.set_ylabel(f"L1 gap to the PDE at t = {gaps[0]['times'][-1]:g}")
    ax.set_title("particles vs Fokker-Planck")
    ax.legend(fontsize=7)
    ax = axes[1]
    for r in cross:
        label = f"{r['flow']} PDE" if r["solver"] == "PDE" else f"{r['flow']} N={r['n']:.0e}"
        ax.plot(r["times"], r["crossed_fraction"], "k-" if r["solver"] == "PDE" else "-",
                lw=2 if r["solver"] == "PDE" else 1, label=label)
    ax.axhline(CROSSED, color="grey", ls=":")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(0, max(r["times"][-1] for r in cross) if cross else 1.0)
    ax.set_xlabel("flow time t")
    ax.set_ylabel("mass on x > 0 / rho_d's")
    ax.set_title("barrier crossing")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--flows", nargs="+", default=["jsd", "kl"])
    ap.add_argument("--gap-t-end", type=float, default=0.5)
    ap.add_argument("--cross-n", type=int, nargs="*", default=[1000, 10_000, 100_000])
    ap.add_argument("--cross-flows", nargs="*", default=["kl", "jsd"])
    ap.add_argument("--cross-t-end", type=float, default=128.0)
    ap.add_argument("--dt-factor", type=float, default=3.0, help="dt = factor * b0^2 ...")
    ap.add_argument("--dt-max", type=float, default=0.02, help="... at most this")
    ap.add_argument("--pde-dt", type=float, default=2.5e-4)
    ap.add_argument("--cells", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--replot", type=Path, default=None,
                    help="only redraw --plot from this JSON (written by this script)")
    args = ap.parse_args()
    if args.replot:
        old = __import__("json").loads(args.replot.read_text())
        plot(args.plot, old["gap"], old["rates"], old["crossing"])
        print(f"wrote {args.plot}")
        return
    start = time.perf_counter()
    print("L1 gap against N:", flush=True)
    gaps = gap_study(args)
    rates = fitted_rates(gaps)
    cols = ["target", "flow", *[f"{k}(N={n:.0e})" for k in ("l1_raw",) for n in args.n],
            "slope_l1_raw", *[f"l1_smoothed(N={n:.0e})" for n in args.n],
            "slope_l1_smoothed", "pde_dt_error"]
    print_table(rates, cols)
    cross = []
    if args.cross_n:
        print("\nbarrier crossing:", flush=True)
        cross = crossing_study(args)
        print_table(cross, ["flow", "solver", "n", "dt", "crossed(t=1)", "crossed(t=4)",
                            "crossed(t=16)", "t_half", "lag_half", "t_crossed", "lag",
                            "seconds"])
    total = time.perf_counter() - start
    print(f"total {total:.0f} s")
    if args.plot:
        plot(args.plot, gaps, rates, cross)
        print(f"wrote {args.plot}")
    if args.json:
        out = {"benchmark": "bench_particle_convergence", "environment": environment(),
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "setups": {k: {"start": v[0], "box": v[1]} for k, v in SETUPS.items()},
               "gap": gaps, "rates": rates, "crossing": cross, "seconds_total": total}
        write_json_atomic(args.json, out)
        print(f"wrote {args.json}")
    _ = math, torch


if __name__ == "__main__":
    main()
