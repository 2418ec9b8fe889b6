r"""Benchmark 3 of the evaluation issue: the divergence phenomenon (docs/theory.md section 6).

Section 6 says the paper's Algorithm 1 (K = 1 fit step, index pairing: the GAN) can
leave the gradient flow and cycle or collapse because its point-wise fit stops
half-way, and proposes two cures: more fitting steps on the same targets (K > 1) and
set-wise fitting (targets re-paired by an optimal assignment, or, our variant, the
energy distance between the two point sets as the fit loss). This script trains
every configuration from the SAME initialisation and seed (same networks, same first
batches), interleaved in one process (benchmarks/_interleave.py), and reports for each
whether it converged, collapsed or ran away, with the sample sets side by side at
fixed iterations (``results/divergence-<data>.png``) and the number of modes and W2
along the run (``results/divergence-<data>-curves.png``).

The configurations use plain gradient descent with constant steps (``--optimizer
sgd``, no learning-rate decay): the setting in which section 6's argument is made (a
descent step moves G(z_i) by a fraction of the distance to its target). Adam rows
(``ganflow train``'s optimizer, constant learning rate) are there for contrast, and a
``particles`` row moves the samples by the same discriminator's drift with no
generator at all (so no fit), which separates "the fit diverges" from "the drift
diverges"; the ``flow-map`` row fits a generator to persistent latent-particle pairs
moved by that drift (docs/theory.md section 8 (a)), the ``flow-chain`` row composes the
recorded steps of that drift instead (section 8 (c)); the ``+ R1`` rows change D instead of
the fit (``--d-penalty 1``: an R1 gradient penalty on the data, not in the paper).

Verdicts, per run, from its evaluations (modes / HQ / mode-weight KL per DESIGN.md):
``converged`` (the bar, all modes with HQ >= 80 % and mode KL <= 0.05, holds at the
last two evaluations), ``ran away`` (W2 to the data above 5, several times the data's
extent: the samples left and the saturated discriminator cannot pull them back),
``collapsed`` (at most half the modes at the end; ``peak`` in the table is the most
modes it ever covered), ``diverged`` (a NaN/Inf stopped the trainer), otherwise ``not
converged``.

    python benchmarks/bench_divergence.py --json benchmarks/results/bench_divergence.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import RESULTS, environment, measured_config
from _interleave import plot_samples_at_times, quality_row, run_interleaved

from ganflow._io import write_json_atomic
from ganflow.data import load_data
from ganflow.metrics import first_at_quality_bar
from ganflow.training import read_metrics

# section 6's setting: plain gradient descent, constant step sizes, eps = 1 (the paper)
SGD = {"optimizer": "sgd", "lr_g": 0.05, "lr_d": 0.1, "lr_decay": 1.0}
ADAM = {"optimizer": "adam", "lr_decay": 1.0}  # ganflow train's Adam, constant lr
# flow-map under that discriminator (one SGD step per iteration, no warm-up), G regressed
# on its pairs by 10 Adam steps at a constant 1e-3 per iteration
SGD_FLOW_MAP_ADAM_FIT = {**SGD, "method": "flow-map", "d_steps": 1, "d_warmup": 0,
                         "fit_steps": 10, "fit_optimizer": "adam", "lr_g": 1e-3}

CONFIGS: dict[str, dict] = {
    "SGD K=1 index (Alg. 1)": {**SGD},
    "SGD K=10 index": {**SGD, "fit_steps": 10},
    "SGD K=1 assignment": {**SGD, "pairing": "assignment"},
    # set-wise by a discrepancy instead of a pairing (section 6's other suggestion)
    "SGD K=1 energy": {**SGD, "pairing": "energy"},
    "SGD K=10 index eps=0.1": {**SGD, "fit_steps": 10, "eps": 0.1},
    "SGD K=10 assignment eps=0.1": {**SGD, "fit_steps": 10, "pairing": "assignment",
                                    "eps": 0.1},
    "SGD particles (no fit)": {**SGD, "method": "particles", "particle_init": "generator"},
    # a generator that follows the particles: regressed on persistent (z_i, x_i) pairs,
    # the x_i moved by the same drift as the particles row (one D step, no warm-up), G
    # fitted by 10 SGD steps per iteration on fresh batches of pairs
    "SGD flow-map": {**SGD, "method": "flow-map", "d_steps": 1, "d_warmup": 0,
                     "fit_steps": 10},
    # the same SGD discriminator and particle moves, G's regression by Adam (constant
    # 1e-3): the regression is not a player of the game, and a constant SGD step does not
    # settle its L1 fit
    "SGD flow-map, Adam fit": SGD_FLOW_MAP_ADAM_FIT,
    # and re-paired every 25 iterations instead of 100: each re-pairing moves G's targets
    # less, so its samples dip less after one
    "SGD flow-map, Adam fit, re-pair 25": {**SGD_FLOW_MAP_ADAM_FIT, "repair_every": 25},
    # the same with 2 SGD discriminator steps per iteration (a better calibrated drift;
    # 5 steps overshot at eps 1), and with 2 steps at half the step eps
    "SGD flow-map, Adam fit, re-pair 25, D2": {**SGD_FLOW_MAP_ADAM_FIT, "repair_every": 25,
                                               "d_steps": 2},
    "SGD flow-map, Adam fit, re-pair 25, D2 eps 0.5": {
        **SGD_FLOW_MAP_ADAM_FIT, "repair_every": 25, "d_steps": 2, "eps": 0.5},
    # one D step at eps 1, the flow's step decaying linearly to 0.1 (D's and the fit's
    # steps stay constant): the particles, which a constant-step SGD D moves at eps 1,
    # lost modes at times
    "SGD flow-map, Adam fit, re-pair 25, eps decay 0.1": {
        **SGD_FLOW_MAP_ADAM_FIT, "repair_every": 25, "eps_decay": 0.1},
    # the re-pair-25 row with 4x the batch (D's SGD steps on 2048 data and 2048 particles,
    # the fit on 2048 pairs): a less noisy discriminator step at the same learning rate
    "SGD flow-map, Adam fit, re-pair 25, batch 2048": {
        **SGD_FLOW_MAP_ADAM_FIT, "repair_every": 25, "batch_size": 2048},
    # both: 4x the batch (under which the particles row converged in 3 of 3) and the
    # step decaying to 0.1 (fewer late mode changes of the particles)
    "SGD flow-map, Adam fit, re-pair 25, batch 2048, eps decay 0.1": {
        **SGD_FLOW_MAP_ADAM_FIT, "repair_every": 25, "batch_size": 2048, "eps_decay": 0.1},
    # the generator as the composed flow map of the same particles (no fit): fresh draws
    # of G_0 moved by every recorded step of that discriminator
    "SGD flow-chain, batch 2048, eps decay 0.1": {
        **SGD, "method": "flow-chain", "d_steps": 1, "d_warmup": 0, "batch_size": 2048,
        "eps_decay": 0.1},
    # the same with a smooth (SiLU) D
    "SGD flow-chain, batch 2048, eps decay 0.1, SiLU D": {
        **SGD, "method": "flow-chain", "d_steps": 1, "d_warmup": 0, "batch_size": 2048,
        "eps_decay": 0.1, "activation": "silu"},
    # Algorithm 1 with the same batch and step schedule, for contrast
    "SGD K=1 index, batch 2048, eps decay 0.1": {**SGD, "batch_size": 2048, "eps_decay": 0.1},
    # the KL flow simulated faithfully: D calibrated (SGD steps until its held-out loss
    # stalls, at most 20) and the step cut by the CFL rule; with and without D's warm-up
    "SGD particles KL faithful": {**SGD, "method": "particles", "particle_init": "generator",
                                  "divergence": "kl", "faithful": True},
    "SGD particles KL faithful, warm-up 500": {
        **SGD, "method": "particles", "particle_init": "generator", "divergence": "kl",
        "faithful": True, "d_warmup": 500},
    # the particles row with the flow-map rows' other changes: eps decaying to 0.1, and
    # 4x the batch
    "SGD particles, eps decay 0.1": {**SGD, "method": "particles",
                                     "particle_init": "generator", "eps_decay": 0.1},
    "SGD particles, batch 2048": {**SGD, "method": "particles", "particle_init": "generator",
                                  "batch_size": 2048},
    # D regularised instead of the fit changed: an R1 penalty (gamma 1) on the data
    "SGD K=1 index + R1": {**SGD, "d_penalty": 1.0},
    "SGD K=10 index + R1": {**SGD, "fit_steps": 10, "d_penalty": 1.0},
    "SGD K=1 assignment + R1": {**SGD, "pairing": "assignment", "d_penalty": 1.0},
    # Adam with K = 10 or assignment pairing: see bench_train.py's every-configuration
    # table (both fail at 2000 iterations, 3 seeds)
    "Adam K=1 index (Alg. 1)": {**ADAM},
    "Adam K=1 energy": {**ADAM, "pairing": "energy"},
}

RAN_AWAY_W2 = 5.0


def verdict(rows: list[dict], n_modes: int) -> dict:
    """Classify one run from its evaluation rows (see the module docstring)."""
    evals = [r for r in rows if r.get("modes") is not None]
    last = evals[-1]
    peak = max(r["modes"] for r in evals)

    if len(evals) >= 2 and all(first_at_quality_bar([r], n_modes) for r in evals[-2:]):
        v = "converged"
    elif last["w2"] > RAN_AWAY_W2:
        v = "ran away"
    elif last["modes"] <= n_modes // 2:
        v = "collapsed"
    else:
        v = "not converged"
    out = {"verdict": v, "peak_modes": peak,
           "modes_trace": [r["modes"] for r in evals],
           "w2_trace": [round(r["w2"], 3) for r in evals],
           "iterations_trace": [r["iteration"] for r in evals]}
    if "particles_modes" in last:  # flow-map: the pairs' own particles, the flow's state
        out["particles_modes_trace"] = [r.get("particles_modes") for r in evals]
        out["particles_hq_trace"] = [r.get("particles_hq") and round(r["particles_hq"], 3)
                                     for r in evals]
    return out


def plot_curves(traces: dict[str, list[dict]], n_modes: int, path: Path) -> Path:
    """Modes and W2 against iterations, one line per (config, seed)."""
    import matplotlib.pyplot as plt

    from ganflow.plots import save_figure

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, runs) in enumerate(traces.items()):
        for j, t in enumerate(runs):
            kw = {"color": colors[i % len(colors)], "alpha": 0.8, "lw": 1,
                  "label": name if j == 0 else None, "ls": ("-", "--", ":")[j % 3]}
            a.plot(t["iterations_trace"], t["modes_trace"], **kw)
            b.plot(t["iterations_trace"], t["w2_trace"], **kw)
    a.axhline(n_modes, color="k", lw=0.5)
    a.set_xlabel("iteration")
    a.set_ylabel("modes captured")
    b.set_xlabel("iteration")
    b.set_ylabel("W2 to the data")
    b.set_yscale("log")
    a.legend(fontsize=6)
    fig.suptitle("line style = seed (solid, dashed, dotted)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="ring8")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--iterations", type=int, default=4000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="", help="suffix of the figure names (a partial run)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tag = f"-{args.tag}" if args.tag else ""
    n_modes = load_data(args.data).mixture.n_components
    rows: list[dict] = []
    traces: dict[str, list[dict]] = {name: [] for name in args.configs}
    print(f"{'seed':>4} {'config':>28} {'verdict':>13} {'peak':>4} {'modes':>5} {'HQ%':>6} "
          f"{'modeKL':>7} {'W2':>7} {'wall_s':>7}  modes at each evaluation")
    for seed in args.seeds:
        cfgs = {name: measured_config(data=args.data, seed=seed, iterations=args.iterations,
                                      eval_every=args.eval_every, **CONFIGS[name])
                for name in args.configs}
        with tempfile.TemporaryDirectory() as tmp:
            runs = run_interleaved(cfgs, Path(tmp), 4 * args.eval_every, log=lambda m: None)
            for name, run in runs.items():
                v = verdict(read_metrics(run["dir"]), n_modes)
                if run["status"].startswith("error"):  # NaN/Inf: the trainer stopped it
                    v["verdict"] = "diverged"
                row = {"data": args.data, "seed": seed, "config": name,
                       "overrides": CONFIGS[name], "status": run["status"],
                       **quality_row(run["dir"], args.data), **v}
                rows.append(row)
                traces[name].append(v)
                print(f"{seed:>4} {name:>28} {v['verdict']:>13} {v['peak_modes']:>4} "
                      f"{row['modes']:>5} {100 * row['hq']:>6.1f} {row['mode_kl']:>7.3f} "
                      f"{row['w2']:>7.2f} {row['seconds']:>7.1f}  "
                      f"{' '.join(map(str, v['modes_trace']))}", flush=True)
            if seed == args.seeds[0]:
                RESULTS.mkdir(exist_ok=True)
                marks = sorted({0, args.eval_every, 2 * args.eval_every, args.iterations // 4,
                                args.iterations // 2, args.iterations})
                plot_samples_at_times({n: r["dir"] for n, r in runs.items()}, args.data,
                                      marks, RESULTS / f"divergence-{args.data}{tag}.png",
                                      by="iteration")
    plot_curves(traces, n_modes, RESULTS / f"divergence-{args.data}{tag}-curves.png")
    print("\nverdicts per config over seeds " + " ".join(map(str, args.seeds)) + ":")
    for name in args.configs:
        vs = [r["verdict"] for r in rows if r["config"] == name]
        print(f"  {name:>28}: {', '.join(vs)}")
    if args.json is not None:
        out = {"env": environment(), "data": args.data, "seeds": args.seeds,
               "iterations": args.iterations, "eval_every": args.eval_every, "rows": rows}
        write_json_atomic(args.json, out)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
