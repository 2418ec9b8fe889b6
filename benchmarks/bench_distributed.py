r"""Benchmark of issue 6: the same training on 1 and 2 processes (torch.distributed, gloo).

Runs ``ganflow train`` on grid25 as a plain process and under ``torchrun
--nproc_per_node=2`` (each rank draws its own batch; gradients are averaged, so the
effective batch is 2 x --batch-size), one configuration after another, and reads each
run's metrics: iterations per second (the trainer's own clock, evaluations included),
the final mode metrics, and the wall time to DESIGN.md's bar (all modes, HQ >= 80 %,
mode-weight KL <= 0.05) or "not reached".

Configurations: 1 process x 512 (the default), 2 x 256 (the same effective batch: pure
overhead of the second process) and 2 x 512 (twice the batch per iteration). On a 2-core
machine nothing can be gained; the point is what it costs. With a GPU lent, ``--device
cuda`` runs the same with NCCL (one GPU per rank). ``--configs`` chooses others
("PROCESSES x BATCH") and ``--train-args`` adds options to every launch (another method).

    python benchmarks/bench_distributed.py --iterations 3000
    python benchmarks/bench_distributed.py --data ring8 --configs "1 x 1024" "2 x 512" \
        --train-args="--method flow-chain --particles 4000 ..." --json F
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, environment, print_table
from _interleave import quality_row

CONFIGS = [("1 x 512", 1, 512), ("2 x 256", 2, 256), ("2 x 512", 2, 512)]


def launch(nproc: int, args: list[str], timeout: float) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "ganflow", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "ganflow", "train", *args]
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, timeout=timeout, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="grid25")
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", nargs="+", default=[c[0] for c in CONFIGS],
                    help='"PROCESSES x BATCH_PER_RANK" each, the first the baseline')
    ap.add_argument("--train-args", default="",
                    help="options added to every `ganflow train` (one quoted string; "
                    "--method flow unless it names a --method)")
    ap.add_argument("--json", type=Path, default=RESULTS / "bench_distributed.json")
    args = ap.parse_args()
    configs = []
    for name in args.configs:
        try:
            nproc, batch = (int(v) for v in name.split("x"))
        except ValueError:
            ap.error(f"--configs {name!r}: expected 'PROCESSES x BATCH', e.g. '2 x 256'")
        configs.append((name, nproc, batch))
    # Algorithm 1 unless the options name another method: it was the default when the
    # committed JSON was measured
    train_args = shlex.split(args.train_args)
    if "--method" not in train_args:
        train_args = ["--method", "flow", *train_args]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, nproc, batch in configs:
            out = Path(tmp) / name.replace(" ", "")
            wall = launch(nproc, ["--data", args.data, "--iterations", str(args.iterations),
                                  "--eval-every", str(args.eval_every), "--batch-size",
                                  str(batch), "--seed", str(args.seed), "--device",
                                  args.device, "--no-progress", "--out", str(out),
                                  *train_args],
                          timeout=3600)
            q = quality_row(out, args.data)
            rows.append({"config": name, "processes": nproc, "batch_per_rank": batch,
                         "effective_batch": nproc * batch,
                         "it_per_s": q["iteration"] / q["seconds"], "launch_wall_s": wall,
                         **q})
            print(f"{name}: {rows[-1]['it_per_s']:.1f} it/s", flush=True)
    print_table(rows, ["config", "effective_batch", "it_per_s", "seconds", "launch_wall_s",
                       "modes", "hq", "mode_kl", "w2", "time_to_quality_s"])
    base, base_batch = rows[0]["it_per_s"], rows[0]["effective_batch"]
    for r in rows[1:]:
        samples = r["it_per_s"] * r["effective_batch"] / (base * base_batch)
        print(f"{r['config']}: {r['it_per_s'] / base:.2f}x the iterations/s of "
              f"{rows[0]['config']}, {samples:.2f}x the samples/s")
    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps({"env": environment(), "args": {
        k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
