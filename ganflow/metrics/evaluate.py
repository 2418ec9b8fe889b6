r"""Evaluate a sample set against a data distribution: every metric, with its noise floor.

:func:`evaluate_samples` is what ``ganflow eval`` prints. The protocol:
sample-set distances are computed against HELD-OUT reference samples (drawn fresh with
``seed + 1``, never the training batches), and each comes with its noise floor, the same
distance between two independent reference sets of the same sizes: a value near the
floor means "indistinguishable at this sample size", not "zero".
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data import Dataset, load_data
from ._coerce import as_samples
from .density import (
    KDEDensity,
    divergences_on_grid,
    jsd_monte_carlo,
    kde_log_likelihood,
    mmd,
    sliced_wasserstein,
)
from .samples import energy_distance, mode_metrics, w2

__all__ = ["evaluate_samples"]


def evaluate_samples(
    samples,
    data: str | Dataset,
    *,
    seed: int = 0,
    w2_samples: int = 1000,
    mmd_scales: tuple[float, ...] = (0.1, 0.3, 1.0),
    grid_cells: int = 256,
    max_grid_cells: int = 400,
    mc_samples: int = 20000,
) -> dict:
    r"""All metrics of ``samples`` (n, d) against ``data`` (a spec for :func:`load_data`).

    Returns a flat JSON-ready dict. Always: ``n_samples``, ``n_reference``, ``energy``,
    ``mmd`` ({bandwidth: MMD^2}, bandwidths = ``mmd_scales`` x the reference's mean
    per-axis std), ``w2`` (exact, POT, on the first ``w2_samples`` of each set),
    ``sliced_w``, ``kde_loglik`` (held-out reference under the KDE of the samples,
    nats, bandwidth ``kde_bandwidth`` by likelihood cross-validation on the samples
    themselves), each distance with a ``*_floor``. For a mixture target also ``modes``,
    ``hq``, ``mode_kl`` and ``jsd`` / ``l1`` between the samples' KDE and the
    exact density: on a grid (``jsd_method = "grid"``, midpoint rule, 2 cells per finest
    std/bandwidth) in 1-D, and in 2-D when that needs at most ``max_grid_cells`` per axis;
    otherwise (and for d > 2) by Monte Carlo, JSD only, with ``jsd_se``. For image data
    (``Dataset.image_shape``; samples are flat images in [-1, 1]) no KDE, but the metrics
    of :func:`ganflow.metrics.features.image_metrics` (``frechet_distance``, ``kernel_distance``,
    ``precision``, ``recall`` with floors, ``class_coverage`` over all the samples,
    ``class_kl``, ``classifier_accuracy``; without labels, random conv features and no
    class metrics: :func:`ganflow.metrics.classifier.random_feature_net`).
    """
    ds = load_data(data)
    x = as_samples(samples, "samples", dim=ds.dim, min_rows=10)
    n = len(x)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    ref = ds.sample(n, gen).double().numpy()
    ref2 = ds.sample(n, gen).double().numpy()  # an independent set: the noise floor
    scale = float(np.mean(ref.std(0)))
    bandwidths = tuple(float(f"{s * scale:.4g}") for s in mmd_scales)
    k = min(int(w2_samples), n)
    out: dict = {
        "data": ds.name,
        "n_samples": n,
        "n_reference": n,
        "w2_samples": k,
        "seed": int(seed),
    }
    out["energy"] = energy_distance(x, ref)
    out["energy_floor"] = energy_distance(ref2, ref)
    out["mmd"] = {str(b): v for b, v in mmd(x, ref, bandwidths).items()}
    out["mmd_floor"] = {str(b): v for b, v in mmd(ref2, ref, bandwidths).items()}
    out["w2"] = w2(x[:k], ref[:k])
    out["w2_floor"] = w2(ref2[:k], ref[:k])
    out["sliced_w"] = sliced_wasserstein(x, ref, seed=seed)
    out["sliced_w_floor"] = sliced_wasserstein(ref2, ref, seed=seed)
    if ds.image_shape is not None:
        # images: a KDE in C*H*W dimensions says nothing; the classifier's feature space
        # does (Frechet and kernel distance, coverage, precision/recall: features.py)
        from .features import image_metrics

        out.update({k: v for k, v in image_metrics(x, ds, seed=seed).items()
                    if k != "seed"})
        return _finite(out)
    kde, kde_ref = KDEDensity(x, "cv"), KDEDensity(ref2, "cv")
    out["kde_bandwidth"] = kde.bandwidth
    out["kde_loglik"] = kde_log_likelihood(x, ref, kde.bandwidth)
    out["kde_loglik_floor"] = kde_log_likelihood(ref2, ref, kde_ref.bandwidth)  # best at this n
    if ds.mixture is not None:
        out.update(mode_metrics(x, ds.mixture))
        # a grid must resolve both the target and the KDE (2 cells per std/bandwidth);
        # narrow targets (ring8: std 0.02 on a box of 4.3) go to Monte Carlo instead
        box = max(ds.mixture.extent(), float(np.abs(x).max()) + 6 * kde.bandwidth)
        finest = min(ds.mixture.length_scale, kde.bandwidth, kde_ref.bandwidth)
        cells = max(grid_cells, math.ceil(2 * box / (finest / 2)))
        if ds.dim == 1 or (ds.dim == 2 and cells <= max_grid_cells):
            res = divergences_on_grid(kde, ds.mixture, box=box, cells=cells)
            out.update(jsd=res["jsd"], l1=res["l1"], jsd_method="grid", grid_cells=cells)
            floor = divergences_on_grid(kde_ref, ds.mixture, box=box, cells=cells)
            out.update(jsd_floor=floor["jsd"], l1_floor=floor["l1"])
        else:
            est, se = jsd_monte_carlo(kde, ds.mixture, n=mc_samples, seed=seed)
            out.update(jsd=est, jsd_se=se, jsd_method="monte-carlo", mc_samples=mc_samples)
            floor, _ = jsd_monte_carlo(kde_ref, ds.mixture, n=mc_samples, seed=seed)
            out["jsd_floor"] = floor
    return _finite(out)


def _finite(out: dict) -> dict:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()
    }


def format_evaluation(res: dict) -> str:
    """A human-readable table of :func:`evaluate_samples`' result."""
    lines = [
        f"{res['n_samples']} samples vs {res['n_reference']} held-out samples of "
        f"{res['data']} (W2 on {res['w2_samples']} of each; seed {res['seed']})",
        f"{'metric':<22} {'value':>12} {'noise floor':>12}",
    ]

    def row(name, val, floor=None):
        f = "" if floor is None else f"{floor:12.4g}"
        lines.append(f"{name:<22} {val:12.4g} {f:>12}")

    for key in ("modes", "hq", "mode_kl"):
        if key in res:
            row(key, res[key])
    for key in ("jsd", "l1"):
        if key in res:
            row(f"{key} ({res['jsd_method']})", res[key], res.get(f"{key}_floor"))
    if "jsd_se" in res:
        row("jsd standard error", res["jsd_se"])
    row("energy distance", res["energy"], res["energy_floor"])
    for b, v in res["mmd"].items():
        row(f"MMD^2 (bw {b})", v, res["mmd_floor"][b])
    row("W2 (exact)", res["w2"], res["w2_floor"])
    row("sliced W2", res["sliced_w"], res["sliced_w_floor"])
    if "kde_loglik" in res:
        row("KDE log-lik (nats)", res["kde_loglik"], res["kde_loglik_floor"])
    if "frechet_distance" in res:
        labelled = res.get("classifier_accuracy") is not None
        where = (f"ganflow's classifier (held-out accuracy "
                 f"{100 * res['classifier_accuracy']:.1f} %)" if labelled else
                 "a fixed random conv net (the data has no labels to train a classifier)")
        lines.append(f"image metrics in the features of {where}, {res['n_fake']} "
                     f"generated vs {res['n_real']} real images:")
        for key in ("frechet_distance", "kernel_distance", "precision", "recall"):
            row(key, res[key], res[f"{key}_floor"])
        if labelled:
            lines.append(f"class coverage over all {res['n_coverage']} samples:")
            row(f"classes found (/{res['n_classes']})", res["class_coverage"])
            row("class histogram KL", res["class_kl"])
        else:
            lines.append("class coverage, class KL: unavailable (no labels)")
    return "\n".join(lines)
