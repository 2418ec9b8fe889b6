r"""Flow-map's fit on ring8: one run of a TrainConfig variant per call (flow-map issue).

The base is bench_train.py's "flow-map annealed" (one D step per iteration, no warm-up,
10 fit steps, eps decaying to 1 %) with re-pairing off and the MSE fit; ``--cfg`` adds
TrainConfig overrides as JSON, e.g. ``'{"repair_every": 100, "fit_loss": "l1"}'``. The JSON
holds the resolved config, every metrics row, the final row and the first row at the
quality bar (all modes, HQ >= 80 %, mode KL <= 0.05).

    python benchmarks/bench_flow_map_fit.py --name repair-l1 --seed 0 --iterations 3000 \
        --cfg '{"repair_every": 100, "fit_loss": "l1"}' \
        --json benchmarks/results/flow_map_fit/fm_libl1rep100_s0_it3000.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _common import measured_config

from ganflow.metrics import first_at_quality_bar
from ganflow.training import read_metrics, train

BASE = {"method": "flow-map", "d_steps": 1, "d_warmup": 0, "fit_steps": 10, "eps_decay": 0.01,
        "repair_every": 0, "fit_loss": "mse"}
KEYS = ("modes", "hq", "particles_hq", "mode_kl", "pair_rms", "seconds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--cfg", default="{}", help="TrainConfig overrides (JSON) on top of BASE")
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = measured_config(data="ring8", iterations=a.iterations, eval_every=a.eval_every,
                          seed=a.seed, **{**BASE, **json.loads(a.cfg)})
    out = Path(tempfile.mkdtemp(prefix="ganflow-fm-")) / "run"
    t0 = time.perf_counter()
    train(cfg, out=out, progress=False)
    rows = read_metrics(out)
    hit = first_at_quality_bar(rows, 8)
    res = {"name": a.name, "seed": a.seed,
           "config": json.loads((out / "config.json").read_text()), "rows": rows,
           "final": rows[-1], "wall_train_s": time.perf_counter() - t0,
           "bar_first": ({"iteration": hit["iteration"], "seconds": hit["seconds"]}
                         if hit else None)}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=1) + "\n")
    for row in rows:
        print(row["iteration"], {k: row.get(k) for k in KEYS})
    print("bar first met:", res["bar_first"])


if __name__ == "__main__":
    main()
