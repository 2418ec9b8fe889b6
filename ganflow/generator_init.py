r"""Start a generator from a given law rho_0 (``--init``), so a run and the PDE share u(0).

The Fokker-Planck solution u(t) of eq. (25) is defined by its start rho_0; a generator
run can be compared with it only if G_0 pushes the latent law N(0, I) to rho_0.
:func:`fit_generator_to_law` regresses G on a transport map from N(0, I) to rho_0 before
training starts:

* rho_0 = N(mu, s^2 I) (one Gaussian component) and latent dimension >= d: the map is
  known exactly, T(z) = mu + s z_{1..d} (the optimal map from the first d latent
  coordinates), and G is fitted to it point by point;
* otherwise: set-wise, each step pairs a batch G(z_1..m) with m fresh draws of rho_0 by
  the optimal assignment on squared distances (sorting in 1-D, where it is exact and
  cheap; the Hungarian algorithm above) and takes a step on the paired MSE: minibatch
  optimal-transport fitting, whose fixed point pushes N(0, I) to rho_0.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import Dataset
from .fitting import assignment_permutation

__all__ = ["exact_init_map", "fit_generator_to_law"]


def exact_init_map(law: Dataset, latent_dim: int):
    r"""T(z) = mu + s z_{1..d} when ``law`` is one isotropic Gaussian N(mu, s^2 I) and the
    latent dimension is at least d; else None (the set-wise fit applies)."""
    mix = law.mixture
    if mix is None or mix.n_components != 1 or latent_dim < law.dim:
        return None
    mu = mix.means[0].float()
    s = float(mix.stds[0])
    d = law.dim
    return lambda z: mu.to(z.device) + s * z[:, :d]


def fit_generator_to_law(
    G: nn.Module,
    law: Dataset,
    *,
    latent_dim: int,
    generator: torch.Generator,
    steps: int = 2000,
    batch_size: int = 512,
    lr: float = 1e-3,
    device: torch.device | str = "cpu",
) -> float:
    r"""Fit G so that G(z), z ~ N(0, I_latent_dim), has the law ``law`` (module docstring).

    Adam (lr ``lr`` decaying linearly to 1 %, ``steps`` steps of ``batch_size``); batches
    are drawn from ``generator`` (on the CPU). Returns the mean squared residual of the
    last 50 steps. G's parameters are changed in place; no optimizer state is kept."""
    exact = exact_init_map(law, latent_dim)
    opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.01, total_iters=steps)
    # 1-D set-wise pairing by sorting (the exact 1-D optimal assignment); Hungarian above
    m = batch_size if exact is not None or law.dim == 1 else min(batch_size, 256)
    tail: list[float] = []
    for _ in range(steps):
        z = torch.randn(m, latent_dim, generator=generator).to(device)
        x = G(z)
        if exact is not None:
            y = exact(z)
        else:
            y = law.sample(m, generator).to(device=device, dtype=x.dtype)
            if law.dim == 1:
                y = y.sort(dim=0).values[x.detach()[:, 0].argsort().argsort()]
            else:
                y = y[assignment_permutation(x, y)]
        loss = (x - y).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        tail = (tail + [float(loss.detach())])[-50:]
    return sum(tail) / len(tail)
