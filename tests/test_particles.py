"""Particle simulation of ODE (2): KDE against brute force, KL closed form, JSD against the PDE."""

import math

import numpy as np
import pytest
import torch

import ganflow as gf
from ganflow import kde
from ganflow.particles import l1_gap_to_pde, particle_drift, simulate_particles


def _brute_force_kde(q, x, b):
    d2 = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    n, d = x.shape
    return (
        torch.logsumexp(-d2 / (2 * b * b), 1)
        - math.log(n)
        - 0.5 * d * math.log(2 * math.pi * b * b)
    )


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_kde_log_density_and_score_match_brute_force(dim, monkeypatch):
    # a tiny block size forces many chunks: chunking must not change the answer
    monkeypatch.setattr(kde, "_BLOCK_ENTRIES", 64)
    x = torch.randn(300, dim, dtype=torch.float64)
    q = (torch.randn(70, dim, dtype=torch.float64) * 2).requires_grad_(True)
    b = 0.3
    ref = _brute_force_kde(q, x, b)
    (ref_score,) = torch.autograd.grad(ref.sum(), q)
    logp, score = kde.kde_log_density_and_score(q.detach(), x, b)
    torch.testing.assert_close(logp, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(score, ref_score, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(kde.kde_log_density(q.detach(), x, b), ref.detach())


def test_kde_far_queries_stay_finite():
    x = torch.zeros(10, 2, dtype=torch.float64)
    logp, score = kde.kde_log_density_and_score(
        torch.tensor([[50.0, 0.0]], dtype=torch.float64), x, 0.1
    )
    assert torch.isfinite(logp).all() and torch.isfinite(score).all()
    assert abs(float(score[0, 0]) + 50 / 0.01) < 1e-6  # exact: -(x - 0)/b^2


def test_silverman_rule():
    x = torch.randn(1000, 2, dtype=torch.float64) * 3
    sigma = math.sqrt(float(x.var(0).mean()))
    assert abs(kde.silverman_bandwidth(x) - sigma * (4 / (4 * 1000)) ** (1 / 6)) < 1e-12


def test_drift_with_exact_density_is_the_ode_drift():
    # With an enormous sample of rho and a small bandwidth, the KDE drift tends to the
    # exact KL drift grad ln rho_d - grad ln rho; here just check the sign structure and
    # the magnitude to 10 % at the bulk (a KDE cannot do better at N = 20000 in 1-D).
    rho_d = gf.load_target("normal:0:1")
    x = torch.linspace(-1, 1, 20000, dtype=torch.float64)[:, None]  # uniform on [-1, 1]
    drift = particle_drift(x, rho_d, gf.KL, bandwidth=0.02)
    inner = (x.abs() < 0.5)[:, 0]
    torch.testing.assert_close(drift[inner], -x[inner], rtol=0.1, atol=0.02)


def _ou_moments(t, a, s2):
    return a * math.exp(-t), 1 + (s2 - 1) * math.exp(-2 * t)


@pytest.mark.parametrize(
    ("target", "init", "a"),
    [
        ("normal:0:1", "normal:2:0.5", [2.0]),
        ("normal:0,0:1", "normal:1.5,-1:0.5", [1.5, -1.0]),
    ],
)
def test_kl_particles_follow_the_ornstein_uhlenbeck_law(target, init, a):
    n = 4000
    sol = simulate_particles(
        target,
        init,
        divergence="kl",
        n=n,
        t_end=1.0,
        dt=0.01,
        method="heun",
        save_at=[0.25, 0.5],
        seed=3,
    )
    for k, t in enumerate(sol.times):
        mean_exact, var_exact = _ou_moments(t, np.array(a), 0.25)
        mean, var = sol.means()[k], sol.variances()[k]
        # sampling error of the initial draw, carried (and contracted) by the flow: 5 SE
        assert (np.abs(mean - mean_exact) < 5 * np.sqrt(var_exact / n) + 2e-3).all(), (t, mean)
        # the KDE drift's known O(b^2) bias (blob method: equilibrium variance 1 - b^2)
        tol = sol.bandwidths[k] ** 2 + 5 * var_exact * math.sqrt(2 / n)
        assert (np.abs(var - var_exact) < tol).all(), (t, var, var_exact, tol)
    # the flow really moved: the mean went from a to a e^-1
    assert np.all(np.abs(sol.means()[-1]) < 0.5 * np.abs(np.array(a)))


def test_euler_and_heun_agree_at_small_steps():
    kw = {"divergence": "jsd", "n": 500, "t_end": 0.2, "seed": 0}
    e = simulate_particles("bimodal", "normal:0:0.4", dt=0.002, method="euler", **kw)
    h = simulate_particles("bimodal", "normal:0:0.4", dt=0.002, method="heun", **kw)
    moved = np.abs(h.positions[-1] - h.positions[0]).mean()
    assert moved > 0.01
    # first-order difference: O(dt * t) relative to the displacement
    assert np.abs(e.positions[-1] - h.positions[-1]).mean() < 0.05 * moved


def test_jsd_particles_approach_the_pde_solution_as_n_grows():
    t = 0.25
    pde = gf.solve_fokker_planck("bimodal", "normal:0:0.4", box=4.5, cells=400, t_end=t, dt=0.0025)
    gaps, raw = {}, {}
    for n in (2000, 20000):
        part = simulate_particles(
            "bimodal", "normal:0:0.4", n=n, t_end=t, dt=0.01, method="heun", seed=1
        )
        gaps[n] = l1_gap_to_pde(part, pde, smooth_pde=True)
        raw[n] = l1_gap_to_pde(part, pde)
    # like-for-like (PDE smoothed with the same kernel): dynamics error + noise, both O(N^-a)
    assert (gaps[20000] < 0.6 * gaps[2000]).all(), gaps
    # against u(t) itself the KDE carries its O(b^2) smoothing bias; it still shrinks
    assert raw[20000][-1] < raw[2000][-1] or raw[20000][0] < raw[2000][0], raw
    assert gaps[20000][-1] < 0.03


def test_particle_input_errors():
    with pytest.raises(gf.GanflowError, match="method must be 'euler' or 'heun', got 'rk4'"):
        simulate_particles("bimodal", "normal:0:0.4", method="rk4")
    with pytest.raises(gf.GanflowError, match=r"shape \(N, 1\)"):
        simulate_particles("bimodal", torch.zeros(10, 2))
    with pytest.raises(gf.GanflowError, match="NaN"):
        simulate_particles("bimodal", torch.full((10, 1), float("nan")))
    with pytest.raises(gf.GanflowError, match="bandwidth"):
        simulate_particles("bimodal", "normal:0:0.4", bandwidth=-1.0)
    with pytest.raises(gf.GanflowError, match="dt must be a positive number"):
        simulate_particles("bimodal", "normal:0:0.4", dt=0)
