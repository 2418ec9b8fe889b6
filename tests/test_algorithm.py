r"""Algorithm 1 (docs/theory.md section 5): Proposition 8, and an oracle run of the flow."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ganflow import GanflowError
from ganflow.algorithm import (
    StepConfig,
    algorithm_step,
    calibrate_discriminator,
    push_targets,
)
from ganflow.fitting import (
    assignment_permutation,
    energy_fit_loss,
    fit_generator,
    gauss_newton_fit,
    generator_loss,
)
from ganflow.networks import make_discriminator, make_generator

# float64 round-off: the MSE gradient is 2 (G - y) with G - y = -eps * drift computed as a
# difference of O(1) numbers, so it carries ~1e-16 / (eps |drift|) ~ 1e-14 relative error.
F64_TOL = {"rtol": 1e-10, "atol": 1e-13}


def _nets(seed: int = 0):
    torch.manual_seed(seed)
    G = make_generator(2, 2, width=16, depth=2).double()
    D = make_discriminator(2, width=16, depth=2).double()
    return G, D


def _grads(net: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(net.parameters())))


@pytest.mark.parametrize("eps", [1.0, 0.1, 0.003])
def test_proposition8_gradient(eps):
    # Prop. 8: grad_theta (1/m) sum |G(z_i) - y_i|^2 = eps grad_theta (1/m) sum ln(1 - D(G(z_i)))
    G, D = _nets()
    z = torch.randn(64, 2, dtype=torch.float64)
    with torch.no_grad():
        x = G(z)
    y, _ = push_targets(D, x, eps=eps, divergence="jsd")
    g_flow = _grads(G, generator_loss("flow", targets=y)(G(z)))
    g_gan = _grads(G, generator_loss("gan", D=D)(G(z)))
    for a, b in zip(g_flow, g_gan, strict=True):
        torch.testing.assert_close(a, eps * b, **F64_TOL)
    # not vacuous: the gradients are not zero, and the non-saturating loss differs
    assert max(float(g.abs().max()) for g in g_gan) > 1e-4
    g_ns = _grads(G, generator_loss("gan-ns", D=D)(G(z)))
    assert not torch.allclose(g_flow[0], -eps * g_ns[0], rtol=1e-3)


def test_proposition8_full_iteration():
    # With SGD: one Algorithm 1 iteration (lr) == one saturating-GAN iteration (lr * eps).
    eps, lr = 0.25, 0.05
    params = []
    for method, lr_g in (("flow", lr), ("gan", lr * eps)):
        G, D = _nets(seed=1)
        opt_g = torch.optim.SGD(G.parameters(), lr=lr_g)
        opt_d = torch.optim.SGD(D.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(7)
        cfg = StepConfig(method=method, eps=eps, batch_size=32, fit_steps=1, pairing="index")
        def data(m, gen=gen):
            return torch.randn(m, 2, generator=gen, dtype=torch.float64) * 0.3 + 1

        def latent(m, gen=gen):
            return torch.randn(m, 2, generator=gen, dtype=torch.float64)

        for _ in range(3):
            algorithm_step(G, D, opt_g, opt_d, data, latent, cfg)
        params.append([p.detach().clone() for p in (*G.parameters(), *D.parameters())])
    G0, _ = _nets(seed=1)
    start = [p.detach() for p in G0.parameters()]
    after = params[0][: len(start)]
    moved = max(float((a - b).abs().max()) for a, b in zip(after, start, strict=True))
    assert moved > 1e-4  # the iterations did something
    for a, b in zip(*params, strict=True):
        torch.testing.assert_close(a, b, **F64_TOL)


def test_step_rejects_bad_options():
    with pytest.raises(GanflowError, match="method"):
        StepConfig(method="wgan")
    with pytest.raises(GanflowError, match="pairing"):
        StepConfig(pairing="greedy")
    with pytest.raises(GanflowError, match="eps"):
        StepConfig(eps=-1.0)
    with pytest.raises(GanflowError, match="fit_steps"):
        StepConfig(fit_steps=0)
    with pytest.raises(GanflowError, match="divergence"):
        StepConfig(divergence="hellinger")


def test_assignment_permutation_is_optimal():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    perm_true = torch.randperm(6, generator=gen)
    y = x[perm_true] + 1e-3  # y shuffled: the optimal pairing undoes the shuffle
    perm = assignment_permutation(x, y)
    torch.testing.assert_close(y[perm], x + 1e-3)


def _energy_distance_numpy(x, y):
    """V-statistic energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'|, brute force in numpy."""
    import numpy as np

    def mean_dist(a, b):
        return np.mean(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)))

    x, y = x.numpy(), y.numpy()
    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def test_energy_fit_loss_is_the_energy_distance_up_to_a_constant():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(50, 2, generator=gen, dtype=torch.float64) + 0.7
    yy = float(torch.cdist(y, y).mean())  # the term left out: it does not depend on x
    # 1e-12 under the square root shifts each of ~4500 distances by at most 1e-6: the
    # diagonal terms (distance 0) by exactly 1e-6 each, 40 of 1600 in the x-x mean
    assert abs(float(energy_fit_loss(x, y)) - yy - _energy_distance_numpy(x, y)) < 1e-6
    assert float(energy_fit_loss(x, y)) - yy > 0.05  # different laws: clearly positive


def test_energy_fit_loss_is_stationary_at_any_reordering_of_the_targets():
    # the set-wise fit: G(z_i) = y_pi(i) for ANY permutation pi is a critical point, and
    # moving the set away from the targets (a shift, or a collapse) raises the loss
    gen = torch.Generator().manual_seed(6)
    y = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    x = y[torch.randperm(30, generator=gen)].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy_fit_loss(x, y), x)
    # each gradient row is a difference of two sums of 30 unit vectors / 30^2, equal
    # up to the 1e-12 smoothing: far below 1e-8
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-8)
    at_targets = float(energy_fit_loss(y, y))
    assert float(energy_fit_loss(y + 0.1, y)) > at_targets
    assert float(energy_fit_loss(y.mean(0).expand(30, 2) + 0 * y, y)) > at_targets + 0.1


def test_energy_pairing_trains_and_refuses_the_faithful_mode():
    G, D = _nets()
    opt_g = torch.optim.SGD(G.parameters(), lr=0.05)
    opt_d = torch.optim.SGD(D.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    info = algorithm_step(
        G, D, opt_g, opt_d,
        lambda m: torch.randn(m, 2, generator=gen, dtype=torch.float64) + 2.0,
        lambda m: torch.randn(m, 2, generator=gen, dtype=torch.float64),
        StepConfig(pairing="energy", fit_steps=3, batch_size=64),
    )
    assert info.fit_steps == 3 and math.isfinite(info.g_loss)
    assert math.isnan(info.fit_ratio)  # an energy distance is no point-wise residual
    with pytest.raises(GanflowError, match="energy"):
        StepConfig(pairing="energy", faithful=True)


def test_r1_penalty_adds_gamma_w_to_a_linear_logits_gradient():
    # f(x) = w.x + b has grad_x f = w everywhere, so (gamma/2) E|grad f|^2 = gamma/2 |w|^2
    # and its gradient is gamma * w (b untouched): one SGD step with the penalty differs
    # from one without by exactly -lr * gamma * w
    gen = torch.Generator().manual_seed(2)
    real = torch.randn(32, 3, generator=gen, dtype=torch.float64)
    fake = torch.randn(32, 3, generator=gen, dtype=torch.float64) + 1.0
    after = {}
    for gamma in (0.0, 0.7):
        torch.manual_seed(0)
        D = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)).double()
        w0 = D[0].weight.detach().clone()
        opt = torch.optim.SGD(D.parameters(), lr=0.1)
        loss, taken = calibrate_discriminator(D, opt, lambda: real, lambda: fake,
                                              steps=1, penalty=gamma)
        after[gamma] = (D[0].weight.detach().clone(), D[0].bias.detach().clone(), loss)
    torch.testing.assert_close(after[0.7][0] - after[0.0][0], -0.1 * 0.7 * w0, **F64_TOL)
    torch.testing.assert_close(after[0.7][1], after[0.0][1], rtol=0, atol=0)
    assert after[0.7][2] == after[0.0][2]  # the reported loss is the logistic loss alone


def test_d_penalty_rejects_bad_values():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(GanflowError, match="--d-penalty"):
            StepConfig(d_penalty=bad)


# ------------------------------------------------------------------ oracle test
class _OracleKL(nn.Module):
    r"""Exact logit f = ln rho_d - ln rho_G for rho_d = N(0, 1) and the affine generator
    G(z) = mu + sigma z (so rho_G = N(mu, sigma^2)), read off G's current parameters."""

    def __init__(self, G: nn.Linear) -> None:
        super().__init__()
        self.G = G

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        mu, sigma = self.G.bias.detach(), self.G.weight.detach().abs().reshape(())
        y = y[:, 0]
        return -0.5 * y**2 + 0.5 * ((y - mu) / sigma) ** 2 + torch.log(sigma)


def _oracle_run(a: float, s: float, eps: float, n_iter: int, m: int = 4000):
    G = nn.Linear(1, 1).double()
    with torch.no_grad():
        G.weight.fill_(s)
        G.bias.fill_(a)
    D = _OracleKL(G)
    # A standardised latent batch (mean 0, variance 1 exactly) makes the MSE of the affine
    # G a quadratic with Hessian 2I, so one SGD step of lr 1/2 is the exact fit (Newton).
    z = torch.randn(m, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = (z - z.mean()) / z.std(unbiased=False)
    opt = torch.optim.SGD(G.parameters(), lr=0.5)
    resid = 0.0
    for _ in range(n_iter):
        with torch.no_grad():
            x = G(z)
        y, _ = push_targets(D, x, eps=eps, divergence="kl")
        fit_generator(G, opt, z, generator_loss("flow", targets=y), steps=1)
        with torch.no_grad():
            resid = max(resid, float((G(z) - y).abs().max()))
    return float(G.bias.detach()), float(G.weight.detach().abs()), resid


@pytest.mark.parametrize(("a", "s"), [(2.0, 0.5), (-1.0, 2.0)])
def test_oracle_follows_ou_flow(a, s):
    # KL flow from N(a, s^2) to N(0, 1): N(a e^-t, 1 + (s^2 - 1) e^-2t), t = eps x iterations
    t_end = 1.0
    errs = []
    for eps in (0.02, 0.01):
        n_iter = round(t_end / eps)
        mu, sigma, resid = _oracle_run(a, s, eps, n_iter)
        assert resid < 1e-10  # the fit is exact: G(z) = y for every i
        t = eps * n_iter
        mu_ex = a * math.exp(-t)
        sd_ex = math.sqrt(1 + (s**2 - 1) * math.exp(-2 * t))
        # explicit Euler in flow time: O(eps) error, here < 2 eps relative
        torch.testing.assert_close(torch.tensor([mu, sigma]), torch.tensor([mu_ex, sd_ex]),
                                   rtol=2 * eps, atol=0.0)
        errs.append(abs(mu - mu_ex) + abs(sigma - sd_ex))
    # first order in eps: halving eps halves the error (ratio 2 within 15 %)
    assert 1.7 < errs[0] / errs[1] < 2.3


def test_faithful_step_control_bounds_moves():
    G, D = _nets(seed=2)
    with torch.no_grad():  # a sharp discriminator: large input gradients
        for p in D.parameters():
            p.mul_(3)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    cfg = StepConfig(eps=10.0, divergence="kl", faithful=True, cfl=0.5, length_scale=0.02,
                     batch_size=64, fit_max_steps=30, calib_max_steps=5, step_quantile=1.0)
    info = algorithm_step(
        G, D, opt_g, opt_d,
        lambda m: torch.randn(m, 2, generator=gen, dtype=torch.float64),
        lambda m: torch.randn(m, 2, generator=gen, dtype=torch.float64), cfg,
    )
    # the controlled step moves the fastest target exactly cfl * length_scale
    assert info.flow_time < 10.0
    assert info.flow_time * info.drift_max == pytest.approx(0.5 * 0.02, rel=1e-9)
    assert 1 <= info.d_steps <= 5 and 1 <= info.fit_steps <= 30


def test_calibration_stops_when_loss_plateaus():
    _, D = _nets(seed=4)
    # lr 0: no step improves -> stop as soon as the 5-step window is full
    opt = torch.optim.SGD(D.parameters(), lr=0.0)
    gen = torch.Generator().manual_seed(0)

    def draw(m=32):
        return torch.randn(m, 2, generator=gen, dtype=torch.float64)

    _, taken = calibrate_discriminator(D, opt, draw, draw, steps=2, tol=1e-3, max_steps=50)
    assert taken == 5
    opt = torch.optim.Adam(D.parameters(), lr=1e-2)
    _, taken = calibrate_discriminator(D, opt, draw, lambda: draw() + 3, steps=1, tol=1e-9,
                                       max_steps=7)
    assert taken == 7  # a separable problem keeps improving: the cap holds


def test_step_quantile_sets_the_step_and_clips_the_fastest():
    # with step_quantile q, eps_t = cfl * L / quantile_q(|drift|) (unless eps binds), and no
    # target moves more than cfl * L: the few faster points are clipped, not the time step
    G, D = _nets(seed=2)
    with torch.no_grad():
        for p in D.parameters():
            p.mul_(3)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3)
    opt_d = torch.optim.SGD(D.parameters(), lr=0.0)  # D frozen: the drift is known below
    gen = torch.Generator().manual_seed(0)
    cfg = StepConfig(eps=10.0, divergence="kl", faithful=True, cfl=0.5, length_scale=0.02,
                     batch_size=64, calib_max_steps=5, step_quantile=0.5, fit_max_steps=30,
                     fit_solver="gauss-newton")
    info = algorithm_step(
        G, D, opt_g, opt_d,
        lambda m: torch.randn(m, 2, generator=gen, dtype=torch.float64),
        lambda m: torch.randn(m, 2, generator=gen, dtype=torch.float64), cfg,
    )
    assert info.flow_time < 10.0
    # the median speed sets the step, so the fastest point would have moved further
    assert info.flow_time * info.drift_max > 0.5 * 0.02 * 1.01
    # the (default) Gauss-Newton fit reached its tolerance on the clipped targets
    assert info.fit_ratio < 0.1


@pytest.mark.parametrize("scale", [1e-1, 1e-3, 1e-5])
def test_gauss_newton_fit_reaches_tolerance_at_any_scale(scale):
    # a smooth displacement field of any size is fitted to 10 % in a few steps, where Adam
    # (per-parameter normalised steps of about lr) overshoots displacements below lr
    torch.manual_seed(0)
    G = make_generator(2, 2, width=64, depth=2).double()
    z = torch.randn(256, 2, dtype=torch.float64)
    with torch.no_grad():
        x = G(z)
    y = x + scale * torch.stack([torch.sin(3 * x[:, 1]), torch.cos(2 * x[:, 0])], -1)
    disp = float((y - x).pow(2).sum(-1).mean().sqrt())
    resid, taken = gauss_newton_fit(G, z, y, tol=0.1, scale=disp, max_steps=10)
    assert resid < 0.1 * disp
    assert taken <= 5
    with torch.no_grad():
        assert float((G(z) - y).pow(2).sum(-1).mean().sqrt()) == pytest.approx(resid)
    # the optimizer baseline, for contrast: 10 Adam steps of lr 1e-3 on the same problem
    if scale <= 1e-3:
        torch.manual_seed(0)
        G2 = make_generator(2, 2, width=64, depth=2).double()
        opt = torch.optim.Adam(G2.parameters(), lr=1e-3)
        fit_generator(G2, opt, z, generator_loss("flow", targets=y), steps=10)
        with torch.no_grad():
            assert float((G2(z) - y).pow(2).sum(-1).mean().sqrt()) > 0.1 * disp


def test_gauss_newton_fit_never_increases_the_residual():
    # a rough target (noise at the points) cannot be fitted to 1 %: the capped fit still
    # never ends worse than it started (rejected Levenberg-Marquardt steps are undone)
    torch.manual_seed(1)
    G = make_generator(2, 2, width=16, depth=1).double()
    z = torch.randn(128, 2, dtype=torch.float64)
    with torch.no_grad():
        x = G(z)
    y = x + 0.1 * torch.randn(128, 2, dtype=torch.float64)
    disp = float((y - x).pow(2).sum(-1).mean().sqrt())
    resid, taken = gauss_newton_fit(G, z, y, tol=0.01, scale=disp, max_steps=4)
    assert taken == 4
    assert resid <= disp
