"""Speed of the ground-truth solvers (the Fokker-Planck issue's speed targets).

    python benchmarks/bench_pde.py [--json benchmarks/results/bench_pde.json] [--quick]

Rows: 1-D JSD flow, 2000 cells, to t = 32 (target < 5 s); 2-D implicit steps at
128^2 (target < 0.3 s/step) and 256^2 with Newton iterations per step; 2-D particle
steps at N = 20000 (target < 1 s/step), Euler and Heun, float32 and float64.
Each row reports the minimum and median of repeated runs (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, environment, print_table, summary, timed  # noqa: E402

import ganflow as gf  # noqa: E402
from ganflow._io import write_json_atomic  # noqa: E402
from ganflow.particles import particle_drift  # noqa: E402


def bench_1d(repeats: int) -> dict:
    def run():
        return gf.solve_fokker_planck(
            "bimodal", "normal:0:0.4", box=4.5, cells=2000, t_end=32.0, dt=0.01, dt_max=1.0
        )

    sol, secs = timed(run, repeats)
    return {
        "case": "1-D jsd, 2000 cells, t=32",
        "seconds": summary(secs),
        "steps": sol.n_steps,
        "newton_per_step": float(sol.newton_iterations[1:].mean()),
        "mass_error": sol.mass_error,
        "final_jsd": float(sol.jsd[-1]),
    }


def bench_2d(cells: int, steps: int, repeats: int) -> dict:
    def run():
        return gf.solve_fokker_planck(
            "four2d", "normal:0,0:0.5", box=4.5, cells=cells, t_end=0.05 * steps, dt=0.05
        )

    sol, secs = timed(run, repeats)
    per_step = [s / sol.n_steps for s in secs]
    return {
        "case": f"2-D jsd, {cells}^2 cells",
        "seconds_per_step": summary(per_step),
        "steps": sol.n_steps,
        "newton_per_step": float(sol.newton_iterations[1:].mean()),
        "mass_error": sol.mass_error,
    }


def bench_particles(n: int, method: str, dtype: torch.dtype, repeats: int) -> dict:
    target = gf.load_target("four2d")
    x = gf.load_target("normal:0,0:0.5").sample(
        n, generator=torch.Generator().manual_seed(0), dtype=dtype
    )
    evals = 1 if method == "euler" else 2
    particle_drift(x, target, gf.JSD)  # warm-up

    def run():
        for _ in range(evals):
            particle_drift(x, target, gf.JSD)

    _, secs = timed(run, repeats)
    return {
        "case": f"particles 2-D N={n} {method} {str(dtype).replace('torch.', '')}",
        "seconds_per_step": summary(secs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    ap.add_argument("--quick", action="store_true", help="one repeat, fewer steps")
    args = ap.parse_args()
    reps = 1 if args.quick else 3
    rows = [
        bench_1d(reps),
        bench_2d(128, 5 if args.quick else 10, reps),
        bench_2d(256, 3 if args.quick else 5, 1 if args.quick else 2),
    ]
    for method in ("euler", "heun"):
        for dtype in (torch.float32, torch.float64):
            rows.append(bench_particles(20000, method, dtype, reps))
    table = []
    for r in rows:
        key = "seconds" if "seconds" in r else "seconds_per_step"
        table.append(
            {
                "case": r["case"],
                "min s" + ("" if key == "seconds" else "/step"): r[key]["min"],
                "median": r[key]["median"],
                "newton/step": r.get("newton_per_step"),
                "steps": r.get("steps"),
                "mass err": r.get("mass_error"),
            }
        )
    cols = ["case", "min s", "min s/step", "median", "newton/step", "steps", "mass err"]
    print_table(table, cols)
    out = {"benchmark": "bench_pde", "environment": environment(), "rows": rows}
    if args.json:
        write_json_atomic(args.json, json.loads(json.dumps(out, default=float)))
        print(f"wrote {args.json}")
    _ = np, RESULTS


if __name__ == "__main__":
    main()
