r"""What a flow-chain run holds in memory as its chain grows, through segments and resumes.

A flow-chain run keeps one discriminator state per iteration (ganflow.drift_chain). This
script trains one of ``bench_train.py``'s configurations in segments of ``--segment``
iterations (``train(stop_at=...)``, then ``resume(stop_at=...)``, as an interleaved
benchmark does) and prints after each segment the states' own size next to the process's
resident memory (VmRSS) and its peak (VmHWM): the process should grow by about the
states' size, not more.

    python benchmarks/bench_chain_memory.py --json benchmarks/results/bench_chain_memory.json
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import torch
from _common import environment, measured_config, print_table
from bench_train import METHODS

from ganflow._io import write_json_atomic
from ganflow.training import load_run, resume, train


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")  # not Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="grid25")
    ap.add_argument("--method", default="flow-chain SGD D, batch 2048, N3000",
                    choices=[m for m in METHODS if m.startswith("flow-chain")])
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--segment", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = measured_config(data=args.data, seed=args.seed, iterations=args.iterations,
                          eval_every=args.segment, **METHODS[args.method])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        for stop in range(args.segment, args.iterations + 1, args.segment):
            if stop == args.segment:
                train(cfg, out=run_dir, progress=False, stop_at=stop)
            else:
                resume(run_dir, progress=False, stop_at=stop)
            gc.collect()
            chain_mb = sum(p.stat().st_size for p in (run_dir / "chain").iterdir()) / 2**20
            rows.append({"iteration": stop, "states_MB": chain_mb,
                         "rss_MB": _status_mb("VmRSS"), "peak_rss_MB": _status_mb("VmHWM")})
            print_table(rows[-1:], list(rows[0]))
        # a fresh load of the whole chain (what `ganflow sample` does)
        run = load_run(run_dir, device="cpu")
        run.sample(2500, seed=0)
        del run
        gc.collect()
        rows.append({"iteration": "load + sample 2500", "states_MB": chain_mb,
                     "rss_MB": _status_mb("VmRSS"), "peak_rss_MB": _status_mb("VmHWM")})
    print_table(rows, list(rows[0]))
    if args.json:
        write_json_atomic(args.json, {"benchmark": "bench_chain_memory",
                                      "environment": environment(), "args": {
                                          k: str(v) for k, v in vars(args).items()},
                                      "rows": rows})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
