"""Density and sample metrics against quadrature, closed forms and brute force."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

import ganflow as gf
from ganflow.metrics.density import (
    KDEDensity,
    divergences_on_grid,
    jsd_monte_carlo,
    kde_log_likelihood,
    mmd,
    sliced_wasserstein,
)

P1 = gf.GaussianMixture([0.3, 0.7], [[-1.0], [1.5]], [0.5, 0.8])
Q1 = gf.GaussianMixture([0.6, 0.4], [[-0.5], [2.0]], [0.7, 0.4])


def _jsd_quad(p, q, lo=-15, hi=15):
    def integrand(y):
        a = float(p.prob(np.array([[y]]))[0])
        b = float(q.prob(np.array([[y]]))[0])
        m = 0.5 * (a + b)
        return 0.5 * ((a * math.log(a / m) if a > 0 else 0) + (b * math.log(b / m) if b > 0 else 0))

    val, err = integrate.quad(integrand, lo, hi, limit=500, epsabs=1e-13)
    assert err < 1e-9  # quad's own error bound, far below every tolerance used
    return val


def test_grid_jsd_and_l1_match_quadrature_in_1d():
    res = divergences_on_grid(P1, Q1, box=10, cells=4000)
    # midpoint rule is second order: h = 0.005 gives errors ~1e-7 here
    assert abs(res["jsd"] - _jsd_quad(P1, Q1)) < 1e-6
    l1, _ = integrate.quad(lambda y: abs(float(P1.prob(np.array([[y]]))[0])
                                         - float(Q1.prob(np.array([[y]]))[0])), -15, 15,
                           limit=500, points=[-1, 0, 1, 2])
    assert abs(res["l1"] - l1) < 1e-6
    assert res["tv"] == pytest.approx(0.5 * res["l1"])


def test_monte_carlo_jsd_agrees_with_grid_in_2d():
    p = gf.GaussianMixture([0.5, 0.5], [[-1, 0], [1, 0.5]], [0.6, 0.6])
    q = gf.load_target("normal:0,0:1")
    grid = divergences_on_grid(p, q, box=7, cells=400)["jsd"]
    est, se = jsd_monte_carlo(p, q, n=40000, seed=1)
    assert se < 0.005
    assert abs(est - grid) < 4 * se  # fails with probability ~6e-5 for a correct estimator


def test_monte_carlo_jsd_closed_form_limits_and_a_3d_product():
    p = gf.load_target("normal:0,0,0:1")
    est, se = jsd_monte_carlo(p, p, n=1000)
    assert est == 0.0 and se == 0.0
    far = gf.load_target("normal:100,0,0:1")
    est, _ = jsd_monte_carlo(p, far, n=1000)
    assert abs(est - math.log(2)) < 1e-12
    # only the first coordinate differs: the 3-D JSD equals the 1-D one (quadrature)
    a = gf.GaussianMixture([0.3, 0.7], [[-1.0, 0, 0], [1.5, 0, 0]], [0.5, 0.5])
    b = gf.GaussianMixture([1.0], [[0.5, 0, 0]], [0.5])
    a1 = gf.GaussianMixture([0.3, 0.7], [[-1.0], [1.5]], [0.5, 0.5])
    b1 = gf.GaussianMixture([1.0], [[0.5]], [0.5])
    est, se = jsd_monte_carlo(a, b, n=40000, seed=2)
    assert abs(est - _jsd_quad(a1, b1)) < 4 * se


def test_kde_density_sampler_and_log_likelihood_closed_form():
    x = gf.load_target("normal:0:1").sample(20000, generator=torch.Generator().manual_seed(0),
                                            dtype=torch.float64)
    held = gf.load_target("normal:0:1").sample(20000, generator=torch.Generator().manual_seed(1),
                                               dtype=torch.float64)
    b = 0.3
    # KDE of N(0,1) with bandwidth b is N(0, 1 + b^2) as N -> inf, so the held-out
    # log-likelihood is -1/2 ln(2 pi (1 + b^2)) - 1/(2 (1 + b^2)) (about -1.45)
    exact = -0.5 * math.log(2 * math.pi * (1 + b * b)) - 0.5 / (1 + b * b)
    assert abs(kde_log_likelihood(x, held, bandwidth=b) - exact) < 0.02
    kde = KDEDensity(x, bandwidth=b)
    s = kde.sample(50000, generator=torch.Generator().manual_seed(2))
    assert abs(float(s.var()) - (float(x.var()) + b * b)) < 0.03


def test_mmd_matches_brute_force_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.normal(size=(45, 3)) + 0.5
    got = mmd(x, y, bandwidths=(0.5, 2.0))
    for s, val in got.items():
        def k(a, b, s=s):
            return math.exp(-float(((a - b) ** 2).sum()) / (2 * s * s))
        xx = sum(k(x[i], x[j]) for i in range(60) for j in range(60) if i != j) / (60 * 59)
        yy = sum(k(y[i], y[j]) for i in range(45) for j in range(45) if i != j) / (45 * 44)
        xy = sum(k(x[i], y[j]) for i in range(60) for j in range(45)) / (60 * 45)
        assert abs(val - (xx + yy - 2 * xy)) < 1e-12


def test_sliced_wasserstein_equals_exact_w2_in_1d():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(500, 1)), rng.normal(size=(500, 1)) * 2 + 1
    exact = math.sqrt(float(((np.sort(x[:, 0]) - np.sort(y[:, 0])) ** 2).mean()))
    # in 1-D every projection is +-1, so the slice average is the exact 1-D W2
    assert abs(sliced_wasserstein(x, y, n_projections=20) - exact) < 1e-10


def test_bad_metric_inputs():
    with pytest.raises(gf.GanflowError, match="dimensions 1 and 2"):
        divergences_on_grid(P1, gf.ring8())
    with pytest.raises(gf.GanflowError, match="NaN"):
        KDEDensity(np.array([[0.0], [np.nan]]))
    with pytest.raises(gf.GanflowError, match="shape"):
        mmd(np.zeros(5), np.zeros((5, 1)))


def test_evaluate_samples_separates_good_from_collapsed():
    from ganflow.metrics.evaluate import evaluate_samples

    good = gf.ring8().sample(1500, generator=torch.Generator().manual_seed(7))
    res = evaluate_samples(good, "ring8", w2_samples=500)
    assert res["modes"] == 8 and res["hq"] > 0.97 and res["mode_kl"] < 0.01
    assert res["jsd_method"] == "monte-carlo"  # ring8 is too narrow for a 400^2 grid
    # perfect samples sit at the noise floor (within a few standard errors)
    assert abs(res["energy"] - res["energy_floor"]) < 0.01
    assert abs(res["jsd"] - res["jsd_floor"]) < 0.01
    bad = good.clone()
    bad[:700] = torch.tensor([2.0, 0.0])  # half the mass collapsed onto one mode
    res_bad = evaluate_samples(bad, "ring8", w2_samples=500)
    assert res_bad["mode_kl"] > 0.3
    assert res_bad["energy"] > 20 * max(abs(res["energy_floor"]), 1e-3)
    assert res_bad["w2"] > 2 * res["w2_floor"]
    assert res_bad["jsd"] > 5 * res["jsd_floor"]


def test_eval_cli_on_a_sample_file(tmp_path):
    from typer.testing import CliRunner

    from ganflow.cli import app

    path = tmp_path / "s.npy"
    np.save(path, gf.load_target("four2d").sample(800).numpy())
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["eval", str(path), "--data", "four2d", "--json", str(out)])
    assert res.exit_code == 0, res.output
    import json

    data = json.loads(out.read_text())
    assert data["n_samples"] == 800 and data["jsd_method"] == "grid" and data["modes"] == 4
    res = CliRunner().invoke(app, ["eval", str(path)])
    assert res.exit_code != 0 and "needs --data" in res.output
