r"""Flow tracking (evaluation issue, benchmark 2): does Algorithm 1 follow the JSD flow?

For a bimodal 1-D target and the 4-mode 2-D target ``four2d``, each configuration
(eps, K, pairing, optimizer) trains a ``flow`` run from the same seed, evaluates every
``t_step / eps`` iterations, and ``ganflow track`` compares each generator snapshot with
the Fokker-Planck solution u(t) started from the run's own initial generator. Reported:
the L1 and JSD gap between generator and u(t) at t in {0.5, 1, 2, 4}, next to the L1
noise floor (n samples of u(t) itself) and the flow's own JSD(u(t), rho_d).

    python benchmarks/bench_tracking.py --json benchmarks/results/bench_tracking.json
    python benchmarks/bench_tracking.py --data bimodal --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, print_table  # noqa: E402

from ganflow._io import write_json_atomic  # noqa: E402
from ganflow.tracking import track_run  # noqa: E402
from ganflow.trainer import TrainConfig, TrainingDivergedError, train  # noqa: E402

TIMES = (0.5, 1.0, 2.0, 4.0)
# name -> TrainConfig overrides. "sgd" rows use plain SGD, whose step is proportional to
# the displacement asked for (Adam's is not): the reading of Algorithm 1 as an ODE solver.
CONFIGS: dict[str, dict] = {
    "eps 0.05 K1 index adam": {"eps": 0.05},
    "eps 0.01 K1 index adam": {"eps": 0.01},
    "eps 0.05 K5 index adam": {"eps": 0.05, "fit_steps": 5},
    "eps 0.05 K5 assign adam": {"eps": 0.05, "fit_steps": 5, "pairing": "assignment"},
    "eps 0.05 K1 index sgd": {"eps": 0.05, "optimizer": "sgd", "lr_g": 0.5},
    "eps 0.05 K5 index sgd": {"eps": 0.05, "fit_steps": 5, "optimizer": "sgd", "lr_g": 0.5},
}


def run_one(data: str, name: str, seed: int, n: int, workdir: Path) -> list[dict]:
    over = CONFIGS[name]
    eps = over["eps"]
    iters = round(TIMES[-1] / eps)
    cfg = TrainConfig(data=data, seed=seed, iterations=iters, eval_every=round(0.5 / eps),
                      lr_decay=1.0, eval_samples=1000, w2_samples=200, **over)
    out = workdir / f"{data}-{name.replace(' ', '_')}-s{seed}"
    start = time.perf_counter()
    try:
        train(cfg, out=out, progress=False)
    except TrainingDivergedError as exc:  # a diverged configuration is a result, not a crash
        return [{"data": data, "config": name, "seed": seed, "t": None, "l1_gap": None,
                 "diverged": str(exc)}]
    seconds = time.perf_counter() - start
    res = track_run(out, n=n, seed=seed)
    rows = []
    for t in TIMES:
        k = int(abs(res.times - t).argmin())
        rows.append({"data": data, "config": name, "seed": seed, "t": float(res.times[k]),
                     "l1_gap": float(res.l1_gap[k]), "l1_floor": float(res.l1_floor[k]),
                     "jsd_gap": float(res.jsd_gap[k]), "gen_jsd": float(res.gen_jsd[k]),
                     "pde_jsd": float(res.pde_jsd[k]), "train_s": seconds})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["bimodal", "four2d"])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--n", type=int, default=5000, help="generator samples per snapshot")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            for name in args.configs:
                for seed in args.seeds:
                    rows += run_one(data, name, seed, args.n, Path(tmp))
                    print(f"done {data} {name} seed {seed}", file=sys.stderr, flush=True)
    print_table(rows, ["data", "config", "seed", "t", "l1_gap", "l1_floor", "jsd_gap",
                       "gen_jsd", "pde_jsd", "train_s"])
    if args.json:
        write_json_atomic(args.json, {"benchmark": "bench_tracking", "environment": environment(),
                                      "seeds": args.seeds, "n": args.n, "rows": rows})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
