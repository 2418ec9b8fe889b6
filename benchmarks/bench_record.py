r"""The published toy-benchmark record's protocol: 10 training seeds, 2500 samples each.

PacGAN (Lin et al. 2018, Table 1) reports, for 2-D ring and grid mixtures, the mean over
10 training runs of three numbers computed on 2500 generated samples: modes captured, the
percentage of high-quality (HQ) samples, and the KL divergence of the HQ samples' mode
histogram to the uniform weights. ganflow's ``mode_metrics`` is that definition (DESIGN.md,
"Benchmarks and protocols"), so each run's final evaluation row (2500 samples) is one
trial. This script trains one method on one data set for every seed (one after the other;
only quality is compared, not time), saves every finished seed at once (a killed run
keeps them, and a rerun with the same ``--json`` skips them), and prints the mean and
standard deviation over seeds beside the published best.

    python benchmarks/bench_record.py --data ring8 --method "flow-map repair l1" \
        --iterations 3000 --eval-every 500 --json benchmarks/results/record_ring8_flowmap.json
    python benchmarks/bench_record.py --table benchmarks/results/record_*.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from _common import environment, measured_config
from bench_train import METHODS

from ganflow._io import write_json_atomic
from ganflow.metrics import first_at_quality_bar
from ganflow.training import read_metrics, train

# PacGAN Table 1 (10 trials, 2500 samples) as DESIGN.md quotes it: the best published row
# per data set, and the plain GAN's grid HQ, the best on that column (its other columns
# are not quoted there, so they are not shown)
PUBLISHED = {
    "ring8": [{"method": "PacGAN2 (published)", "modes": 7.9, "hq": 95.6, "mode_kl": 0.07}],
    "grid25": [{"method": "PacGAN4 (published)", "modes": 24.8, "hq": 93.6, "mode_kl": 0.04},
               {"method": "GAN (published)", "modes": None, "hq": 94.8, "mode_kl": None}],
}
MODES = {"ring8": 8, "grid25": 25}


def run_seeds(data: str, method: str, seeds: list[int], iterations: int, eval_every: int,
              out: dict, json_path: Path | None) -> None:
    """Train ``method`` on ``data`` for each seed not yet in ``out["runs"]``; append its
    final evaluation row to ``out["runs"]`` and rewrite ``json_path`` after each."""
    done = {r["seed"] for r in out["runs"]}
    for seed in seeds:
        if seed in done:
            continue
        cfg = measured_config(data=data, seed=seed, iterations=iterations, eval_every=eval_every,
                              **METHODS[method])
        with tempfile.TemporaryDirectory() as tmp:
            result = train(cfg, out=Path(tmp) / "run", progress=False, figures=False)
            if result.status != "finished":  # Ctrl-C / SIGTERM: keep only finished seeds
                raise SystemExit(f"seed {seed} {result.status} at iteration "
                                 f"{result.iteration}; the finished seeds are kept")
            last = read_metrics(Path(tmp) / "run")[-1]
        row = {"seed": seed, **{k: last[k] for k in ("iteration", "seconds", "modes", "hq",
                                                     "mode_kl", "energy")}}
        out["runs"].append(row)
        print(f"{data} {method} seed {seed}: {row['modes']} modes, HQ "
              f"{100 * row['hq']:.1f} %, KL {row['mode_kl']:.4f}, {row['seconds']:.0f} s",
              flush=True)
        if json_path is not None:
            write_json_atomic(json_path, out)


def aggregate(runs: list[dict], n_modes: int) -> dict:
    """Mean and (sample) standard deviation over seeds of modes, HQ % and mode KL, how
    many seeds capture every mode, and how many meet DESIGN.md's bar (all modes, HQ >=
    80 %, mode KL <= 0.05)."""
    def stats(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    modes = stats([r["modes"] for r in runs])
    hq = stats([100 * r["hq"] for r in runs])
    kl = stats([r["mode_kl"] for r in runs])
    return {"seeds": len(runs), "modes": modes[0], "modes_std": modes[1], "hq": hq[0],
            "hq_std": hq[1], "mode_kl": kl[0], "mode_kl_std": kl[1],
            "all_modes": sum(r["modes"] == n_modes for r in runs),
            "bar": sum(first_at_quality_bar([r], n_modes) is not None for r in runs)}


def merge(results: list[dict]) -> list[dict]:
    """One result per (data, method, iterations, config): the seeds of files that ran one
    configuration in parts (for example two processes side by side) are pooled."""
    pooled: dict[str, dict] = {}
    for r in results:
        key = json.dumps([r["data"], r["method"], r["iterations"], r["config"]])
        if key in pooled:
            seen = {x["seed"] for x in pooled[key]["runs"]}
            pooled[key]["runs"] += [x for x in r["runs"] if x["seed"] not in seen]
        else:
            pooled[key] = {**r, "runs": list(r["runs"])}
    return list(pooled.values())


def _cell(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(results: list[dict]) -> None:
    results = merge(results)
    print(f"{'data':>7} {'method':>26} {'seeds':>5} {'iters':>6} {'modes':>12} "
          f"{'HQ %':>12} {'mode KL':>15} {'all modes':>9} {'bar':>6}")
    by_data: dict[str, list[dict]] = {}
    for r in results:
        by_data.setdefault(r["data"], []).append(r)
    for data, rows in by_data.items():
        for r in rows:
            a = aggregate(r["runs"], MODES[data])
            print(f"{data:>7} {r['method']:>26} {a['seeds']:>5} {r['iterations']:>6} "
                  f"{a['modes']:>6.1f} ± {a['modes_std']:<3.1f} {a['hq']:>6.1f} ± "
                  f"{a['hq_std']:<3.1f} {a['mode_kl']:>7.3f} ± {a['mode_kl_std']:<5.3f} "
                  f"{a['all_modes']:>5}/{a['seeds']} {a['bar']:>3}/{a['seeds']}")
        for p in PUBLISHED.get(data, []):
            print(f"{data:>7} {p['method']:>26} {10:>5} {'':>6} {_cell(p['modes'], '.1f'):>6}"
                  f"       {_cell(p['hq'], '.1f'):>6}       {_cell(p['mode_kl'], '.3f'):>7}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=list(MODES), default="ring8")
    ap.add_argument("--method", choices=list(METHODS), default="flow K=1 index",
                    help="a configuration of bench_train.py (default: `ganflow train`'s)")
    ap.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    ap.add_argument("--iterations", type=int, default=10000)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None,
                    help="results file; seeds it already holds are not rerun")
    ap.add_argument("--table", nargs="+", type=Path, default=None,
                    help="only print the table of these results files")
    args = ap.parse_args()
    if args.table:
        print_table([json.loads(p.read_text()) for p in args.table])
        return
    torch.set_num_threads(args.threads)
    out = {"data": args.data, "method": args.method, "iterations": args.iterations,
           "eval_every": args.eval_every, "config": METHODS[args.method], "runs": [],
           "env": environment()}
    if args.json is not None and args.json.exists():
        old = json.loads(args.json.read_text())
        same = all(old.get(k) == out[k] for k in ("data", "method", "iterations", "config"))
        if not same:
            raise SystemExit(f"{args.json} holds another configuration; choose another --json")
        out["runs"] = old["runs"]
    run_seeds(args.data, args.method, args.seeds, args.iterations, args.eval_every, out,
              args.json)
    print_table([out])


if __name__ == "__main__":
    main()
