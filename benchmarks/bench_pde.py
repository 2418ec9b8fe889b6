"""Speed of the ground-truth solvers (the Fokker-Planck issue's speed targets).

    python benchmarks/bench_pde.py [--json benchmarks/results/bench_pde.json] [--quick]
    python benchmarks/bench_pde.py --particles-only --json benchmarks/results/bench_pde_binned.json

Rows: 1-D JSD flow, 2000 cells, to t = 32 (target < 5 s); 2-D implicit steps at
128^2 (target < 0.3 s/step) and 256^2 with Newton iterations per step; 2-D particle
steps at N = 20000 (target < 1 s/step), Euler and Heun, float32 and float64, with the
KDE summed over all pairs (``kde="direct"``).
``--particles-only`` runs instead the particle rows of the KDE-evaluation comparison:
one Euler step (drift of ODE (2) + update) in 2-D at N = 10^4, 2 10^4, 10^5, 10^6 with
the binned KDE (grid + FFT) and, where it finishes in reasonable time (N <= 10^5; one
run at 10^5), direct summation, side by side; target N = 10^6 at <= 0.5 s/step.
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


def bench_particles(
    n: int, method: str, dtype: torch.dtype, repeats: int, kde: str = "direct", warm: bool = True
) -> dict:
    target = gf.load_target("four2d")
    x = gf.load_target("normal:0,0:0.5").sample(
        n, generator=torch.Generator().manual_seed(0), dtype=dtype
    )
    evals = 1 if method == "euler" else 2
    if warm:
        particle_drift(x, target, gf.JSD, kde=kde)

    def run():
        y = x
        for _ in range(evals):
            y = x + 0.001 * particle_drift(y, target, gf.JSD, kde=kde)
        assert bool(torch.isfinite(y).all())

    _, secs = timed(run, repeats)
    return {
        "case": f"particles 2-D N={n} {method} {str(dtype).replace('torch.', '')} kde={kde}",
        "n": n,
        "kde": kde,
        "method": method,
        "dtype": str(dtype).replace("torch.", ""),
        "seconds_per_step": summary(secs),
    }


def _run_measured(cmd: list[str]) -> tuple[int, float, float, str]:
    """Run ``cmd``; return its exit code, CPU seconds, peak resident MB (this child
    alone, from wait4) and stderr."""
    import os
    import subprocess

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (proc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, err)


def bench_particle_flow(n: int, iterations: int) -> dict:
    """``ganflow train --method particles`` (D-driven particles, grid25) with N particles:
    wall and CPU seconds per iteration, and the peak resident memory of the process."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ganflow", "train", "--data", "grid25",
               "--method", "particles", "--particles", str(n), "--iterations", str(iterations),
               "--eval-every", str(iterations), "--threads", "1", "--out", f"{tmp}/run"]
        code, cpu, peak, err = _run_measured(cmd)
        if code != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
        lines = Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()
        last = json.loads(lines[-1])
    return {
        "case": f"ganflow train --method particles, grid25, N={n}",
        "command": " ".join(["ganflow", *cmd[3:-2]]),
        "n": n,
        "iterations": iterations,
        "loop_seconds_per_iteration": last["seconds"] / iterations,
        "process_cpu_seconds_per_iteration": cpu / iterations,
        "peak_rss_mb": peak,
        "note": "loop seconds include one evaluation and checkpoint at the last iteration; "
                "CPU seconds include start-up",
    }


def bench_particles_memory(n: int) -> dict:
    """Peak resident memory of ``ganflow particles --n N`` (2-D, float64, Heun, 6 saved
    snapshots) against the pre-run estimate, and the refusal of an absurd N."""
    from ganflow.particles import estimate_particle_memory

    cmd = [sys.executable, "-m", "ganflow", "particles", "--target", "four2d", "--init",
           "normal:0,0:0.5", "--n", str(n), "--t-end", "0.004", "--dt", "0.001",
           "--method", "heun", "--no-pde"]
    code, _, peak_mb, err = _run_measured(cmd)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
    est = estimate_particle_memory(n, 2, dtype=torch.float64, n_saves=6, kde="binned",
                                   n_components=4)
    absurd = [sys.executable, "-m", "ganflow", "particles", "--n", "1e11", "--no-pde"]
    code, _, _, err = _run_measured(absurd)
    return {
        "command": " ".join(["ganflow", *cmd[3:]]),
        "peak_rss_mb": peak_mb,
        "estimate_mb": {k: v / 2**20 for k, v in est.items()},
        "refusal_command": "ganflow particles --n 1e11 --no-pde",
        "refusal_exit_code": code,
        "refusal_stderr": err.strip(),
    }


def particle_rows(quick: bool) -> list[dict]:
    """Binned against direct KDE, one Euler step in 2-D (four2d, start N(0, 0.5^2 I))."""
    reps = 1 if quick else 3
    rows = []
    for n in (10_000, 20_000, 100_000, 1_000_000):
        for dtype in (torch.float32, torch.float64):
            rows.append(bench_particles(n, "euler", dtype, reps, kde="binned"))
            if n <= 20_000:
                rows.append(bench_particles(n, "euler", dtype, reps, kde="direct"))
            elif n == 100_000 and dtype == torch.float32:  # one cold run: ~25x N = 20000
                rows.append(bench_particles(n, "euler", dtype, 1, kde="direct", warm=False))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    ap.add_argument("--quick", action="store_true", help="one repeat, fewer steps")
    ap.add_argument("--particles-only", action="store_true",
                    help="only the binned-vs-direct particle rows (N = 1e4 ... 1e6)")
    ap.add_argument("--particle-flow", type=int, default=0, metavar="N",
                    help="with --particles-only: also time `ganflow train --method "
                         "particles` with N particles (10 iterations)")
    args = ap.parse_args()
    reps = 1 if args.quick else 3
    if args.particles_only:
        rows = particle_rows(args.quick)
        ratios = {}
        for dtype in ("float32", "float64"):
            by = {r["kde"]: r["seconds_per_step"]["min"] for r in rows
                  if r["n"] == 20_000 and r["dtype"] == dtype}
            ratios[dtype] = by["binned"] / by["direct"]
        print_table([{"case": r["case"], "min s/step": r["seconds_per_step"]["min"],
                      "median": r["seconds_per_step"]["median"]} for r in rows],
                    ["case", "min s/step", "median"])
        print("binned / direct at N = 20000 (min s/step): " +
              ", ".join(f"{k} {v:.3g}" for k, v in ratios.items()))
        out = {"benchmark": "bench_pde --particles-only", "environment": environment(),
               "rows": rows, "ratio_binned_over_direct_n20000": ratios}
        if args.particle_flow:
            flow = bench_particle_flow(args.particle_flow, 10)
            print({k: v for k, v in flow.items() if k != "note"})
            out["particle_flow"] = flow
        out["memory"] = bench_particles_memory(1_000_000)
        print({k: v for k, v in out["memory"].items() if k != "note"})
        if args.json:
            write_json_atomic(args.json, json.loads(json.dumps(out, default=float)))
            print(f"wrote {args.json}")
        return
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
