r"""Peak memory and time of the pairwise metrics (issue 14): blocked vs the old full matrices.

Each case runs in a fresh subprocess, which reports its own peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the seconds of the measured call:

* ``eval digits``: :func:`ganflow.metrics.evaluate_samples` of n images (64 pixels)
  against ``digits``, what ``ganflow eval RUN`` runs after drawing the samples (energy
  distance, Gaussian MMD at 3 bandwidths, W2, sliced W2, and the image metrics of
  ganflow.metrics.features: Frechet/kernel distance, k-NN precision/recall, class coverage, each
  with its noise floor). The samples are digits images plus N(0, 0.1^2) pixel noise: the
  metrics' cost does not depend on how good the samples are. The classifier is trained
  (and cached) before any case is measured.
* ``pairwise 784-d``: energy distance, MMD (3 bandwidths) and k-NN precision/recall
  (k = 3) of two Gaussian sets of n points in 784 dimensions, MNIST's pixel count (``ganflow
  eval`` of MNIST computes energy and MMD on the raw pixels; its precision/recall works on
  128-d features, a cheaper case).

``old`` replaces the blocked functions by the full-matrix code they replaced (copied
below verbatim from before issue 14), so both columns are measured the same way.

    cd benchmarks && python bench_eval_memory.py --n 10000 \
        --json results/bench_eval_memory.json
    cd benchmarks && python bench_eval_memory.py --n 10000 --no-old   # skip the 6+ GB cases
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import environment, print_table

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- the old, unblocked code
def _old_energy_distance(x, y) -> float:
    import torch

    from ganflow.metrics import _as_numpy

    a, b = torch.as_tensor(_as_numpy(x, "x")), torch.as_tensor(_as_numpy(y, "y"))
    n, k = len(a), len(b)
    xy = torch.cdist(a, b).mean()
    xx = torch.cdist(a, a).sum() / (n * (n - 1))
    yy = torch.cdist(b, b).sum() / (k * (k - 1))
    return float(2 * xy - xx - yy)


def _old_mmd(x, y, bandwidths=(0.1, 0.5, 1.0, 2.0)) -> dict:
    import torch

    from ganflow.metrics.density import _points

    a, b = _points(x, "x"), _points(y, "y")
    n, k = len(a), len(b)
    daa, dbb, dab = (torch.cdist(a, a) ** 2, torch.cdist(b, b) ** 2, torch.cdist(a, b) ** 2)
    out = {}
    for s in bandwidths:
        s = float(s)
        kaa = torch.exp(-daa / (2 * s * s))
        kbb = torch.exp(-dbb / (2 * s * s))
        kab = torch.exp(-dab / (2 * s * s))
        val = (kaa.sum() - n) / (n * (n - 1)) + (kbb.sum() - k) / (k * (k - 1)) - 2 * kab.mean()
        out[s] = float(val)
    return out


def _old_kth_nn(x, k, chunk: int = 2048):
    import torch

    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _old_inside(q, centres, radii, chunk: int = 2048):
    import torch

    return torch.cat([(torch.cdist(q[i:i + chunk], centres) <= radii[None]).any(1)
                      for i in range(0, len(q), chunk)])


def _use_old_code() -> None:
    import ganflow.metrics as met
    import ganflow.metrics.density as dens
    import ganflow.metrics.evaluate as ev
    import ganflow.metrics.features as feat

    ev.energy_distance = met.energy_distance = _old_energy_distance
    ev.mmd = dens.mmd = _old_mmd
    feat.kth_nn_distance, feat.inside_any_ball = _old_kth_nn, _old_inside


# ---------------------------------------------------------------- one case (a subprocess)
def _child(case: str, n: int, old: bool) -> dict:
    import resource
    import time

    import numpy as np
    import torch

    torch.set_num_threads(1)
    if old:
        _use_old_code()
    rng = np.random.default_rng(0)
    if case == "eval digits":
        from ganflow.data import load_data
        from ganflow.metrics.evaluate import evaluate_samples

        ds = load_data("digits")
        x = ds.sample(n, torch.Generator().manual_seed(123)).double().numpy()
        x = np.clip(x + 0.1 * rng.standard_normal(x.shape), -1, 1)
        t0 = time.perf_counter()
        res = evaluate_samples(x, ds, seed=0)
        secs = time.perf_counter() - t0
        values = {k: res[k] for k in ("energy", "energy_floor", "precision", "recall",
                                      "frechet_distance")}
        values["mmd"] = res["mmd"]
    else:
        from ganflow.metrics import energy_distance
        from ganflow.metrics.density import mmd
        from ganflow.metrics.features import precision_recall

        x = rng.standard_normal((n, 784))
        y = 1.05 * rng.standard_normal((n, 784)) + 0.02
        t0 = time.perf_counter()
        values = {"energy": energy_distance(x, y), "mmd": mmd(x, y, (10.0, 30.0, 100.0)),
                  "precision_recall": precision_recall(x, y, k=3)}
        secs = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": secs, "peak_rss_mb": peak_kib / 1024, "values": values}


def _run_case(case: str, n: int, old: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--n", str(n)]
    if old:
        cmd.append("--old")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1],
                "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10000])
    ap.add_argument("--cases", nargs="+", default=["eval digits", "pairwise 784-d"])
    ap.add_argument("--no-old", action="store_true", help="skip the old full-matrix code")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--old", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.n[0], args.old)))
        return
    if "eval digits" in args.cases:  # train and cache the classifier outside the timings
        from ganflow.metrics.classifier import feature_net

        feature_net("digits")
    rows = []
    for n in args.n:
        for case in args.cases:
            for old in ([False] if args.no_old else [True, False]):
                res = _run_case(case, n, old)
                row = {"case": case, "n": n, "code": "old (full matrices)" if old else
                       "blocked", **{k: res.get(k) for k in ("peak_rss_mb", "seconds",
                                                              "error")}}
                rows.append({**row, "values": res.get("values")})
                print(f"{case} n={n} {row['code']}: {res.get('peak_rss_mb', 0):.0f} MB, "
                      f"{res.get('seconds', 0):.1f} s", file=sys.stderr, flush=True)
    print_table(rows, ["case", "n", "code", "peak_rss_mb", "seconds", "error"])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": environment(), "rows": rows},
                                        indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
