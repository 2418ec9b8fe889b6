r"""Image metrics with a feature network of our own.

The features are the penultimate activations of ganflow's own classifier
(:mod:`ganflow.metrics.classifier`, trained on the labelled images of the data set
itself); on top of them:

* :func:`frechet_distance`: FID's formula (Heusel et al. 2017), the 2-Wasserstein
  distance between Gaussians fitted to the two feature sets:
  :math:`|\mu_a-\mu_b|^2 + \operatorname{tr}(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})`.
* :func:`kernel_distance`: KID (Binkowski et al. 2018), the unbiased estimator of
  MMD^2 with the kernel :math:`k(x, y) = (x \cdot y / d + 1)^3`, averaged over subsets.
* :func:`precision_recall`: the k-nearest-neighbour manifold estimate of Kynkaanniemi
  et al. (2019).
* :func:`class_coverage`: how many classes the classifier finds among generated images,
  and the KL divergence of their class histogram to the uniform one (mode dropping).
* :func:`image_metrics`: all of the above in one JSON-ready dict, with noise floors.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .._errors import GanflowError
from .._pairwise import inside_any_ball, kth_nn_distance
from ..data import Dataset
from ..data.images import LabelledImages, labelled_images
from ._coerce import as_samples
from .classifier import FEATURE_DIM, as_image_tensor, feature_net, random_feature_net

__all__ = [
    "Coverage",
    "class_coverage",
    "frechet_distance",
    "image_metrics",
    "kernel_distance",
    "precision_recall",
]

# A class counts as found when it gets at least this fraction of its uniform share
# (1/K) of the argmax predictions: with 10 classes and 1000 images, at least 10 images.
MIN_CLASS_SHARE = 0.1


# ------------------------------------------------------------------ statistics
def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise GanflowError(
            f"feature sets must have the same width, got {a.shape[1]} and {b.shape[1]}"
        )


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(feats_a, feats_b) -> float:
    r"""Frechet distance between Gaussians fitted to two feature sets (n, k) (FID's formula,
    Heusel et al. 2017): :math:`|\mu_a-\mu_b|^2 + \operatorname{tr} S_a + \operatorname{tr}
    S_b - 2 \operatorname{tr}(S_a^{1/2} S_b S_a^{1/2})^{1/2}`, unbiased covariances, float64.

    The matrix square roots are taken by symmetric eigendecompositions with negative
    round-off eigenvalues clamped to 0, so no imaginary parts arise (scipy's ``sqrtm`` of
    the non-symmetric product :math:`S_a S_b` would need them clamped)."""
    a = as_samples(feats_a, "feats_a", min_rows=2)
    b = as_samples(feats_b, "feats_b", min_rows=2)
    _same_dim(a, b)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(s_a)
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    tr_cross = float(np.sqrt(np.clip(cross, 0, None)).sum())
    fd = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_cross)
    return max(fd, 0.0)


def _mmd2_unbiased_poly(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kernel_distance(feats_a, feats_b, *, subset_size: int = 1000, n_subsets: int = 100,
                    seed: int = 0) -> float:
    r"""KID (Binkowski et al. 2018): the unbiased MMD^2 estimate with the cubic polynomial
    kernel :math:`k(x, y) = (x \cdot y / k + 1)^3` (k = feature width), averaged over
    ``n_subsets`` pairs of random subsets of ``min(subset_size, n_a, n_b)`` points each
    (drawn without replacement, seeded). When that size covers both sets entirely, a single
    exact evaluation on the full sets is returned. Can be slightly negative (unbiased)."""
    a = as_samples(feats_a, "feats_a", min_rows=2)
    b = as_samples(feats_b, "feats_b", min_rows=2)
    _same_dim(a, b)
    m = min(int(subset_size), len(a), len(b))
    if m < 2:
        raise GanflowError(f"subset_size must be >= 2, got {subset_size!r}")
    if m == len(a) == len(b):
        return _mmd2_unbiased_poly(a, b)
    rng = np.random.default_rng(seed)
    vals = [_mmd2_unbiased_poly(a[rng.choice(len(a), m, replace=False)],
                                b[rng.choice(len(b), m, replace=False)])
            for _ in range(int(n_subsets))]
    return float(np.mean(vals))


class Coverage(NamedTuple):
    """``classes``: number of classes found; ``kl``: KL(histogram || uniform) in nats;
    ``histogram``: the share of each class among the argmax predictions."""

    classes: int
    kl: float
    histogram: list[float]


def class_coverage(logits_or_probs, *, n_classes: int | None = None,
                   min_share: float = MIN_CLASS_SHARE) -> Coverage:
    r"""Mode coverage from classifier outputs (n, K): each image counts for its argmax class
    (the same for logits and probabilities). A class is *found* when its share of the
    images is at least ``min_share / K`` (default: a tenth of the uniform share, so a few
    stray images do not count as covering a mode). ``kl`` is :math:`\sum_c p_c \ln(K p_c)`,
    0 for a perfectly balanced sample, :math:`\ln K` when all images fall in one class."""
    p = np.asarray(logits_or_probs.detach().cpu() if isinstance(logits_or_probs, torch.Tensor)
                   else logits_or_probs, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0 or p.shape[1] < 1:
        raise GanflowError(f"class outputs must be (n, K) with n >= 1, got shape {p.shape}")
    k = int(n_classes or p.shape[1])
    counts = np.bincount(p.argmax(1), minlength=k).astype(np.float64)
    share = counts / counts.sum()
    found = int((share >= min_share / k).sum())
    nz = share > 0
    kl = float((share[nz] * np.log(share[nz] * k)).sum())
    return Coverage(found, kl, share.tolist())


def precision_recall(real_feats, fake_feats, k: int = 3) -> tuple[float, float]:
    r"""Improved precision and recall (Kynkaanniemi et al. 2019). Each set's manifold is the
    union of balls around its points with radius the distance to the k-th nearest neighbour
    in the same set; precision = share of fake points inside the real manifold, recall =
    share of real points inside the fake manifold."""
    a = as_samples(real_feats, "real_feats", min_rows=2)
    b = as_samples(fake_feats, "fake_feats", min_rows=2)
    _same_dim(a, b)
    if int(k) != k or k < 1 or k >= min(len(a), len(b)):
        raise GanflowError(
            f"k must be an integer in [1, {min(len(a), len(b)) - 1}] for these set sizes, "
            f"got {k!r}"
        )
    ra, rb = torch.from_numpy(a), torch.from_numpy(b)
    # in tiles (ganflow._pairwise): memory flat in the set sizes
    precision = float(inside_any_ball(rb, ra, kth_nn_distance(ra, k)).double().mean())
    recall = float(inside_any_ball(ra, rb, kth_nn_distance(rb, k)).double().mean())
    return precision, recall


# ------------------------------------------------------------------ one call
def image_metrics(fake_images_flat, data: str | Path | Dataset, *, seed: int = 0,
                  n: int | None = None, kid_subset_size: int = 1000, k: int = 3) -> dict:
    r"""Every image metric of generated images (n_fake, C*H*W) in [-1, 1] against ``data``
    (an image spec or Dataset, labelled or not), as a JSON-ready dict.

    Protocol: the real images are split by a seeded permutation into two disjoint halves A
    and B; ``n`` images of each (default ``min(n_fake, N // 2)``) are used, and the first
    ``n`` fake images. Distances compare fake with A; the ``*_floor`` entries compare B with
    A, the value of a perfect generator at this sample size (FD is biased upward at small
    n, so compare with the floor, never with 0). Keys: ``frechet_distance``,
    ``kernel_distance``, ``precision``, ``recall``, their ``*_floor``, ``class_coverage``
    (classes found among ALL the fake images, ``n_coverage`` of them:
    :func:`class_coverage`), ``class_kl``, ``n_classes``,
    ``classifier_accuracy`` (held out), ``n_fake``, ``n_real``, ``feature_dim``, ``seed``,
    ``features`` (which network). Data WITHOUT labels is measured in the features of
    :func:`random_feature_net` instead, and the class-based entries (``class_coverage``,
    ``class_kl``, ``n_classes``, ``classifier_accuracy``) are None.
    """
    arrays = labelled_images(data) if not isinstance(data, LabelledImages) else data
    labelled = arrays.labels is not None
    # no labels, no classifier: features of a fixed random conv net (random_feature_net)
    net = feature_net(arrays, seed=seed) if labelled else random_feature_net(arrays, seed=seed)
    fake = as_image_tensor(fake_images_flat, net.model.image_shape)
    n_all = len(arrays.images)
    n_use = min(len(fake), n_all // 2) if n is None else int(n)
    # by default any loadable data set (>= 10 images: halves of >= 5) is measured, noisily
    # (the floors say how noisily), so that training on it never fails at its first
    # evaluation, after the run folder was created; an explicit n must be >= 10
    lowest = k + 1 if n is None else max(k + 1, 10)
    if n_use < lowest or n_use > len(fake) or n_use > n_all // 2:
        raise GanflowError(
            f"n must be between {lowest} and min(n_fake={len(fake)}, "
            f"N/2={n_all // 2}), got {n_use}"
        )
    perm = np.random.default_rng(seed + 1).permutation(n_all)
    real_a = arrays.images[perm[:n_use]]
    real_b = arrays.images[perm[n_all // 2:n_all // 2 + n_use]]
    f_fake, f_a, f_b = (net.features(v) for v in (fake[:n_use], real_a, real_b))
    # coverage needs no real images: classify EVERY fake (coverage is meant on many
    # samples; with only n_use a rare class would be missed by chance)
    cov = class_coverage(net.logits(fake), n_classes=net.model.n_classes) if labelled else None
    p, r = precision_recall(f_a, f_fake, k=k)
    p0, r0 = precision_recall(f_a, f_b, k=k)
    return {
        "frechet_distance": frechet_distance(f_fake, f_a),
        "frechet_distance_floor": frechet_distance(f_b, f_a),
        "kernel_distance": kernel_distance(f_fake, f_a, subset_size=kid_subset_size, seed=seed),
        "kernel_distance_floor": kernel_distance(f_b, f_a, subset_size=kid_subset_size,
                                                 seed=seed),
        "precision": p,
        "recall": r,
        "precision_floor": p0,
        "recall_floor": r0,
        # None without labels: no classifier, so nothing class-based can be computed
        "class_coverage": cov.classes if labelled else None,
        "class_kl": cov.kl if labelled else None,
        "n_classes": net.model.n_classes if labelled else None,
        "classifier_accuracy": net.accuracy if labelled else None,
        "features": "classifier" if labelled else "random conv net (no labels)",
        "n_fake": int(n_use),
        "n_coverage": len(fake),
        "n_real": int(n_use),
        "feature_dim": FEATURE_DIM,
        "seed": int(seed),
    }
