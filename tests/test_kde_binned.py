"""Binned (grid + FFT) KDE drift against direct summation, far points, the kde option, memory."""

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ganflow as gf
from ganflow import kde
from ganflow.cli import app
from ganflow.grid import Grid
from ganflow.particles import (
    estimate_particle_memory,
    particle_drift,
    particles_on_grid,
    simulate_particles,
)

# Error bounds at the default grid (h = b/6, kernel truncated at 8 b). Linear binning
# and linear interpolation each perturb a kernel value by O(h^2/b^2) (at most ~1/300
# of the peak per pair at h = b/6); summed over a cloud the leading part is a mean
# smoothing that the kernel's variance correction removes, leaving ~1e-3. Measured with
# these clouds: drift 4e-4 to 1.2e-3 of its norm, ln rho_hat within 6e-3. The bounds
# leave a factor ~2 and are far below what a wrong sign (error ~2), a swapped or
# shifted binning weight (~1e-1) or a missing variance correction in 1-D (~2e-3 to 4e-3
# of the norm, above DRIFT_RTOL at N = 2000) produces.
DRIFT_RTOL = 2e-3
LOG_ATOL = 1.2e-2


def _cloud(n, d, dtype, seed=0):
    """Two unequal Gaussian blobs, plus a point on the box's edge and a lone point just
    outside the bulk (one bandwidth from anyone: the grid edge and sparse neighbours)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[: n // 3] = x[: n // 3] * 0.3 + 2.0
    x[-1] = x.amax(0) + 0.4  # the new maximum: sits on the grid's last cell
    x[-2] = x.amin(0) - 0.05
    return x.to(dtype)


def _brute_force(x, b):
    """ln rho_hat and its score at the points, from explicit differences (exact far from
    the origin too), in row blocks."""
    logs, scores = [], []
    for q in torch.split(x, 256):
        diff = x[None, :, :] - q[:, None, :]
        logit = -diff.pow(2).sum(-1) / (2 * b * b)
        w = torch.softmax(logit, 1)
        logs.append(torch.logsumexp(logit, 1))
        scores.append(torch.einsum("mn,mnd->md", w, diff) / b**2)
    n, d = x.shape
    norm = -math.log(n) - 0.5 * d * math.log(2 * math.pi * b * b)
    return torch.cat(logs) + norm, torch.cat(scores)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d", [1, 2])
def test_binned_drift_matches_direct_summation(d, dtype):
    x = _cloud(2000, d, dtype)
    b = kde.silverman_bandwidth(x)
    log_d, score_d = kde.kde_log_density_and_score(x.double(), x.double(), b)
    log_b, score_b = kde.kde_log_density_and_score_binned(x, x, b)
    assert log_b.dtype == dtype and score_b.dtype == dtype and score_b.shape == (2000, d)
    assert float((log_b.double() - log_d).abs().max()) < LOG_ATOL
    assert _rel(score_b, score_d) < DRIFT_RTOL
    # the edge points individually (relative to the RMS score)
    rms = float(score_d.pow(2).sum(1).mean().sqrt())
    assert float((score_b[-2:].double() - score_d[-2:]).norm(dim=1).max()) < 2e-2 * rms
    target = gf.load_target("bimodal" if d == 1 else "four2d")
    for div in (gf.JSD, gf.KL):
        direct = particle_drift(x.double(), target, div, b, kde="direct")
        binned = particle_drift(x, target, div, b, kde="binned")
        assert binned.dtype == dtype
        assert _rel(binned, direct) < DRIFT_RTOL


def test_binned_matches_direct_at_a_finer_grid_as_h_squared():
    # the error is O(h^2 / b^2): halving h cuts it by about 4 (at least 2.5 here)
    x = _cloud(2000, 1, torch.float64, seed=3)
    b = kde.silverman_bandwidth(x)
    _, ref = kde.kde_log_density_and_score(x, x, b)
    errs = [_rel(kde.kde_log_density_and_score_binned(x, x, b, cells_per_bandwidth=c)[1], ref)
            for c in (4, 8)]
    assert errs[1] < errs[0] / 2.5, errs


@pytest.mark.parametrize("d", [1, 2])
def test_far_outlier_neither_explodes_the_grid_nor_loses_accuracy(d):
    # a fixed bandwidth (about Silverman's for the bulk) and a pair of points 1e7 away:
    # a grid reaching them at h = b/6 would need 2e8 cells per axis. The grid covers the
    # bulk; pairs with off-grid points are summed directly. Near-edge points exercise
    # both direct paths: a pair just outside the bulk box (outside queries) next to a
    # point inside it (edge queries).
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, d, generator=g, dtype=torch.float64)
    b = 0.25
    # the bulk box's upper x edge: 99 % quantile + (99 % - 1 % quantile) of 3005 points
    q_lo, q_hi = (float(x[:, 0].kthvalue(k).values) for k in (31, 2975))
    edge = 2 * q_hi - q_lo
    extra = torch.zeros(5, d, dtype=torch.float64)
    extra[:, 0] = torch.tensor([1e7, 1e7 + 0.05, edge - 0.3, edge + 0.3, edge + 0.4])
    x = torch.cat([x, extra])
    log_d, score_d = _brute_force(x, b)
    log_b, score_b = kde.kde_log_density_and_score_binned(
        x, x, b, max_cells=2000 if d == 1 else 2**16)
    assert torch.isfinite(log_b).all() and torch.isfinite(score_b).all()
    assert float((log_b - log_d).abs().max()) < LOG_ATOL
    assert _rel(score_b, score_d) < DRIFT_RTOL
    # the far pair attract each other exactly as in direct summation
    torch.testing.assert_close(score_b[-5:-3], score_d[-5:-3], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(log_b[-5:-3], log_d[-5:-3], rtol=1e-12, atol=1e-12)
    assert float((score_b[-3:] - score_d[-3:]).norm(dim=1).max()) < 0.02 * float(
        score_d[-3:].norm(dim=1).max())
    # with the default cap too (the grid is clipped to the bulk, not 6e8 cells wide)
    log_b2, score_b2 = kde.kde_log_density_and_score_binned(x, x, b)
    assert _rel(score_b2, score_d) < DRIFT_RTOL


def test_grid_queries_outside_the_cloud():
    # particles_on_grid evaluates the KDE on a box wider than the cloud: cells beyond the
    # cloud's grid get their (small) density by direct sums, farther ones exactly 0
    x = torch.randn(4000, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = Grid(dim=1, half_width=8.0, cells=800)
    u_direct = particles_on_grid(x.numpy(), grid, kde="direct")
    u_binned = particles_on_grid(x.numpy(), grid, kde="binned")
    l1 = float(np.abs(u_binned - u_direct).sum() * grid.cell_volume)
    assert l1 < 2e-3, l1


def test_binned_self_gradient_vanishes():
    # a lone point's own kernel has no gradient at it, binned as in direct summation
    x = torch.tensor([[0.123], [40.0]], dtype=torch.float64)
    _, score = kde.kde_log_density_and_score_binned(x, x, 0.5)
    assert float(score.abs().max()) < 1e-12


def test_kde_option_through_simulate_particles():
    kw = dict(divergence="kl", n=1500, t_end=0.1, dt=0.01, method="heun", seed=4)
    a = simulate_particles("bimodal", "normal:0:0.4", kde="binned", **kw)
    b = simulate_particles("bimodal", "normal:0:0.4", kde="direct", **kw)
    c = simulate_particles("bimodal", "normal:0:0.4", **kw)  # auto: binned in 1-D
    moved = np.abs(b.positions[-1] - b.positions[0]).mean()
    assert np.abs(a.positions[-1] - b.positions[-1]).mean() < 5e-3 * moved
    np.testing.assert_array_equal(a.positions[-1], c.positions[-1])
    with pytest.raises(gf.GanflowError, match="kde must be 'auto', 'binned' or 'direct'"):
        simulate_particles("bimodal", "normal:0:0.4", kde="fft", n=10, t_end=0.01)
    with pytest.raises(gf.GanflowError, match="1 or 2 dimensions, got 3"):
        simulate_particles("normal:0,0,0:1", "normal:0,0,0:0.5", kde="binned", n=10,
                           t_end=0.01)
    # 3-D: auto means direct, and runs
    sol = simulate_particles("normal:0,0,0:1", "normal:0,0,0:0.5", n=50, t_end=0.02, dt=0.01)
    assert np.isfinite(sol.positions).all()


def test_absurd_n_is_refused_before_allocating():
    est = estimate_particle_memory(10**11, 2, dtype=torch.float64, n_saves=3)
    assert est["working"] > 1e13 and est["saved"] > 1e12
    with pytest.raises(gf.GanflowError, match=r"1e\+11 particles in 2-D .* need about .* GB"):
        simulate_particles("four2d", "normal:0,0:0.5", n=1e11, t_end=0.01)
    res = CliRunner().invoke(app, ["particles", "--n", "1e11", "--no-pde"])
    assert res.exit_code == 2
    assert "1e+11 particles" in res.output and "GB" in res.output
    assert "Traceback" not in res.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_binned_on_cuda_matches_cpu():
    x = _cloud(5000, 2, torch.float32)
    b = kde.silverman_bandwidth(x)
    cpu = kde.kde_log_density_and_score_binned(x, x, b)
    dev = x.cuda()
    gpu = kde.kde_log_density_and_score_binned(dev, dev, b)
    assert gpu[1].device.type == "cuda"
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-5, atol=1e-5)
    assert _rel(gpu[1].cpu(), cpu[1]) < 1e-5


def test_memory_estimate_is_linear_in_n():
    a = estimate_particle_memory(10**6, 2)["working"]
    b = estimate_particle_memory(2 * 10**6, 2)["working"]
    assert math.isclose(b - a, a - estimate_particle_memory(0, 2)["working"])


def test_empty_grid_regions_give_zero_density_not_nan():
    # two clusters 40 bandwidths apart: grid cells between them see only FFT round-off
    x = torch.cat([torch.randn(500, 1, dtype=torch.float64) * 0.1,
                   torch.randn(500, 1, dtype=torch.float64) * 0.1 + 20.0])
    q = torch.linspace(-1.0, 21.0, 2001, dtype=torch.float64)[:, None]
    log_b, score_b = kde.kde_log_density_and_score_binned(q, x, 0.05)
    assert not torch.isnan(log_b).any() and torch.isfinite(score_b).all()
    gap = (q[:, 0] > 3) & (q[:, 0] < 17)
    assert bool(torch.isneginf(log_b[gap]).all())
    log_d, _ = kde.kde_log_density_and_score(q, x, 0.05)
    # within ~4 b of the points (density >= e^-8 of the peak): farther out in a kernel's
    # tail the per-pair relative error grows like (h r / b^2)^2, and below the round-off
    # floor (1e3 eps N ~ 2e-10 here, ln rho_hat ~ -27) binned reports 0 by design
    near = log_d > log_d.max() - 8
    assert float((log_b[near] - log_d[near]).abs().max()) < LOG_ATOL


def test_grid_cap_coarsens_with_a_warning_and_stays_finite():
    x = torch.randn(2000, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="binned KDE: the bulk"):
        log_b, score_b = kde.kde_log_density_and_score_binned(x, x, 0.01, max_cells=64)
    assert torch.isfinite(log_b).all() and torch.isfinite(score_b).all()
