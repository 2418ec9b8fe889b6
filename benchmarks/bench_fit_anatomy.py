r"""Anatomy of the generator's fit step (eq. 23): how far does it move the samples, and
where to, compared with the move eps x drift that eq. (22) asks for?

Companion of bench_divergence.py (evaluation issue, benchmark 3). For each configuration
(optimizer x pairing) one ring8 run of Algorithm 1 from the same seed, and at every
iteration, on the fit's own batch z (before and after its K = 1 step):

- ``asked``: mean |y_i - x_i| with y = x + eps drift (eq. 22), before any re-pairing;
- ``moved``: mean |G_new(z_i) - G_old(z_i)|, what the step actually did;
- ``cos``: mean cosine between the actual move and eps drift (1 = along the flow);
- ``permuted``: fraction of samples the optimal assignment pairs with another target.

Averages over windows of iterations are printed; ``moved / asked`` far above 1 means the
generator runs ahead of the flow (Adam's step has the size of its learning rate, not of
the residual), ``cos`` near 0 means it moves across the flow.

    python benchmarks/bench_fit_anatomy.py --json benchmarks/results/bench_fit_anatomy.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _common import environment

from ganflow.algorithm import calibrate_discriminator, push_targets
from ganflow.data import load_data
from ganflow.fitting import assignment_permutation
from ganflow.networks import make_discriminator, make_generator

# (optimizer, lr_g, lr_d): ganflow train's Adam, and bench_divergence.py's plain SGD
OPTIMIZERS = {"adam": (1e-3, 1e-3), "sgd": (0.05, 0.1)}


def _optimizer(name: str, net: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(net.parameters(), lr=lr)
    return torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))


def anatomy(optimizer: str, pairing: str, *, data: str, eps: float, iterations: int,
            window: int, batch: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ds = load_data(data)
    d = ds.dim
    G, D = make_generator(2, d), make_discriminator(d)
    lr_g, lr_d = OPTIMIZERS[optimizer]
    opt_g, opt_d = _optimizer(optimizer, G, lr_g), _optimizer(optimizer, D, lr_d)
    rows, acc = [], []
    for it in range(1, iterations + 1):
        calibrate_discriminator(D, opt_d, lambda: ds.sample(batch, gen),
                                lambda: G(torch.randn(batch, 2, generator=gen)).detach(),
                                steps=1, tol=None, max_steps=1)
        z = torch.randn(batch, 2, generator=gen)
        with torch.no_grad():
            x0 = G(z)
        _, drift = push_targets(D, x0, eps=1.0, divergence="jsd")
        want = eps * drift
        y = x0 + want
        permuted = 0.0
        if pairing == "assignment":
            perm = assignment_permutation(x0, y)
            permuted = float((perm != torch.arange(batch)).float().mean())
            y = y[perm]
        loss = (G(z) - y).pow(2).sum(-1).mean()
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        with torch.no_grad():
            step = G(z) - x0
        acc.append((float(want.norm(dim=-1).mean()), float(step.norm(dim=-1).mean()),
                    float(torch.nn.functional.cosine_similarity(step, want, dim=-1).mean()),
                    permuted, float(x0.norm(dim=-1).mean())))
        if it % window == 0:
            cols = list(zip(*acc, strict=True))
            asked, moved, cos, perm_frac, radius = (sum(c) / len(c) for c in cols)
            rows.append({"iterations": f"{it - window + 1}-{it}", "asked": asked,
                         "moved": moved, "moved/asked": moved / max(asked, 1e-12),
                         "cos": cos, "permuted": perm_frac, "radius": radius})
            acc = []
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="ring8")
    ap.add_argument("--eps", type=float, default=1.0)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--window", type=int, default=250)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {"env": environment(), **{k: v for k, v in vars(args).items() if k != "json"},
           "runs": {}}
    for optimizer in OPTIMIZERS:
        for pairing in ("index", "assignment"):
            name = f"{optimizer} {pairing}"
            rows = anatomy(optimizer, pairing, data=args.data, eps=args.eps,
                           iterations=args.iterations, window=args.window,
                           batch=args.batch_size, seed=args.seed)
            out["runs"][name] = rows
            print(f"\n{name} (data {args.data}, eps {args.eps}, seed {args.seed}; radius = "
                  "mean |G(z)|, ring8's modes are at 2)")
            print(f"{'iterations':>11} {'asked':>8} {'moved':>8} {'moved/asked':>11} "
                  f"{'cos':>6} {'permuted':>8} {'radius':>7}")
            for r in rows:
                print(f"{r['iterations']:>11} {r['asked']:>8.4f} {r['moved']:>8.4f} "
                      f"{r['moved/asked']:>11.2f} {r['cos']:>+6.2f} {r['permuted']:>8.2f} "
                      f"{r['radius']:>7.2f}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
