r"""README's main command, measured: ``ganflow train`` as a user types it, then ``ganflow
sample`` from its run folder, beside the same for ``--method flow`` (Algorithm 1).

For each data set (``--data``; ring8, the main command's, by default) and seed the two
commands run one after the other as subprocesses (``python -m ganflow train --data D
--seed S --out DIR --no-progress``, nothing else given: every other option is the
default), each followed by ``ganflow sample DIR --n N``. It reports the wall time of
each command (the process's, imports included), the run's own training time, its final
energy distance and W2 to the data (and modes / HQ / mode-weight KL on a mixture,
Frechet distance and class coverage on images), the iteration and time at which it first
met the quality bar, how wide the modes of the sampled points are against the data's
(:func:`mode_spread`), and the run folder's size on disk (a flow-chain run keeps its
recorded discriminators). Per data set it also reports the noise floors of the two
distances (mean and standard deviation over 10 pairs of independent data sets of the
evaluations' sizes, 2500 samples for the energy distance and 1000 for W2): a distance
within the floor means indistinguishable from the data at that sample size. Seeds run
one after the other in one job, so the two methods of a seed share the machine's load;
the ratio within a seed is the comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, environment, print_table

from ganflow._io import write_json_atomic
from ganflow.data import load_data
from ganflow.metrics import energy_distance, first_at_quality_bar, mode_widths, w2
from ganflow.training import read_metrics


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def floors(data: str, repeats: int = 10) -> dict:
    """Energy distance (2500 vs 2500) and W2 (1000 vs 1000) between independent draws of
    the data: the values a perfect sampler would score, as mean and standard deviation."""
    ds, gen = load_data(data), torch.Generator().manual_seed(12345)
    energy, wass = [], []
    for _ in range(repeats):
        a, b = (ds.sample(2500, gen).double().numpy() for _ in range(2))
        energy.append(energy_distance(a, b))
        wass.append(w2(a[:1000], b[:1000]))
    return {"energy_floor_mean": float(np.mean(energy)), "energy_floor_sd": float(np.std(energy)),
            "w2_floor_mean": float(np.mean(wass)), "w2_floor_sd": float(np.std(wass))}


def mode_spread(x: np.ndarray, mixture) -> dict:
    """How wide each mode's samples are (:func:`ganflow.metrics.mode_widths`): HQ cannot
    see a mode collapsed to a point (ratio near 0), this can."""
    ratios = mode_widths(x, mixture)
    return {"mode_sd_ratio_min": min(ratios), "mode_sd_ratio_max": max(ratios),
            "mode_sd_ratios": ratios} if ratios else {}


def one(data: str, method: str | None, seed: int, root: Path, n_sample: int) -> dict:
    run = root / f"{data}-{method or 'default'}-s{seed}"
    extra = [] if method is None else ["--method", method]
    train_s = _timed([sys.executable, "-m", "ganflow", "train", "--data", data, *extra,
                      "--seed", str(seed), "--out", str(run), "--no-progress"])
    sample_s = _timed([sys.executable, "-m", "ganflow", "sample", str(run), "--n",
                       str(n_sample), "--out", str(root / "x.npy"), "--force",
                       "--no-progress"])
    cfg = json.loads((run / "config.json").read_text())
    rows = read_metrics(run)
    last = rows[-1]
    mixture = load_data(data).mixture
    hit = first_at_quality_bar(rows, mixture.n_components) if mixture is not None else None
    shape = mode_spread(np.load(root / "x.npy"), mixture) if mixture is not None else {}
    return {"data": data, "method": method or "default", "resolved_method": cfg["method"],
            "seed": seed,
            "iterations": last["iteration"], "train_command_s": round(train_s, 1),
            "train_s": round(last["seconds"], 1),
            "sample_command_s": round(sample_s, 1), "sample_n": n_sample,
            "energy": last["energy"], "w2": last["w2"], "modes": last.get("modes"),
            "hq": last.get("hq"), "mode_kl": last.get("mode_kl"),
            **{k: last[k] for k in ("frechet_distance", "frechet_distance_floor",
                                    "class_coverage", "class_kl") if k in last},
            "bar_iteration": hit["iteration"] if hit else None,
            "bar_s": round(hit["seconds"], 1) if hit else None,
            "run_folder_mb": round(_folder_mb(run), 1), **shape,
            "config": {k: cfg[k] for k in ("divergence", "optimizer", "lr_d", "lr_decay",
                                            "eps", "eps_decay", "batch_size", "particles",
                                            "d_steps", "d_warmup", "d_penalty")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["ring8"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["default", "flow"],
                    help="'default' (no --method given) and/or --method names")
    ap.add_argument("--sample-n", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=RESULTS / "bench_default.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            for seed in args.seeds:
                for m in args.methods:
                    rows.append(one(data, None if m == "default" else m, seed, Path(tmp),
                                    args.sample_n))
                    r = rows[-1]
                    print(f"{data} seed {seed} {r['method']} ({r['resolved_method']}): "
                          f"train {r['train_command_s']} s, sample {r['sample_command_s']} "
                          f"s, energy {r['energy']:.4g}, modes {r['modes']}, HQ {r['hq']}, "
                          f"KL {r['mode_kl']}", flush=True)
    print_table(rows, ["data", "seed", "method", "resolved_method", "iterations",
                       "train_command_s", "train_s", "sample_command_s", "energy", "w2",
                       "modes", "hq", "mode_kl", "mode_sd_ratio_min", "mode_sd_ratio_max",
                       "frechet_distance", "class_coverage",
                       "bar_iteration", "bar_s", "run_folder_mb"])
    noise = {data: floors(data) for data in args.data}
    for data, f in noise.items():
        print(f"{data} noise floors: energy {f['energy_floor_mean']:.2g} ± "
              f"{f['energy_floor_sd']:.2g}, W2 {f['w2_floor_mean']:.3g} ± {f['w2_floor_sd']:.2g}")
    write_json_atomic(args.json, {"benchmark": "bench_default", "environment": environment(),
                                  "args": {k: str(v) for k, v in vars(args).items()},
                                  "rows": rows, "floors": noise})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
