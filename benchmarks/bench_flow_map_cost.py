r"""What following the flow costs: flow-map and flow-chain against Algorithm 1, per unit of
flow time.

One flow-map iteration calibrates D (``d_steps``), moves all N particles of the pairs by
D's drift (a forward and backward pass of D over N points, in chunks), and takes K fit
steps of G on batches of pairs; one Algorithm 1 iteration (``flow``, K = 1) takes one D
step and one G step on a batch. Both advance the flow time by eps, so seconds per unit of
flow time = seconds per iteration / eps. This script times the phases of each, the two
methods interleaved (round-robin, ``--rounds`` rounds of ``--iterations`` iterations),
and reports the memory the pairs hold (N x (latent + d) floats) and the peak of the whole
process (ru_maxrss).

One flow-chain iteration is flow-map's without the fit: calibrate D, move the N particles,
and record D's state in the chain (:class:`ganflow.drift_chain.DriftChain`). Its costs that
grow with the run are reported per recorded step: the chain's memory (one D state) and the
time to move 1000 fresh samples by one recorded step (a forward and backward pass of D),
timed on the chain this benchmark recorded.

    python benchmarks/bench_flow_map_cost.py --json benchmarks/results/bench_flow_map_cost.json
    python benchmarks/bench_flow_map_cost.py --data digits --n 1797 --iterations 5
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, print_table  # noqa: E402

from ganflow._io import write_json_atomic  # noqa: E402
from ganflow.algorithm import StepConfig, algorithm_step  # noqa: E402
from ganflow.data import load_data  # noqa: E402
from ganflow.drift_chain import DriftChain  # noqa: E402
from ganflow.flow_map import fit_pairs, initial_pairs  # noqa: E402
from ganflow.networks import (  # noqa: E402
    make_conv_discriminator,
    make_conv_generator,
    make_discriminator,
    make_generator,
)
from ganflow.particle_flow import particle_step  # noqa: E402


def _nets(data, latent: int):
    torch.manual_seed(0)
    if data.image_shape is not None:
        return (make_conv_generator(latent, data.image_shape, width=32),
                make_conv_discriminator(data.image_shape, width=32))
    return make_generator(latent, data.dim, width=128, depth=3), make_discriminator(
        data.dim, width=128, depth=3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="grid25")
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--d-steps", type=int, default=20)
    ap.add_argument("--fit-steps", type=int, default=10)
    ap.add_argument("--kinds", nargs="+", default=["flow-map", "flow-chain"],
                    choices=["flow-map", "flow-chain"],
                    help="the particle methods timed against Algorithm 1")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(args.data)
    latent = 16 if data.image_shape is not None else (2 if data.dim <= 2 else data.dim)
    gen = torch.Generator().manual_seed(0)

    def sample_data(m: int) -> torch.Tensor:
        return data.sample(m, gen).float()

    def sample_latent(m: int) -> torch.Tensor:
        return torch.randn(m, latent, generator=gen)

    fm_cfg = StepConfig(method="flow", eps=1.0, batch_size=args.batch_size,
                        d_steps=args.d_steps, fit_steps=args.fit_steps)
    alg_cfg = StepConfig(method="flow", eps=1.0, batch_size=args.batch_size)
    states = {}
    for n in args.n:
        if "flow-map" in args.kinds:
            G, D = _nets(data, latent)
            z, x = initial_pairs(G, n, latent, torch.Generator().manual_seed(1))
            states[f"flow-map N={n}"] = dict(G=G, D=D, z=z, x=x, n=n,
                                             opt_g=torch.optim.Adam(G.parameters(), 1e-3),
                                             opt_d=torch.optim.Adam(D.parameters(), 1e-3))
        if "flow-chain" in args.kinds:  # flow-map's particles, D and schedule, no fit
            G, D = _nets(data, latent)
            _, x = initial_pairs(G, n, latent, torch.Generator().manual_seed(1))
            states[f"flow-chain N={n}"] = dict(
                D=D, x=x, n=n, opt_d=torch.optim.Adam(D.parameters(), 1e-3),
                chain=DriftChain(D, divergence=fm_cfg.divergence))
    G, D = _nets(data, latent)
    states["flow K=1 (Algorithm 1)"] = dict(G=G, D=D, opt_g=torch.optim.Adam(G.parameters(), 1e-3),
                                            opt_d=torch.optim.Adam(D.parameters(), 1e-3))
    times: dict[str, dict[str, float]] = {k: {"calibrate+move": 0.0, "fit": 0.0, "total": 0.0}
                                          for k in states}
    for _ in range(args.rounds):
        for name, s in states.items():  # interleaved: each round runs every method once
            for _ in range(args.iterations):
                t0 = time.perf_counter()
                if "n" in s:
                    def pick(m: int, n=s["n"]) -> torch.Tensor:
                        return torch.randint(0, n, (m,), generator=gen)
                    info = particle_step(s["D"], s["opt_d"], s["x"], sample_data, pick,
                                         fm_cfg)
                    if "chain" in s:  # recording the step is part of the move
                        s["chain"].record(s["D"], info.flow_time)
                    t1 = time.perf_counter()
                    if "G" in s:
                        fit_pairs(s["G"], s["opt_g"], s["z"], s["x"], pick,
                                  batch_size=args.batch_size, steps=args.fit_steps)
                else:
                    algorithm_step(s["G"], s["D"], s["opt_g"], s["opt_d"], sample_data,
                                   sample_latent, alg_cfg)
                    t1 = time.perf_counter()
                t2 = time.perf_counter()
                times[name]["calibrate+move"] += t1 - t0
                times[name]["fit"] += t2 - t1
                times[name]["total"] += t2 - t0
    count = args.rounds * args.iterations
    base = times["flow K=1 (Algorithm 1)"]["total"] / count
    rows = []
    for name, s in states.items():
        per = times[name]["total"] / count
        held = [s[k] for k in ("z", "x") if k in s]  # pairs, or the chain's particles
        pairs_mb = sum(t.numel() for t in held) * 4 / 2**20
        row = {"method": name, "s_per_iteration": per, "s_per_flow_time (eps 1)": per,
               "calibrate+move_s": times[name]["calibrate+move"] / count,
               "fit_s": times[name]["fit"] / count, "ratio_to_flow": per / base,
               "pairs_MB": pairs_mb, "chain_MB_per_step": None,
               "sample_ms_per_1000_per_step": None}
        if "chain" in s:
            chain = s["chain"]
            row["chain_MB_per_step"] = chain.state_size * 4 / 2**20
            with torch.no_grad():  # fresh draws of G_0 (the particles' start)
                x0 = _nets(data, latent)[0](sample_latent(1000))
            t0 = time.perf_counter()
            chain.apply(x0)
            row["sample_ms_per_1000_per_step"] = (time.perf_counter() - t0) / len(chain) * 1e3
        rows.append(row)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_table(rows, list(rows[0]))
    print(f"peak resident memory of this process: {peak_mb:.0f} MB")
    if args.json:
        write_json_atomic(args.json, {"benchmark": "bench_flow_map_cost",
                                      "environment": environment(), "data": args.data,
                                      "d_steps": args.d_steps, "fit_steps": args.fit_steps,
                                      "batch_size": args.batch_size,
                                      "iterations": count, "peak_rss_MB": peak_mb,
                                      "rows": rows})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
