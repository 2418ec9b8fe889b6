r"""Sample-quality metrics of the toy benchmarks (protocol: benchmarks/README.md).

* :func:`mode_metrics` - for a Gaussian-mixture target: modes captured, HQ fraction and
  mode-weight KL. A sample is high-quality (HQ) if it lies within 3 std of its nearest
  centre (that centre's std); a mode is captured if some HQ sample has it as nearest
  centre; the mode-weight KL is KL(p || w) of the histogram p of nearest centres over
  the HQ samples against the target weights w.
* :func:`energy_distance` - 2 E|X - Y| - E|X - X'| - E|Y - Y'| (unbiased within-sample
  terms, so two samples of one law score about 0, sometimes slightly below).
* :func:`w2` - exact 2-Wasserstein distance between two empirical measures (POT's
  ``emd2`` on the squared-Euclidean cost, square root of the optimum).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._errors import GanflowError
from .._pairwise import pair_sums
from ..targets import GaussianMixture
from ._coerce import as_samples

__all__ = ["HQ_STDS", "QUALITY_BAR", "energy_distance", "first_at_quality_bar", "mode_metrics",
           "mode_widths",
           "w2"]

HQ_STDS = 3.0
# Guards ln(p / w) for a component of weight exactly 0 (allowed in a mixture): an HQ
# sample there then costs p ln(p / 1e-12), large but finite (JSON has no inf).
_KL_EPS = 1e-12
# HQ samples a mode needs before its width is reported: with 10 the ratio's sampling
# error is about 1 / sqrt(2 d 10), 16 % in 2-D
_MIN_WIDTH_SAMPLES = 10


def _nearest_modes(x: np.ndarray, mixture: GaussianMixture):
    """Each sample's nearest mode, its distance to that mode's mean, and whether it is HQ."""
    if x.shape[1] != mixture.dim:
        raise GanflowError(
            f"samples must have dimension {mixture.dim} (the mixture's), got {x.shape[1]}"
        )
    mu, std = mixture.means.numpy(), mixture.stds.numpy()
    d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)  # (n, K)
    nearest = d2.argmin(1)
    dist = np.sqrt(d2[np.arange(len(x)), nearest])
    return nearest, dist, dist <= HQ_STDS * std[nearest]


def _widths(nearest, dist, hq, std, dim: int) -> list[float]:
    counts = np.bincount(nearest[hq], minlength=len(std))
    return [float(np.sqrt(np.mean(dist[hq & (nearest == k)] ** 2) / dim) / std[k])
            for k in range(len(std)) if counts[k] >= _MIN_WIDTH_SAMPLES]


def mode_widths(samples, mixture: GaussianMixture) -> list[float]:
    r"""How wide each mode's samples are, in mode order, for the modes with at least 10 HQ
    samples: the RMS per-axis distance of its HQ samples to its mean, over its std (the
    mixture itself gives sqrt(F_{d+2}(9) / F_d(9)), 0.974 in 2-D; a mode collapsed to a
    point 0). :func:`mode_metrics` reports their min and max."""
    x = as_samples(samples, "samples")
    nearest, dist, hq = _nearest_modes(x, mixture)
    return _widths(nearest, dist, hq, mixture.stds.numpy(), x.shape[1])


def mode_metrics(samples, mixture: GaussianMixture) -> dict[str, float | int]:
    r"""Modes captured, HQ fraction in [0, 1], mode-weight KL, and the modes' widths.

    ``samples`` has shape (n, d). With no HQ sample the histogram is undefined; the KL is
    then reported as max_k ln(1 / w_k), the largest value KL(p || w) can take (all mass
    on the lightest mode), so that "nothing is good" never reads as a perfect score.

    ``mode_width_min`` / ``mode_width_max``: the extremes of :func:`mode_widths`, which HQ
    cannot see (it counts a mode collapsed to a point as perfect); absent when no mode
    has 10 HQ samples.
    """
    x = as_samples(samples, "samples")
    nearest, dist, hq = _nearest_modes(x, mixture)
    w = mixture.weights.numpy()
    counts = np.bincount(nearest[hq], minlength=len(w))
    n_hq = int(hq.sum())
    if n_hq == 0:
        kl = float(np.log(1.0 / np.maximum(w, _KL_EPS)).max())
    else:
        p = counts / n_hq
        nz = p > 0  # 0 ln 0 = 0
        kl = float((p[nz] * np.log(p[nz] / np.maximum(w[nz], _KL_EPS))).sum())
    out = {"modes": int((counts > 0).sum()), "hq": n_hq / len(x), "mode_kl": max(kl, 0.0)}
    widths = _widths(nearest, dist, hq, mixture.stds.numpy(), x.shape[1])
    if widths:
        out.update(mode_width_min=min(widths), mode_width_max=max(widths))
    return out


def energy_distance(x, y) -> float:
    r"""Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| between samples (n, d) and (k, d).

    The within-sample means exclude the zero diagonal (U-statistics), so the estimate is
    unbiased: about 0 for two samples of one law."""
    a = torch.as_tensor(as_samples(x, "x"))
    b = torch.as_tensor(as_samples(y, "y"))
    if a.shape[1] != b.shape[1]:
        raise GanflowError(
            f"x and y must have the same dimension, got {a.shape[1]} and {b.shape[1]}"
        )
    n, k = len(a), len(b)
    if n < 2 or k < 2:
        raise GanflowError(f"energy distance needs at least 2 samples each, got {n} and {k}")
    # in tiles (ganflow._pairwise): memory flat in n and k, not three n x k matrices
    ident = (lambda d: d,)
    xy = pair_sums(a, b, ident)[0] / (n * k)
    xx = pair_sums(a, None, ident)[0] / (n * (n - 1))
    yy = pair_sums(b, None, ident)[0] / (k * (k - 1))
    return float(2 * xy - xx - yy)


def w2(x, y) -> float:
    r"""Exact W2 between the uniform empirical measures on x (n, d) and y (k, d)."""
    import ot

    a = as_samples(x, "x")
    b = as_samples(y, "y")
    if a.shape[1] != b.shape[1]:
        raise GanflowError(
            f"x and y must have the same dimension, got {a.shape[1]} and {b.shape[1]}"
        )
    cost = ot.dist(a, b, metric="sqeuclidean")
    wa = np.full(len(a), 1.0 / len(a))
    wb = np.full(len(b), 1.0 / len(b))
    val = float(ot.emd2(wa, wb, cost, numItermax=10_000_000))
    return math.sqrt(max(val, 0.0))


# the quality bar of the toy benchmarks: every mode captured, HQ >= 80 %, mode-weight
# KL <= 0.05 (the protocol of benchmarks/README.md)
QUALITY_BAR = {"hq": 0.8, "mode_kl": 0.05}


def first_at_quality_bar(rows: list[dict], n_modes: int) -> dict | None:
    """The first metrics row with all ``n_modes`` modes, HQ and mode KL within
    :data:`QUALITY_BAR` (None if no row is)."""
    return next((r for r in rows if r.get("modes") == n_modes
                 and (r.get("hq") or 0) >= QUALITY_BAR["hq"]
                 and r.get("mode_kl") is not None and r["mode_kl"] <= QUALITY_BAR["mode_kl"]),
                None)
