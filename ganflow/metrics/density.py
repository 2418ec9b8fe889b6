r"""Divergences between densities (known ones, or a KDE of samples), and sample kernels.

Re-exported by :mod:`ganflow.metrics`. JSD and L1/TV follow docs/theory.md section 1:

    JSD(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m),  m = (p + q)/2,  0 <= JSD <= ln 2,
    ||p - q||_1 = 2 TV(p, q).

* d <= 2: on a grid (:func:`divergences_on_grid`), both densities renormalised on the box;
* any d: by Monte Carlo (:func:`jsd_monte_carlo`), with its standard error.

A sample set enters through :class:`KDEDensity`: a Gaussian KDE with the bandwidth rule
of :mod:`ganflow.kde` (Silverman by default), exact log-density and a sampler.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._errors import GanflowError
from .._pairwise import pair_sums
from ..grid import Grid
from ..kde import kde_log_density, resolve_bandwidth
from ..pde import jsd_on_grid, l1_on_grid
from ..targets import GaussianMixture
from ._coerce import as_samples

__all__ = [
    "KDEDensity",
    "divergences_on_grid",
    "jsd_monte_carlo",
    "kde_log_likelihood",
    "mmd",
    "sliced_wasserstein",
]


def _points(x, what: str) -> torch.Tensor:
    return torch.from_numpy(as_samples(x, what, min_rows=2))


class KDEDensity:
    r"""Gaussian KDE rho_hat(x) = (1/N) sum_j N(x; X_j, b^2 I) of samples X (N, d).

    ``bandwidth``: ``"silverman"`` (b = sigma (4/((d+2)N))^(1/(d+4)), the documented
    default) or a positive float. Provides ``log_prob`` and ``sample`` like a mixture.
    """

    def __init__(self, samples, bandwidth: float | str = "silverman") -> None:
        self.points = _points(samples, "samples")
        self.bandwidth = resolve_bandwidth(self.points, bandwidth)
        self.name = "kde"

    @property
    def dim(self) -> int:
        return int(self.points.shape[1])

    def log_prob(self, x):
        is_np = not isinstance(x, torch.Tensor)
        t = torch.as_tensor(np.asarray(x, dtype=np.float64)) if is_np else x.double()
        out = kde_log_density(t, self.points, self.bandwidth)
        return out.numpy() if is_np else out

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        idx = torch.randint(len(self.points), (n,), generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.points[idx] + self.bandwidth * noise).to(dtype)


def divergences_on_grid(
    p: GaussianMixture | KDEDensity,
    q: GaussianMixture | KDEDensity,
    *,
    box: float | None = None,
    cells: int = 256,
) -> dict[str, float]:
    r"""JSD(p, q) and ||p - q||_1 on the grid [-L, L]^d (d <= 2), midpoint rule.

    Both densities are evaluated at the cell centres and renormalised on the box (so
    mass outside the box is ignored: choose L to hold both). Returns
    ``{"jsd", "l1", "tv", "cells", "box"}``.
    """
    if p.dim != q.dim:
        raise GanflowError(f"densities have dimensions {p.dim} and {q.dim}; they must agree")
    if box is None:
        box = max(_extent(p), _extent(q))
    grid = Grid(p.dim, float(box), cells)
    pts = grid.points()
    vol = grid.cell_volume
    u = _normalised(np.asarray(p.log_prob(pts)), vol)
    v = _normalised(np.asarray(q.log_prob(pts)), vol)
    l1 = l1_on_grid(u, v, vol)
    return {
        "jsd": jsd_on_grid(u, v, vol),
        "l1": l1,
        "tv": 0.5 * l1,
        "cells": cells,
        "box": float(box),
    }


def _extent(dens) -> float:
    if isinstance(dens, GaussianMixture):
        return dens.extent()
    pts = dens.points
    return float(pts.abs().max()) + 6 * dens.bandwidth


def _normalised(log_vals: np.ndarray, vol: float) -> np.ndarray:
    log_z = float(torch.logsumexp(torch.from_numpy(log_vals), 0)) + math.log(vol)
    return np.exp(log_vals - log_z)


def jsd_monte_carlo(
    p: GaussianMixture | KDEDensity,
    q: GaussianMixture | KDEDensity,
    *,
    n: int = 20000,
    seed: int = 0,
) -> tuple[float, float]:
    r"""JSD(p, q) by Monte Carlo in any dimension; returns (estimate, standard error).

    JSD = 1/2 E_p[ln(2p/(p+q))] + 1/2 E_q[ln(2q/(p+q))], each expectation over ``n``
    draws; the standard error is that of the two independent sample means.
    """
    if p.dim != q.dim:
        raise GanflowError(f"densities have dimensions {p.dim} and {q.dim}; they must agree")
    gen = torch.Generator().manual_seed(int(seed))
    terms = []
    for a, b in ((p, q), (q, p)):
        x = a.sample(int(n), generator=gen, dtype=torch.float64)
        la, lb = a.log_prob(x), b.log_prob(x)
        # ln(2a/(a+b)) = ln 2 - softplus(lb - la), finite for any pair of log-densities
        terms.append(math.log(2) - torch.nn.functional.softplus(lb - la))
    est = 0.5 * float(terms[0].mean() + terms[1].mean())
    se = 0.5 * math.sqrt(float(terms[0].var()) / n + float(terms[1].var()) / n)
    return est, se


def kde_log_likelihood(samples, heldout, bandwidth: float | str = "silverman") -> float:
    """Mean log-density of ``heldout`` (k, d) under the KDE of ``samples`` (n, d), in nats."""
    kde = KDEDensity(samples, bandwidth)
    return float(kde.log_prob(_points(heldout, "heldout")).mean())


def mmd(x, y, bandwidths=(0.1, 0.5, 1.0, 2.0)) -> dict[float, float]:
    r"""Unbiased squared MMD with the Gaussian kernel exp(-|a-b|^2/(2 s^2)) per bandwidth s.

    MMD^2 = mean_{i!=j} k(x_i,x_j) + mean_{i!=j} k(y_i,y_j) - 2 mean_{i,j} k(x_i,y_j);
    returns ``{s: MMD^2}`` (about 0, sometimes slightly negative, for one law).
    """
    a, b = _points(x, "x"), _points(y, "y")
    if a.shape[1] != b.shape[1]:
        raise GanflowError(f"x and y must have the same dimension, got {a.shape[1]}, {b.shape[1]}")
    n, k = len(a), len(b)
    scales = [float(s) for s in bandwidths]
    for s in scales:
        if not s > 0:
            raise GanflowError(f"MMD bandwidths must be positive, got {s!r}")
    # in tiles (ganflow._pairwise), every bandwidth per tile: memory flat in n and k
    kernels = [lambda d, s=s: torch.exp(-(d ** 2) / (2 * s * s)) for s in scales]
    saa, sbb, sab = pair_sums(a, None, kernels), pair_sums(b, None, kernels), pair_sums(
        a, b, kernels)
    out = {}
    for s, kaa, kbb, kab in zip(scales, saa, sbb, sab, strict=True):
        val = (kaa - n) / (n * (n - 1)) + (kbb - k) / (k * (k - 1)) - 2 * kab / (n * k)
        out[s] = float(val)
    return out


def sliced_wasserstein(x, y, *, n_projections: int = 200, seed: int = 0) -> float:
    """Sliced W2 (POT's ``sliced_wasserstein_distance``, uniform weights, seeded)."""
    import ot

    a, b = _points(x, "x").numpy(), _points(y, "y").numpy()
    if a.shape[1] != b.shape[1]:
        raise GanflowError(f"x and y must have the same dimension, got {a.shape[1]}, {b.shape[1]}")
    return float(ot.sliced_wasserstein_distance(a, b, n_projections=n_projections, seed=seed))
