r"""README's main command, measured: ``ganflow train`` as a user types it, then ``ganflow
sample`` from its run folder, beside the same for ``--method flow`` (Algorithm 1).

For each seed the two commands run one after the other as subprocesses (``python -m
ganflow train --seed S --out DIR --no-progress``, nothing else given: every option is
the default), each followed by ``ganflow sample DIR --n N``. It reports the wall time
of each command (the process's, imports included), the run's own training time, its
final modes / HQ / mode-weight KL, the iteration and time at which it first met the
quality bar, and the run folder's size on disk (a flow-chain run keeps its recorded
discriminators). Seeds run one after the other in one job, so the two methods of a
seed share the machine's load; the ratio within a seed is the comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, environment, print_table

from ganflow._io import write_json_atomic
from ganflow.metrics import first_at_quality_bar
from ganflow.training import read_metrics


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def one(method: str | None, seed: int, root: Path, n_sample: int) -> dict:
    run = root / f"{method or 'default'}-s{seed}"
    extra = [] if method is None else ["--method", method]
    train_s = _timed([sys.executable, "-m", "ganflow", "train", *extra, "--seed", str(seed),
                      "--out", str(run), "--no-progress"])
    sample_s = _timed([sys.executable, "-m", "ganflow", "sample", str(run), "--n",
                       str(n_sample), "--out", str(root / "x.npy"), "--force",
                       "--no-progress"])
    cfg = json.loads((run / "config.json").read_text())
    rows = read_metrics(run)
    last = rows[-1]
    hit = first_at_quality_bar(rows, 8 if cfg["data"] == "ring8" else 25)
    return {"method": method or "default", "resolved_method": cfg["method"], "seed": seed,
            "iterations": last["iteration"], "train_command_s": round(train_s, 1),
            "train_s": round(last["seconds"], 1),
            "sample_command_s": round(sample_s, 1), "sample_n": n_sample,
            "modes": last["modes"], "hq": last["hq"], "mode_kl": last["mode_kl"],
            "bar_iteration": hit["iteration"] if hit else None,
            "bar_s": round(hit["seconds"], 1) if hit else None,
            "run_folder_mb": round(_folder_mb(run), 1),
            "config": {k: cfg[k] for k in ("divergence", "optimizer", "lr_d", "lr_decay",
                                            "eps", "eps_decay", "batch_size", "particles",
                                            "d_steps", "d_warmup", "d_penalty")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["default", "flow"],
                    help="'default' (no --method given) and/or --method names")
    ap.add_argument("--sample-n", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=RESULTS / "bench_default.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for m in args.methods:
                rows.append(one(None if m == "default" else m, seed, Path(tmp), args.sample_n))
                r = rows[-1]
                print(f"seed {seed} {r['method']} ({r['resolved_method']}): train "
                      f"{r['train_command_s']} s, sample {r['sample_command_s']} s, "
                      f"{r['modes']} modes, HQ {r['hq']:.3f}, KL {r['mode_kl']:.4f}",
                      flush=True)
    print_table(rows, ["seed", "method", "resolved_method", "iterations", "train_command_s",
                       "train_s", "sample_command_s", "modes", "hq", "mode_kl",
                       "bar_iteration", "bar_s", "run_folder_mb"])
    write_json_atomic(args.json, {"benchmark": "bench_default", "environment": environment(),
                                  "args": {k: str(v) for k, v in vars(args).items()},
                                  "rows": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
