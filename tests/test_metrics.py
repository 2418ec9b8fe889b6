"""Metrics of DESIGN.md against hand-made and brute-force answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ganflow import GanflowError, GaussianMixture, ring8
from ganflow.metrics import energy_distance, mode_metrics, w2


def test_mode_metrics_hand_made():
    mix = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [10.0, 0.0]], [1.0, 1.0])
    pts = np.array([
        [0.0, 0.0],   # mode 0, HQ
        [0.5, 0.0],   # mode 0, HQ
        [10.0, 2.9],  # mode 1, HQ (2.9 < 3 std)
        [10.0, 3.1],  # mode 1, not HQ
        [4.0, 0.0],   # nearest mode 0, 4 std away: not HQ
    ])
    m = mode_metrics(pts, mix)
    assert m["modes"] == 2
    assert m["hq"] == pytest.approx(3 / 5)
    # histogram of HQ nearest centres (2/3, 1/3) against weights (1/2, 1/2)
    kl = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    assert m["mode_kl"] == pytest.approx(kl, rel=1e-12)


@pytest.mark.parametrize("dim", [1, 2])
def test_mode_widths_against_the_truncated_gaussian(dim):
    from scipy.stats import chi2

    # the mixture's own samples: every mode's HQ samples (within 3 std) have the RMS
    # per-axis distance sqrt(F_{d+2}(9) / F_d(9)) std, E[r^2; r^2 <= 9] = d F_{d+2}(9)
    # for r^2 ~ chi2_d; 8 modes of 5000 samples: the ratio's sampling sd is about
    # 1 / sqrt(2 d 5000) < 1 %, so 3 % is a 3-sd bound on the min and max
    means = [[10.0 * k] + [0.0] * (dim - 1) for k in range(8)]
    mix = GaussianMixture([1 / 8] * 8, means, [0.5 + 0.1 * k for k in range(8)])
    x = mix.sample(40000, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    m = mode_metrics(x, mix)
    exact = math.sqrt(chi2.cdf(9, dim + 2) / chi2.cdf(9, dim))
    assert m["mode_width_min"] == pytest.approx(exact, rel=0.03)
    assert m["mode_width_max"] == pytest.approx(exact, rel=0.03)
    # the HQ samples pulled halfway to their modes' means: the widths halve exactly (they
    # all stay HQ, and no other sample is), and a mode collapsed onto its mean has
    # width 0 (HQ still counts it)
    k = np.abs(x[:, :1] - np.asarray(means)[:, :1].T).argmin(1)
    centre = np.asarray(means)[k]
    hq = np.linalg.norm(x - centre, axis=1) <= 3 * mix.stds.numpy()[k]
    x, k, centre = x[hq], k[hq], centre[hq]
    m = mode_metrics(x, mix)
    half = mode_metrics(centre + 0.5 * (x - centre), mix)
    for key in ("mode_width_min", "mode_width_max"):
        assert half[key] == pytest.approx(0.5 * m[key], rel=1e-12)
    collapsed = x.copy()
    collapsed[k == 3] = means[3]
    c = mode_metrics(collapsed, mix)
    assert c["mode_width_min"] == 0.0 and c["modes"] == 8
    # fewer than 10 HQ samples in every mode: no width
    assert "mode_width_min" not in mode_metrics(np.asarray(means[:2] * 4), mix)


def test_mode_metrics_partial_collapse_and_empty():
    mix = ring8()
    centres = mix.means.numpy()
    # all samples exactly on 2 of the 8 centres: 2 modes, HQ 100 %, KL = ln 4
    pts = np.repeat(centres[:2], 50, axis=0)
    m = mode_metrics(torch.as_tensor(pts), mix)
    assert (m["modes"], m["hq"]) == (2, 1.0)
    assert m["mode_kl"] == pytest.approx(math.log(4), rel=1e-12)
    # perfect balance: KL 0
    m = mode_metrics(np.repeat(centres, 3, axis=0), mix)
    assert (m["modes"], m["hq"], m["mode_kl"]) == (8, 1.0, 0.0)
    # no HQ sample: the worst possible KL, ln(1 / min w) = ln 8, never a perfect score
    m = mode_metrics(np.zeros((10, 2)), mix)
    assert (m["modes"], m["hq"]) == (0, 0.0)
    assert m["mode_kl"] == pytest.approx(math.log(8))
    with pytest.raises(GanflowError, match="dimension"):
        mode_metrics(np.zeros((4, 3)), mix)


def test_energy_distance_brute_force():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 2)), rng.normal(size=(5, 2)) + 1

    def mean_dist(a, b, skip_diag):
        vals = [np.linalg.norm(p - q) for i, p in enumerate(a) for j, q in enumerate(b)
                if not (skip_diag and i == j)]
        return sum(vals) / len(vals)

    ref = 2 * mean_dist(x, y, False) - mean_dist(x, x, True) - mean_dist(y, y, True)
    assert energy_distance(x, y) == pytest.approx(ref, rel=1e-12)
    # two samples of one law: near 0 (unbiased), far below the shifted case
    a, b = rng.normal(size=(400, 2)), rng.normal(size=(400, 2))
    assert abs(energy_distance(a, b)) < 0.05 < energy_distance(a, b + 1)


def test_w2_brute_force():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(6, 2)) * 2
    # equal sizes: the optimal plan is a permutation (Birkhoff)
    best = min(np.mean(((x - y[list(p)]) ** 2).sum(1)) for p in itertools.permutations(range(6)))
    assert w2(x, y) == pytest.approx(math.sqrt(best), rel=1e-9)
    # a translation by v costs exactly |v|
    assert w2(x, x + np.array([3.0, 4.0])) == pytest.approx(5.0, rel=1e-9)
