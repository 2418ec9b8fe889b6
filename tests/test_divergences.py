import pytest
import torch

import ganflow as gf
from ganflow import GaussianMixture

ALL = [gf.JSD, gf.KL, gf.NS, gf.CHI2]


@pytest.mark.parametrize("div", ALL, ids=lambda d: d.name)
def test_mobility_is_v_times_phi_second_derivative(div):
    v = torch.linspace(0.05, 20, 200, dtype=torch.float64)
    d2 = torch.autograd.functional.hessian(lambda s: div.phi(s).sum(), v).diagonal()
    torch.testing.assert_close(div.mobility(v), v * d2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("div", ALL, ids=lambda d: d.name)
def test_phi_vanishes_at_one_and_is_convex(div):
    one = torch.ones(1, dtype=torch.float64)
    assert abs(float(div.phi(one))) < 1e-14
    v = torch.linspace(0.01, 10, 100, dtype=torch.float64)
    assert (div.phi(v) >= -1e-14).all()


@pytest.mark.parametrize("div", ALL, ids=lambda d: d.name)
def test_logit_mobility_is_the_composition(div):
    f = torch.linspace(-5, 5, 101, dtype=torch.float64)
    torch.testing.assert_close(div.mobility_of_logit(f), div.mobility(torch.exp(-f)))


def test_logit_mobilities_stay_finite_for_extreme_logits():
    f = torch.tensor([-800.0, 800.0], dtype=torch.float64)
    for div in (gf.JSD, gf.KL, gf.NS):
        assert torch.isfinite(div.mobility_of_logit(f)).all()


@pytest.mark.parametrize("div", ALL, ids=lambda d: d.name)
def test_mobility_derivative_matches_finite_differences(div):
    v = torch.linspace(0.1, 5, 50, dtype=torch.float64)
    _, dm = div.mobility_and_derivative(v)
    eps = 1e-6
    fd = (div.mobility(v + eps) - div.mobility(v - eps)) / (2 * eps)
    torch.testing.assert_close(dm, fd, rtol=1e-6, atol=1e-8)


def test_jsd_drift_from_optimal_logit_equals_ode_2():
    # ODE (2): -1/2 [grad rho/rho - (grad rho_d + grad rho)/(rho_d + rho)], by autograd,
    # must equal eq. (20): 1/2 sigmoid(f) grad f with f = ln(rho_d / rho).
    rho_d = GaussianMixture([0.4, 0.6], [[-1.0, 0.0], [1.0, 1.0]], [0.5, 0.8])
    rho = GaussianMixture([1.0], [[0.3, -0.2]], [0.7])
    y = torch.randn(64, 2, dtype=torch.float64).requires_grad_(True)
    pd, pr = rho_d.prob(y), rho.prob(y)
    (g_d,) = torch.autograd.grad(pd.sum(), y, retain_graph=True)
    (g_r,) = torch.autograd.grad(pr.sum(), y)
    ode2 = -0.5 * (g_r / pr[:, None] - (g_d + g_r) / (pd + pr)[:, None])
    f = rho_d.log_prob(y) - rho.log_prob(y)
    grad_f = rho_d.score(y) - rho.score(y)
    torch.testing.assert_close(gf.JSD.drift(f.detach(), grad_f.detach()), ode2.detach(),
                               rtol=1e-10, atol=1e-12)


def test_unknown_divergence_names_the_choices():
    with pytest.raises(gf.GanflowError, match="unknown divergence 'hellinger'.*jsd"):
        gf.get_divergence("hellinger")


def test_a_new_divergence_is_a_few_lines():
    sqrt_flow = gf.Divergence("custom", mobility=lambda v: v.sqrt())
    m, dm = sqrt_flow.mobility_and_derivative(torch.tensor([4.0], dtype=torch.float64))
    assert float(m) == 2.0 and abs(float(dm) - 0.25) < 1e-15
