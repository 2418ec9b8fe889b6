r"""Benchmark of the trainer (issue 3): step overhead and the quality table.

Overhead: one ``flow`` iteration (K = 1, index pairing) through
:func:`ganflow.algorithm.algorithm_step`, and one through the whole training loop
(:func:`ganflow.training.loop.run_loop`: schedules, the method object, NaN checks, step
statistics), each against a minimal hand-written PyTorch GAN iteration (one D step, one
G step) with the same network sizes and batch, timed in interleaved rounds in one
process; the ratios of medians are reported.

Quality (issue 4, benchmark 1: time-to-quality): for each data set and seed, every
method of the grid is trained INTERLEAVED (``--chunk`` iterations each in turn, one
process; benchmarks/_interleave.py), so the wall times of one (data, seed) block were
measured under the same machine load. Reported: final modes, HQ %, mode-weight KL,
energy distance, W2, and each run's own wall time until all modes are captured with
HQ >= 80 % and mode-weight KL <= 0.05 (first evaluation that meets it; evaluations every
``--eval-every`` iterations, so an upper bound), or "not reached"; plus, per data set,
a figure of every method's samples at fixed wall times (first seed), in
``benchmarks/results/ttq-<data>.png``.

    python benchmarks/bench_train.py --overhead-only
    python benchmarks/bench_train.py --data ring8 --seeds 0 1 2 --iterations 10000 \
        --json bench_train.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import RESULTS, environment, measured_config
from _interleave import (
    QUALITY_HEADER,
    format_quality_row,
    plot_samples_at_times,
    quality_row,
    run_interleaved,
)
from bench_divergence import CONFIGS as DIVERGENCE_CONFIGS

from ganflow._io import write_json_atomic
from ganflow.algorithm import StepConfig, algorithm_step
from ganflow.data import load_data
from ganflow.networks import make_discriminator, make_generator
from ganflow.training.loop import run_loop
from ganflow.training.session import Session

# flow-map with one D step, 10 L1 fit steps re-paired every 100 iterations, eps decaying
# to 1 %; and its configuration that converged under bench_divergence.py's SGD D
_FLOW_MAP_REPAIR_L1 = {"method": "flow-map", "d_steps": 1, "d_warmup": 0, "fit_steps": 10,
                       "eps_decay": 0.01, "repair_every": 100, "fit_loss": "l1"}
_SGD_FLOW_MAP_B2048 = DIVERGENCE_CONFIGS[
    "SGD flow-map, Adam fit, re-pair 25, batch 2048, eps decay 0.1"]

# name -> TrainConfig overrides (on top of the defaults of `ganflow train`)
METHODS: dict[str, dict] = {
    "gan-ns": {"method": "gan-ns"},
    "gan": {"method": "gan"},
    **{f"flow K={k} {p}": {"method": "flow", "fit_steps": k, "pairing": p}
       for k in (1, 5, 20) for p in ("index", "assignment")},
    "flow faithful": {"method": "flow", "faithful": True},
    # Algorithm 1 on the faster flows of bench_flows.py (ganflow's extension, section 7):
    # same K = 1 index step, the drift of the KL or chi^2 divergence instead of the JSD
    **{f"flow {dv}": {"method": "flow", "divergence": dv} for dv in ("kl", "chi2")},
    # D regularised by an R1 penalty (--d-penalty 0.1; Mescheder et al. 2018, not in the
    # paper), for Algorithm 1 and for both GAN baselines alike
    **{f"{m} R1": {"method": m, "d_penalty": 0.1} for m in ("flow", "gan", "gan-ns")},
    # issue 7: no generator, 10 000 particles moved by D's drift, started from the
    # untrained generator's law (same D calibration and steps as "flow K=1 index")
    "particles": {"method": "particles", "particle_init": "generator"},
    # the same with eps decaying like the learning rates (to 1 %): annealed moves
    "particles annealed": {"method": "particles", "particle_init": "generator",
                           "eps_decay": 0.01},
    # a generator regressed on persistent latent-particle pairs, the particles moved as in
    # "particles annealed" (one D step per iteration, no warm-up), 10 fit steps
    "flow-map annealed": {"method": "flow-map", "d_steps": 1, "d_warmup": 0, "fit_steps": 10,
                          "eps_decay": 0.01, "repair_every": 0, "fit_loss": "mse"},
    # the same with flow-map's defaults for the fit: the pairs re-paired by minibatch OT
    # every 100 iterations and G regressed by the L1 loss; with and without R1 on D
    **{f"flow-map repair l1{tag}": {**_FLOW_MAP_REPAIR_L1, **extra}
       for tag, extra in (("", {}), (" R1", {"d_penalty": 0.1}))},
    # the same with the two changes that lifted flow-map's ring8 HQ under the SGD
    # discriminator: batches of 2048 and re-pairing every 25 iterations
    "flow-map repair l1, batch 2048, re-pair 25": {**_FLOW_MAP_REPAIR_L1, "repair_every": 25,
                                                   "batch_size": 2048},
    # the configuration that converged in 6 of 6 seeds under bench_divergence.py's SGD
    # discriminator (one constant SGD step of 0.1), G regressed by Adam, re-paired every 25
    # iterations, batches of 2048, eps decaying from 1 to 0.1
    "flow-map SGD D, batch 2048": _SGD_FLOW_MAP_B2048,
    # the same with G at fresh latents pulled onto the nearest particle (--fit-nearest 1)
    "flow-map SGD D, batch 2048, nearest 1": {**_SGD_FLOW_MAP_B2048, "fit_nearest": 1.0},
    # the generator as the composed flow map under the SGD discriminator of the
    # divergence protocol (batches of 2048, eps decaying to 0.1), where it converged in 3/3
    "flow-chain SGD D, batch 2048": DIVERGENCE_CONFIGS[
        "SGD flow-chain, batch 2048, eps decay 0.1"],
    # cheaper iterations: the drift at 10 000 particles is half of one, D's batch of 2048
    # a third; 3000 particles, and 4000 with batches of 1024
    "flow-chain SGD D, batch 2048, N3000": {
        **DIVERGENCE_CONFIGS["SGD flow-chain, batch 2048, eps decay 0.1"], "particles": 3000},
    "flow-chain SGD D, batch 1024, N4000": {
        **DIVERGENCE_CONFIGS["SGD flow-chain, batch 2048, eps decay 0.1"], "particles": 4000,
        "batch_size": 1024},
    # the same with R1 on D (--d-penalty 0.1), as the GAN rows' " R1" variants
    "flow-chain SGD D, batch 1024, N4000, R1": {
        **DIVERGENCE_CONFIGS["SGD flow-chain, batch 2048, eps decay 0.1"], "particles": 4000,
        "batch_size": 1024, "d_penalty": 0.1},
    # the generator as the composed flow map (no fit): the particles of "particles
    # annealed", its samples fresh draws of G_0 moved by every recorded step; N = 10 000
    # or 2000 particles, with and without R1 on D
    **{f"flow-chain{n_tag}{tag}": {"method": "flow-chain", "d_steps": 1, "d_warmup": 0,
                                   "eps_decay": 0.01, **n_over, **extra}
       for n_tag, n_over in (("", {}), (" N2000", {"particles": 2000}))
       for tag, extra in (("", {}), (" R1", {"d_penalty": 0.1}))},
}


def overhead(rounds: int = 7, iters: int = 1000, batch: int = 256, width: int = 128,
             depth: int = 3) -> dict:
    data = load_data("ring8")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    nets = {}
    for name in ("hand", "flow"):
        G = make_generator(2, 2, width=width, depth=depth)
        D = make_discriminator(2, width=width, depth=depth)
        nets[name] = (G, D, torch.optim.Adam(G.parameters(), 1e-3, betas=(0.5, 0.999)),
                      torch.optim.Adam(D.parameters(), 1e-3, betas=(0.5, 0.999)))

    def hand_iteration():
        G, D, og, od = nets["hand"]
        x = data.sample(batch, gen)
        z = torch.randn(batch, 2, generator=gen)
        with torch.no_grad():
            fake = G(z)
        od.zero_grad()
        loss_d = F.softplus(-D(x)).mean() + F.softplus(D(fake)).mean()
        loss_d.backward()
        od.step()
        z = torch.randn(batch, 2, generator=gen)
        og.zero_grad()
        loss_g = -F.softplus(D(G(z))).mean()
        loss_g.backward()
        og.step()
        return float(loss_d.detach()), float(loss_g.detach())  # as a trainer reads them

    cfg = StepConfig(method="flow", batch_size=batch)
    G, D, og, od = nets["flow"]

    def flow_iteration():
        algorithm_step(G, D, og, od, lambda m: data.sample(m, gen),
                       lambda m: torch.randn(m, 2, generator=gen), cfg)

    # the whole training loop (ganflow.training.loop.run_loop: schedules, the method
    # object's step, the NaN check, the step statistics), no evaluation inside a round;
    # each round ends with a checkpoint, as a stop between evaluations does
    run_dir = Path(tempfile.mkdtemp(prefix="ganflow-overhead-"))
    session = Session(measured_config(batch_size=batch, width=width, depth=depth,
                                      iterations=10**9, eval_every=10**9), run_dir, data)
    session.start()
    (run_dir / "metrics.jsonl").write_text("")  # no iteration-0 evaluation

    def trainer_iterations(n: int) -> None:
        run_loop(session, progress=False, stop_at=session.iteration + n)

    def repeat(fn):
        return lambda n: [fn() for _ in range(n)]

    runners = {"hand": repeat(hand_iteration), "flow": repeat(flow_iteration),
               "trainer": trainer_iterations}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():  # warm-up
        run(20)
    for _ in range(rounds):
        for name, run in runners.items():
            t = time.perf_counter()
            run(iters)
            times[name].append((time.perf_counter() - t) / iters)
    ms = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    return {"hand_ms": ms["hand"], "flow_ms": ms["flow"], "trainer_ms": ms["trainer"],
            "ratio": ms["flow"] / ms["hand"], "trainer_ratio": ms["trainer"] / ms["hand"],
            "rounds": rounds, "iters_per_round": iters, "batch": batch,
            "threads": torch.get_num_threads()}


def quality(datasets, seeds, methods, iterations: int, eval_every: int,
            on_block=lambda rows: None) -> list[dict]:
    """The interleaved blocks (one per data set and seed); ``on_block(rows so far)`` after
    each, so that a stopped sweep can keep the blocks it finished."""
    rows = []
    for data in datasets:
        for seed in seeds:
            cfgs = {name: measured_config(data=data, seed=seed, iterations=iterations,
                                          eval_every=eval_every, **METHODS[name])
                    for name in methods}
            with tempfile.TemporaryDirectory() as tmp:
                runs = run_interleaved(cfgs, Path(tmp), eval_every, log=lambda m: None)
                block = []
                for name, run in runs.items():
                    row = {"data": data, "seed": seed, "method": name,
                           "status": run["status"], **quality_row(run["dir"], data)}
                    block.append(row)
                    print(format_quality_row(row), flush=True)
                if seed == seeds[0]:
                    done = [r["seconds"] for r in block if r["seconds"]]
                    end = min(done) if done else 60.0
                    times = [round(end * f, 1) for f in (0.05, 0.15, 0.4, 1.0)]
                    RESULTS.mkdir(exist_ok=True)
                    plot_samples_at_times({n: r["dir"] for n, r in runs.items()}, data, times,
                                          RESULTS / f"ttq-{data}.png")
            rows += block
            on_block(rows)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["ring8", "grid25"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--iterations", type=int, default=10000)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--overhead-only", action="store_true")
    ap.add_argument("--no-overhead", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {"env": environment(), "threads": args.threads}
    if not args.no_overhead:
        out["overhead"] = ov = overhead()
        print(f"overhead: hand-written GAN {ov['hand_ms']:.3f} ms/it; flow K=1 step "
              f"{ov['flow_ms']:.3f} ms/it (ratio {ov['ratio']:.3f}); the training loop "
              f"{ov['trainer_ms']:.3f} ms/it (ratio {ov['trainer_ratio']:.3f}); medians of "
              f"{ov['rounds']} interleaved rounds", flush=True)
    def save() -> None:
        if args.json is not None:
            write_json_atomic(args.json, out)

    if not args.overhead_only:
        print(QUALITY_HEADER)
        out["iterations"] = args.iterations

        def keep(rows: list[dict]) -> None:  # after every block, atomically
            out["quality"] = rows
            save()
        out["quality"] = quality(args.data, args.seeds, args.methods, args.iterations,
                                 args.eval_every, on_block=keep)
    save()
    if args.json is not None:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
