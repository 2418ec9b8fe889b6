r"""Which flow converges fastest? (evaluation issue, benchmark 4)

The target ``barrier`` (0.3 N(-1.5, 0.5^2) + 0.7 N(1.5, 0.5^2)) has a low-density barrier
between unequal modes; the start N(-1.5, 0.5^2) sits on the light mode, so 0.4 of the mass
must cross the barrier. For each mobility (THEORY.md section 7: jsd, kl, ns, chi2) the
Fokker-Planck equation is solved from the same start, and with ``--particles N`` the KDE
particle flow too; reported: the flow time at which JSD(u(t), rho_d) first falls below
1e-2 and 1e-3 (linear interpolation in log JSD between steps), and JSD at t = 1, 4, 16.

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

START = "normal:-1.5:0.5"
THRESHOLDS = (1e-2, 1e-3)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--t-end", type=float, default=256.0)
    ap.add_argument("--cells", type=int, default=1200)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for div in ("jsd", "kl", "ns", "chi2"):
        sol = gf.solve_fokker_planck("barrier", START, divergence=div, box=5.0, cells=args.cells,
                                     t_end=args.t_end, dt=1e-3, dt_max=1.0,
                                     save_at=[1.0, 4.0, 16.0])
        row = {"flow": div, "steps": sol.n_steps, "mass_err": sol.mass_error}
        for lvl in THRESHOLDS:
            row[f"t(JSD<{lvl:g})"] = first_time_below(sol.times, sol.jsd, lvl)
        for t in (1.0, 4.0, 16.0):
            row[f"JSD(t={t:g})"] = float(sol.jsd[int(np.argmin(np.abs(sol.times - t)))])
        rows.append(row)
    cols = ["flow", *[f"t(JSD<{lvl:g})" for lvl in THRESHOLDS], "JSD(t=1)", "JSD(t=4)",
            "JSD(t=16)", "steps", "mass_err"]
    print_table(rows, cols)
    if args.json:
        write_json_atomic(args.json, {"benchmark": "bench_flows", "environment": environment(),
                                      "target": "barrier", "start": START, "rows": rows})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
