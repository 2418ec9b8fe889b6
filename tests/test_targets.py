import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import ganflow as gf
from ganflow import GanflowError, GaussianMixture


def _mixture3d():
    return GaussianMixture([0.2, 0.5, 0.3], [[0, 0, 0], [1, -1, 2], [-2, 0.5, 0]], [0.5, 1.0, 0.3])


def test_log_prob_matches_scipy_in_3d():
    mix = _mixture3d()
    x = np.random.default_rng(0).normal(size=(50, 3)) * 2
    ref = sum(
        w * stats.multivariate_normal(mu, s**2 * np.eye(3)).pdf(x)
        for w, mu, s in zip(mix.weights.numpy(), mix.means.numpy(), mix.stds.numpy(), strict=True)
    )
    np.testing.assert_allclose(mix.log_prob(x), np.log(ref), rtol=1e-12, atol=0)


def test_score_is_gradient_of_log_prob():
    mix = _mixture3d()
    x = torch.randn(40, 3, dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x).sum(), x)
    torch.testing.assert_close(mix.score(x.detach()), grad, rtol=1e-12, atol=1e-12)


def test_density_integrates_to_one_in_1d():
    mix = GaussianMixture([0.3, 0.7], [[-1.0], [2.0]], [0.4, 0.9])
    total, _ = integrate.quad(lambda y: float(mix.prob(np.array([[y]]))[0]), -20, 20, limit=200)
    assert abs(total - 1) < 1e-10


def test_sampler_moments_match_exact_mean_and_covariance():
    mix = _mixture3d()
    n = 200_000
    x = mix.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cov = mix.covariance()
    se = torch.sqrt(torch.diagonal(cov) / n)
    # 5 standard errors: fails with probability < 1e-6 per coordinate for a correct sampler
    assert ((x.mean(0) - mix.mean()).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0.02, atol=0.02)


def test_sampler_is_reproducible_with_a_seed():
    mix = gf.ring8()
    a = mix.sample(100, generator=torch.Generator().manual_seed(3))
    b = mix.sample(100, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_mass_in_box_matches_quadrature_and_monte_carlo():
    mix = GaussianMixture([0.5, 0.5], [[-1.0], [2.5]], [0.5, 1.0])
    ref, _ = integrate.quad(lambda y: float(mix.prob(np.array([[y]]))[0]), -3, 3)
    assert abs(mix.mass_in_box(3.0) - ref) < 1e-12
    mix2 = GaussianMixture([0.4, 0.6], [[0.0, 0.0], [1.5, 1.5]], [0.7, 0.5])
    x = mix2.sample(400_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mc = float((x.abs() <= 1.8).all(1).double().mean())
    assert abs(mix2.mass_in_box(1.8) - mc) < 5 * math.sqrt(mc * (1 - mc) / 400_000)


def test_named_benchmarks_follow_design():
    r = gf.ring8()
    assert r.n_components == 8 and r.dim == 2
    torch.testing.assert_close(r.means.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    assert float(r.stds.max()) == 0.02
    g = gf.grid25()
    assert sorted(set(g.means[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert float(g.stds.max()) == 0.05 and g.n_components == 25


def test_json_round_trip_and_load_target(tmp_path):
    mix = _mixture3d()
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(mix.to_dict()))
    loaded = gf.load_target(str(path))
    torch.testing.assert_close(loaded.means, mix.means)
    assert loaded.name == "mine"
    n = gf.load_target("normal:1,-1:0.5")
    assert n.dim == 2 and float(n.stds[0]) == 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": [0.5, 0.4], "means": [[0], [1]], "stds": [1, 1]}, "sum to 1"),
        ({"weights": [0.5, 0.5], "means": [[0], [1]], "stds": [1, -1]}, "positive"),
        ({"weights": [0.5, 0.5], "means": [[0], [float("nan")]], "stds": [1, 1]}, "finite"),
        ({"weights": [1.0], "means": [[0], [1]], "stds": [1]}, "one entry per component"),
        ({"weights": [1.2, -0.2], "means": [[0], [1]], "stds": [1, 1]}, "non-negative"),
    ],
)
def test_bad_mixtures_are_rejected_with_the_value(kwargs, match):
    with pytest.raises(GanflowError, match=match):
        GaussianMixture(**kwargs)


def test_bad_target_specs(tmp_path):
    with pytest.raises(GanflowError, match="unknown target 'ring9'"):
        gf.load_target("ring9")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GanflowError, match="not valid JSON"):
        gf.load_target(str(bad))
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"weights": [1]}))
    with pytest.raises(GanflowError, match="missing"):
        gf.load_target(str(missing))
    with pytest.raises(GanflowError, match="does not exist"):
        gf.load_target(str(tmp_path / "nope.json"))
    with pytest.raises(GanflowError, match="last dimension 2"):
        gf.ring8().log_prob(torch.zeros(3, 1))
