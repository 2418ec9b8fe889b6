"""Blocked pairwise metrics (ganflow._pairwise) equal brute-force full-matrix references."""

import numpy as np
import pytest
import torch

import ganflow._pairwise as pw
from ganflow.metrics import energy_distance
from ganflow.metrics.density import mmd
from ganflow.metrics.features import precision_recall


def _dist(a, b):
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def _energy_ref(x, y):
    n, k = len(x), len(y)
    return (2 * _dist(x, y).mean() - _dist(x, x).sum() / (n * (n - 1))
            - _dist(y, y).sum() / (k * (k - 1)))


def _mmd_ref(x, y, s):
    n, k = len(x), len(y)
    kern = lambda a, b: np.exp(-_dist(a, b) ** 2 / (2 * s * s))  # noqa: E731
    return ((kern(x, x).sum() - n) / (n * (n - 1)) + (kern(y, y).sum() - k) / (k * (k - 1))
            - 2 * kern(x, y).mean())


def _pr_ref(real, fake, k):
    def radius(x):
        return np.sort(_dist(x, x), axis=1)[:, k]

    def inside(q, c, r):
        return (_dist(q, c) <= r[None]).any(1).mean()

    return inside(fake, real, radius(real)), inside(real, fake, radius(fake))


@pytest.fixture(params=[5, 16, 2048], ids=["block5", "block16", "default"])
def block(request, monkeypatch):
    monkeypatch.setattr(pw, "BLOCK", request.param)
    return request.param


def _sets(seed=0, n=53, k=41, d=6):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(0.3, 1.2, size=(k, d))


def test_energy_distance_blocked_equals_brute_force(block):
    x, y = _sets()
    assert energy_distance(x, y) == pytest.approx(_energy_ref(x, y), rel=1e-10, abs=1e-12)


def test_mmd_blocked_equals_brute_force(block):
    x, y = _sets(1)
    got = mmd(x, y, bandwidths=(0.3, 1.0, 4.0))
    for s, v in got.items():
        assert v == pytest.approx(_mmd_ref(x, y, s), rel=1e-10, abs=1e-12)


def test_precision_recall_blocked_equals_brute_force(block):
    real, fake = _sets(2, n=70, k=45, d=3)
    for k in (1, 3, 7):
        assert precision_recall(real, fake, k=k) == pytest.approx(_pr_ref(real, fake, k),
                                                                  abs=1e-15)


def test_kth_nn_distance_with_ties_and_tiny_tiles():
    # duplicated points: the k-th neighbour distance is 0 up to the duplicates' count
    x = torch.tensor(np.repeat(np.arange(10.0), 3)[:, None])
    ref = np.sort(_dist(x.numpy(), x.numpy()), axis=1)
    for k in (1, 2, 3, 5):
        for b in (1, 2, 4, 7, 64):
            got = pw.kth_nn_distance(x, k, block=b).numpy()
            np.testing.assert_allclose(got, ref[:, k], atol=1e-12)


def test_pair_sums_symmetric_counts_every_pair():
    a = torch.tensor(np.random.default_rng(3).normal(size=(23, 2)))
    full = torch.cdist(a, a)
    for b in (1, 4, 23, 100):
        got = pw.pair_sums(a, None, [lambda d: d, lambda d: d ** 2], block=b)
        assert got[0] == pytest.approx(float(full.sum()), rel=1e-12)
        assert got[1] == pytest.approx(float((full ** 2).sum()), rel=1e-12)
