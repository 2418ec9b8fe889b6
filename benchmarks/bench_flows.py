r"""Which flow converges fastest? (evaluation issue, benchmark 4)

The target ``barrier`` (0.3 N(-1.5, 0.5^2) + 0.7 N(1.5, 0.5^2)) has a low-density barrier
between unequal modes; the start N(-1.5, 0.5^2) sits on the light mode, so 0.4 of the mass
must cross the barrier. For each mobility (docs/theory.md section 7: jsd, kl, ns, chi2) the
Fokker-Planck equation is solved from the same start, and so is the KDE particle flow
(``ganflow.simulate_particles``: N particles, Heun steps, the drift from a Gaussian KDE
of the particles; ``--particles 0`` skips it). Reported: the flow time at which
JSD(u(t), rho_d) first falls below 1e-2 and 1e-3 (linear interpolation in log JSD
between steps or saved times), the time at which the mass on x > 0 reaches 90 % of
rho_d's there (the barrier crossed; no bandwidth in it), and JSD at t = 1, 4, 16. For
the particles, JSD is that of their KDE on the PDE grid, whose own floor (the KDE of N
exact samples of rho_d) is printed: a particle flow cannot be seen below it. With
``--crossing-n N1 N2 ...`` also the KL flow's mass on x > 0 at t = 1, 4, 16 for the
PDE and for particles at each N (does the particles' lag shrink with N?).

    python benchmarks/bench_flows.py --json benchmarks/results/bench_flows.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, print_table  # noqa: E402

import ganflow as gf  # noqa: E402
from ganflow._io import write_json_atomic  # noqa: E402
from ganflow.particles import particles_on_grid  # noqa: E402
from ganflow.pde import jsd_on_grid  # noqa: E402

START = "normal:-1.5:0.5"
THRESHOLDS = (1e-2, 1e-3)
# "the mass has crossed": the mass on x > 0 is this fraction of rho_d's there (a metric
# with no KDE bandwidth in it, so particles and the PDE compare directly)
CROSSED = 0.9


def save_times(t_end: float) -> list[float]:
    return sorted({*np.geomspace(0.05, t_end, 60).tolist(), *(t for t in (1.0, 4.0, 16.0)
                                                               if t <= t_end)})


def rho_right(u: np.ndarray, right: np.ndarray) -> float:
    return float(u.reshape(-1)[right].sum())


def first_time_below(times: np.ndarray, values: np.ndarray, level: float) -> float | None:
    below = np.nonzero(values < level)[0]
    if len(below) == 0:
        return None
    k = int(below[0])
    if k == 0:
        return 0.0
    # interpolate log(value) linearly between the bracketing steps
    a, b = np.log(values[k - 1]), np.log(values[k])
    frac = (a - np.log(level)) / (a - b)
    return float(times[k - 1] + frac * (times[k] - times[k - 1]))


def particle_rows(args, grid, rho_d: np.ndarray) -> dict:
    """The KDE particle flow of every mobility from START, JSD of its KDE on ``grid``."""
    import torch

    n, t_end = args.particles, args.particle_t_end
    target = gf.load_target("barrier")
    exact = target.sample(n, generator=torch.Generator().manual_seed(args.seed + 1),
                          dtype=torch.float64)
    floor = jsd_on_grid(particles_on_grid(exact.numpy(), grid), rho_d, grid.cell_volume)
    save_at = save_times(t_end)
    right = grid.points()[:, 0] > 0
    need = rho_right(rho_d, right) * grid.cell_volume
    rows = []
    for div in ("jsd", "kl", "ns", "chi2"):
        row: dict = {"flow": div}
        try:
            sol = gf.simulate_particles("barrier", START, divergence=div, n=n, t_end=t_end,
                                        dt=args.particle_dt, save_at=save_at, seed=args.seed)
        except gf.GanflowError as exc:  # an explicit step too long for this mobility
            row["error"] = str(exc)
            rows.append(row)
            continue
        jsd = np.array([jsd_on_grid(particles_on_grid(p, grid), rho_d,
                                           grid.cell_volume) for p in sol.positions])
        for lvl in THRESHOLDS:
            row[f"t(JSD<{lvl:g})"] = first_time_below(sol.times, jsd, lvl)
        crossed = (sol.positions[:, :, 0] > 0).mean(axis=1) / need
        row[f"t(crossed>{CROSSED:g})"] = first_time_below(sol.times, 1 - crossed, 1 - CROSSED)
        for t in (1.0, 4.0, 16.0):
            if t <= t_end:
                row[f"JSD(t={t:g})"] = float(jsd[int(np.argmin(np.abs(sol.times - t)))])
        row[f"JSD(t={t_end:g})"] = float(jsd[-1])
        row["steps"], row["seconds"] = sol.n_steps, round(sol.seconds, 1)
        rows.append(row)
    print(f"\nKDE particle flow, N = {n}, Heun dt = {args.particle_dt}, t <= {t_end:g} "
          f"(JSD floor of the KDE of {n} exact samples of rho_d: {floor:.2g}):")
    cols = ["flow", *[f"t(JSD<{lvl:g})" for lvl in THRESHOLDS], f"t(crossed>{CROSSED:g})",
            "JSD(t=1)", "JSD(t=4)", "JSD(t=16)", f"JSD(t={t_end:g})", "steps", "seconds"]
    cols = list(dict.fromkeys(cols))  # t_end may be one of 1, 4, 16
    print_table(rows, [c for c in cols if any(c in r for r in rows)] + (
        ["error"] if any("error" in r for r in rows) else []))
    return {"n": n, "dt": args.particle_dt, "t_end": t_end, "seed": args.seed,
            "jsd_floor": floor, "rows": rows}


def crossing_in_n(args, grid, rho_d: np.ndarray) -> list[dict]:
    """Mass on x > 0 at t = 1, 4, 16 for the KL flow: PDE against particles at each N.

    Shows whether the particles' slow crossing is a bias that shrinks with N."""
    right = grid.points()[:, 0] > 0
    pde = gf.solve_fokker_planck("barrier", START, divergence="kl", box=5.0, cells=args.cells,
                                 t_end=16.0, dt=1e-3, dt_max=1.0, save_at=[1.0, 4.0, 16.0])
    rows = [{"solver": "PDE", **{f"right(t={t:g})": rho_right(u, right) * grid.cell_volume
                                 for t, u in zip(pde.snapshot_times[1:], pde.snapshots[1:],
                                                 strict=True)}}]
    for n in args.crossing_n:
        sol = gf.simulate_particles("barrier", START, divergence="kl", n=n, t_end=16.0,
                                    dt=args.particle_dt, save_at=[1.0, 4.0], seed=args.seed)
        rows.append({"solver": f"particles N={n}",
                     **{f"right(t={t:g})": float((p[:, 0] > 0).mean())
                        for t, p in zip(sol.times[1:], sol.positions[1:], strict=True)}})
    print("\nKL flow, mass on x > 0 (rho_d has "
          f"{rho_right(rho_d, right) * grid.cell_volume:.3f} there):")
    print_table(rows, ["solver", "right(t=1)", "right(t=4)", "right(t=16)"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--t-end", type=float, default=256.0)
    ap.add_argument("--cells", type=int, default=1200)
    ap.add_argument("--particles", type=int, default=2000, help="N (0: PDE only)")
    ap.add_argument("--particle-dt", type=float, default=0.02)
    ap.add_argument("--particle-t-end", type=float, default=64.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crossing-n", type=int, nargs="*", default=[],
                    help="also: mass crossed by t = 16 for the KL particle flow at these N")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    grid = None
    for div in ("jsd", "kl", "ns", "chi2"):
        sol = gf.solve_fokker_planck("barrier", START, divergence=div, box=5.0, cells=args.cells,
                                     t_end=args.t_end, dt=1e-3, dt_max=1.0,
                                     save_at=save_times(args.t_end))
        row = {"flow": div, "steps": sol.n_steps, "mass_err": sol.mass_error}
        for lvl in THRESHOLDS:
            row[f"t(JSD<{lvl:g})"] = first_time_below(sol.times, sol.jsd, lvl)
        right = sol.grid.points()[:, 0] > 0
        need = rho_right(sol.rho_d, right)
        crossed = np.array([rho_right(u, right) / need for u in sol.snapshots])
        row[f"t(crossed>{CROSSED:g})"] = first_time_below(sol.snapshot_times, 1 - crossed,
                                                          1 - CROSSED)
        for t in (1.0, 4.0, 16.0):
            row[f"JSD(t={t:g})"] = float(sol.jsd[int(np.argmin(np.abs(sol.times - t)))])
        rows.append(row)
        grid, rho_d = sol.grid, sol.rho_d
    cols = ["flow", *[f"t(JSD<{lvl:g})" for lvl in THRESHOLDS], f"t(crossed>{CROSSED:g})",
            "JSD(t=1)", "JSD(t=4)", "JSD(t=16)", "steps", "mass_err"]
    print_table(rows, cols)
    out = {"benchmark": "bench_flows", "environment": environment(), "target": "barrier",
           "start": START, "rows": rows}
    if args.particles:
        out["particles"] = particle_rows(args, grid, rho_d)
    if args.crossing_n:
        out["crossing"] = crossing_in_n(args, grid, rho_d)
    if args.json:
        write_json_atomic(args.json, out)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
