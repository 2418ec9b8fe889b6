"""Metrics and the R1 penalty, written so that a plausible wrong formula fails (issue 14).

The older tests use equal mixture weights, std 1 and a linear logit, where three wrong
formulas give the right answer: a mode-weight KL against uniform weights, an HQ radius of
3 std^2 (= 3 std at std 1), and an R1 penalty on generated points (grad f is constant).
Here the weights are unequal, the stds are 0.5 and 2 (std^2 = 0.25 and 4), and the logit
is quadratic, so its input gradient differs between the data and the generated batch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ganflow import GaussianMixture
from ganflow.algorithm import calibrate_discriminator
from ganflow.metrics import HQ_STDS, mode_metrics

# two well separated components (20 apart, > 3 x 3.5 std of both) of unequal weight and
# std: the nearest centre of every point below is never in doubt
_MIX = GaussianMixture([0.8, 0.2], [[0.0, 0.0], [20.0, 0.0]], [0.5, 2.0])


def test_hq_radius_is_three_stds_of_the_nearest_centre_for_std_not_one():
    assert HQ_STDS == 3.0
    c0, c1 = np.array([0.0, 0.0]), np.array([20.0, 0.0])
    up, diag = np.array([0.0, 1.0]), np.array([0.6, 0.8])  # unit vectors
    for centre, std in ((c0, 0.5), (c1, 2.0)):
        for direction in (up, diag, -up):
            # 2.5 std away: HQ; 3.5 std away: not. With a radius of 3 std^2 the std-0.5
            # point at 2.5 std (1.25 > 0.75) would be rejected and the std-2 point at
            # 3.5 std (7 < 12) accepted.
            inside = mode_metrics((centre + 2.5 * std * direction)[None], _MIX)
            outside = mode_metrics((centre + 3.5 * std * direction)[None], _MIX)
            assert (inside["hq"], inside["modes"]) == (1.0, 1), (centre, std, direction)
            assert (outside["hq"], outside["modes"]) == (0.0, 0), (centre, std, direction)


def test_hq_uses_each_modes_own_std():
    # 1.2 from centre 0 (std 0.5): 2.4 std, HQ; 7.0 from centre 1 (std 2): 3.5 std, not;
    # 5.0 from centre 1: 2.5 std, HQ; 1.6 from centre 0: 3.2 std, not HQ
    pts = np.array([[1.2, 0.0], [20.0, 7.0], [20.0, -5.0], [0.0, 1.6]])
    m = mode_metrics(pts, _MIX)
    assert m["hq"] == pytest.approx(2 / 4)
    assert m["modes"] == 2


def test_mode_kl_is_against_the_target_weights():
    w = np.array([0.8, 0.2])
    c0, c1 = [0.0, 0.0], [20.0, 0.0]
    # the histogram equals the weights (8 : 2): KL 0, while against uniform weights it
    # would be KL((0.8, 0.2) || (0.5, 0.5)) = 0.193
    m = mode_metrics(np.array([c0] * 8 + [c1] * 2), _MIX)
    assert (m["modes"], m["hq"]) == (2, 1.0)
    assert m["mode_kl"] == pytest.approx(0.0, abs=1e-15)
    # balanced histogram (1/2, 1/2) against (0.8, 0.2): 1/2 ln(1/1.6) + 1/2 ln(1/0.4)
    m = mode_metrics(np.array([c0] * 5 + [c1] * 5), _MIX)
    expected = float((0.5 * np.log(0.5 / w)).sum())
    assert expected == pytest.approx(0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2))
    assert m["mode_kl"] == pytest.approx(expected, rel=1e-12)  # 0.223; uniform: 0
    # non-HQ samples do not enter the histogram (a 4 std outlier near mode 1)
    m = mode_metrics(np.array([c0] * 8 + [c1] * 2 + [[20.0, 8.0]]), _MIX)
    assert m["hq"] == pytest.approx(10 / 11)
    assert m["mode_kl"] == pytest.approx(0.0, abs=1e-15)
    # collapse onto the light mode: KL = ln(1 / 0.2), not ln 2
    m = mode_metrics(np.array([c1] * 4), _MIX)
    assert m["mode_kl"] == pytest.approx(math.log(5), rel=1e-12)


class _QuadraticLogit(nn.Module):
    r"""f(x) = a/2 |x|^2 + w.x + b: grad_x f = a x + w depends on x."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
        self.w = nn.Parameter(torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64)[:d])
        self.b = nn.Parameter(torch.tensor(0.1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.a * x.pow(2).sum(-1) + x @ self.w + self.b


def test_r1_penalty_is_taken_on_the_data_with_a_gradient_that_varies_in_x():
    # P = (gamma/2) mean_i |a x_i + w|^2 over the REAL batch x. Its parameter gradient:
    #   dP/dw = gamma mean_i (a x_i + w),  dP/da = gamma mean_i (a x_i + w).x_i,  dP/db = 0.
    # The logistic loss (and so its gradient) does not depend on gamma, so one SGD step
    # with the penalty minus one step without is exactly -lr * dP/dtheta at the start.
    # The real batch is centred at +2, the fake one at -1: the penalty on the fake batch
    # gives dP/dw ~ gamma (w - a) instead of ~ gamma (w + 2a), far outside float64 error.
    gen = torch.Generator().manual_seed(4)
    real = torch.randn(64, 3, generator=gen, dtype=torch.float64) * 0.5 + 2.0
    fake = torch.randn(64, 3, generator=gen, dtype=torch.float64) * 0.5 - 1.0
    gamma, lr = 0.7, 0.1
    after = {}
    for g in (0.0, gamma):
        D = _QuadraticLogit(3)
        opt = torch.optim.SGD(D.parameters(), lr=lr)
        loss, taken = calibrate_discriminator(D, opt, lambda: real, lambda: fake, steps=1,
                                              penalty=g)
        assert taken == 1
        after[g] = ({k: v.detach().clone() for k, v in D.named_parameters()}, loss)
    D0 = _QuadraticLogit(3)
    a0, w0 = D0.a.detach(), D0.w.detach()
    grad_f = a0 * real + w0  # (64, 3)
    dw = gamma * grad_f.mean(0)
    da = gamma * (grad_f * real).sum(-1).mean()
    tol = {"rtol": 1e-10, "atol": 1e-13}
    new, old = after[gamma][0], after[0.0][0]
    torch.testing.assert_close(new["w"] - old["w"], -lr * dw, **tol)
    torch.testing.assert_close(new["a"] - old["a"], -lr * da, **tol)
    torch.testing.assert_close(new["b"], old["b"], rtol=0, atol=0)
    assert after[gamma][1] == after[0.0][1]  # the reported loss is the logistic loss alone
    # not vacuous: the same formula on the fake batch is far from the real-batch answer
    grad_fake = a0 * fake + w0
    assert float((gamma * grad_fake.mean(0) - dw).abs().max()) > 0.1
    assert abs(float(gamma * (grad_fake * fake).sum(-1).mean() - da)) > 0.1
