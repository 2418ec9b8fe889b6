"""The flow-map method: a generator that follows ODE (2) (docs/theory.md section 8).

Closed form (section 8): KL flow, data N(0, 1), start N(2, 0.5^2). The velocity is affine,
so the flow map is X_t(x) = m_t + sqrt(v_t / s0^2) (x - m0), m_t = 2 e^{-t},
v_t = 1 - 0.75 e^{-2t}, and the generator G_0(z) = 2 + 0.5 z_1 must become
G_t(z) = m_t + sqrt(v_t) z_1, point by point.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _ou_flow import M0, S0, assert_run_follows_the_flow, learned_d_config
from _ou_flow import flow_map as _flow_map
from _ou_flow import ou as _ou

from ganflow import GanflowError
from ganflow.algorithm import StepConfig
from ganflow.data import load_data
from ganflow.flow_map import flow_map_step, initial_pairs, repair_pairs
from ganflow.generator_init import fit_generator_to_law
from ganflow.networks import make_generator
from ganflow.training import TrainConfig, load_run, read_metrics, resume, sample_run, train


class _OracleLogit(torch.nn.Module):
    """f = ln(rho_d / u_t) for rho_d = N(0, 1), u_t = N(m_t, v_t): the exact logit."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, v = _ou(self.t)
        x = x[:, 0]
        return -0.5 * x**2 + 0.5 * (x - m) ** 2 / v + 0.5 * math.log(v)


def _started_generator(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    G = make_generator(2, 1, width=64, depth=3)
    fit_generator_to_law(G, load_data(f"normal:{M0}:{S0}"), latent_dim=2, steps=1500,
                         generator=torch.Generator().manual_seed(seed + 1))
    return G


def _run_oracle(eps: float, t_end: float, *, n: int = 20000, fit_steps: int = 4):
    G = _started_generator()
    z, x = initial_pairs(G, n, 2, torch.Generator().manual_seed(2))
    x0 = x.clone()
    D = _OracleLogit()
    opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    cfg = StepConfig(divergence="kl", eps=eps, batch_size=512, fit_steps=fit_steps)
    pick_gen = torch.Generator().manual_seed(3)

    def pick(m: int) -> torch.Tensor:
        return torch.randint(0, n, (m,), generator=pick_gen)

    snaps = {}
    for k in range(1, round(t_end / eps) + 1):
        flow_map_step(G, D, opt, None, z, x, None, pick, cfg)
        D.t = k * eps
        if any(abs(D.t - s) < 1e-9 for s in (0.5, 1.0)):
            snaps[round(D.t, 6)] = (G, {k: v.clone() for k, v in G.state_dict().items()},
                                    x.clone())
    return x0, snaps


def test_init_fits_the_affine_start_point_by_point():
    G = _started_generator()
    z = torch.zeros(41, 2)
    z[:, 0] = torch.linspace(-2.5, 2.5, 41)
    with torch.no_grad():
        err = (G(z)[:, 0] - (M0 + S0 * z[:, 0])).abs().max()
    # a 3 x 64 ReLU MLP fits an affine map on the bulk to ~1e-2 in 1500 Adam steps; the
    # tracking tolerances below (0.05) leave room for this start error
    assert err < 0.03


def test_particles_follow_the_flow_map_at_first_order_in_eps():
    # The x_i are an Euler solution of the ODE: the error to X_t(x_i(0)) halves with eps.
    errs = []
    for eps in (0.02, 0.01):
        x0, snaps = _run_oracle(eps, 1.0, n=4000, fit_steps=1)
        x1 = snaps[1.0][2]
        errs.append(float((x1 - _flow_map(x0, 1.0)).abs().max()))
    order = math.log2(errs[0] / errs[1])
    assert 0.8 < order < 1.2, errs  # Euler: order 1
    # the max over 4000 particles includes the tails (|x - 2| up to 2), where the
    # Euler error eps t |x''| / 2 is largest: measured 0.044 at eps = 0.01
    assert errs[1] < 0.06, errs


def test_generator_matches_the_ou_flow_map_with_the_exact_drift():
    x0, snaps = _run_oracle(0.01, 1.0)
    zg = torch.randn(20000, 2, generator=torch.Generator().manual_seed(9))
    zline = torch.zeros(41, 2)
    zline[:, 0] = torch.linspace(-2.5, 2.5, 41)
    for t in (0.5, 1.0):
        G, state, _ = snaps[t]
        G.load_state_dict(state)
        m, v = _ou(t)
        with torch.no_grad():
            g = G(zg)[:, 0].double()
            line = G(zline)[:, 0].double()
        # in law: the mean and variance of 20 000 draws have standard errors
        # sqrt(v / n) = 0.007 and v sqrt(2 / n) = 0.009; Euler's bias at eps = 0.01 is
        # about 0.01 (previous test); 0.04 is 4x their sum
        assert abs(float(g.mean()) - m) < 0.04, (t, float(g.mean()), m)
        assert abs(float(g.var()) - v) < 0.04, (t, float(g.var()), v)
        # point by point: G_t(z) = m_t + sqrt(v_t) z_1. G lags its particles by a few
        # steps of size eps |drift| (|drift| <= 2 on the bulk): 0.05 is that lag plus the
        # start's fit error, against a displacement of 0.8-1.3 by t = 0.5-1
        exact = m + math.sqrt(v) * zline[:, 0].double()
        assert float((line - exact).abs().max()) < 0.05, t


def test_flow_map_run_with_a_learned_discriminator(tmp_path):
    # The whole method through train(): a learned D instead of the oracle (_ou_flow.py
    # says how D was set and why the bounds are what they are).
    run = train(learned_d_config("flow-map"), out=tmp_path / "r", progress=False)
    assert run.status == "finished"
    assert_run_follows_the_flow(tmp_path / "r")


def test_flow_map_resume_gives_the_same_metrics(tmp_path):
    cfg = TrainConfig(data="ring8", method="flow-map", width=16, depth=2, batch_size=32,
                      iterations=30, eval_every=10, eval_samples=200, w2_samples=100,
                      particles=300, d_steps=2, fit_steps=2, init="normal:0,0:1",
                      repair_every=7,  # re-pairs at 7 and 14, on both sides of the stop
                      fit_nearest=0.5)  # its fresh latents come from the run's stream
    train(cfg, out=tmp_path / "full", progress=False)
    part = train(cfg, out=tmp_path / "part", progress=False, stop_at=10)
    assert part.iteration == 10
    resume(tmp_path / "part", progress=False)
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    keys = ("iteration", "flow_time", "energy", "w2", "pair_rms", "d_loss", "g_loss",
            "particles_hq", "pairs_hq", "pairs_mode_kl")
    assert [{k: r.get(k) for k in keys} for r in a] == [{k: r.get(k) for k in keys} for r in b]
    assert a[-1]["pair_rms"] is not None and a[-1]["g_loss"] is not None
    # G at the pairs' latents is scored on the particles' subsample: at iteration 0 the
    # particles ARE G_0 at those latents, so the two agree (to float rounding of G's batch)
    assert a[0]["pairs_modes"] == a[0]["particles_modes"]
    assert a[0]["pairs_hq"] == a[0]["particles_hq"]
    assert a[0]["pairs_mode_kl"] == pytest.approx(a[0]["particles_mode_kl"], rel=1e-9, abs=1e-12)
    # later the regression has not caught up with its particles (a fit of 2 steps)
    assert a[-1]["pair_rms"] > 0
    torch.testing.assert_close(sample_run(tmp_path / "full", 50), sample_run(tmp_path / "part", 50),
                               rtol=0, atol=0)


def test_fit_optimizer_is_the_regressions_alone_and_survives_a_resume(tmp_path):
    # an SGD discriminator with an Adam regression: each network gets its own optimizer,
    # and a resumed run (its optimizer states restored by type) continues as an unbroken one
    cfg = TrainConfig(data="ring8", method="flow-map", width=16, depth=2, batch_size=32,
                      iterations=20, eval_every=10, eval_samples=200, w2_samples=100,
                      particles=300, d_steps=2, fit_steps=2, optimizer="sgd", lr_d=0.1,
                      lr_g=1e-3, fit_optimizer="adam")
    train(cfg, out=tmp_path / "full", progress=False)
    train(cfg, out=tmp_path / "part", progress=False, stop_at=10)
    resume(tmp_path / "part", progress=False)
    run = load_run(tmp_path / "part")
    assert isinstance(run.session.opt_g, torch.optim.Adam)
    assert isinstance(run.session.opt_d, torch.optim.SGD)
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [r.get("g_loss") for r in a] == [r.get("g_loss") for r in b]
    # and not the same run as an SGD regression
    sgd = TrainConfig(**{**cfg.to_dict(), "fit_optimizer": None})
    train(sgd, out=tmp_path / "sgd", progress=False)
    assert read_metrics(tmp_path / "sgd")[-1]["g_loss"] != a[-1]["g_loss"]


def test_repair_pairs_keeps_the_particles_and_undoes_a_scramble():
    torch.manual_seed(0)
    G = make_generator(2, 2, width=16, depth=2)
    z = torch.randn(600, 2)
    with torch.no_grad():
        target = G(z)
    x = target[torch.randperm(600, generator=torch.Generator().manual_seed(1))].clone()
    before_set = x.clone()
    # blocks of 256: each re-paired block has a residual no larger than before
    b, a = repair_pairs(G, z, x, torch.Generator().manual_seed(2), block=256)
    assert a < b
    # the particles are only permuted: the same set, the law untouched
    assert torch.equal(x[x[:, 0].argsort()], before_set[before_set[:, 0].argsort()])
    # one block of all pairs: the exact assignment is the identity, residual 0
    _, a_all = repair_pairs(G, z, x, torch.Generator().manual_seed(3), block=600)
    assert a_all < 1e-6
    torch.testing.assert_close(x, target, rtol=0, atol=0)


def test_flow_map_refusals(tmp_path):
    with pytest.raises(GanflowError, match="chi2"):
        TrainConfig(method="flow-map", divergence="chi2")
    with pytest.raises(GanflowError, match="repair-every"):
        TrainConfig(method="flow", repair_every=100)
    with pytest.raises(GanflowError, match="repair-every"):
        TrainConfig(method="flow-map", repair_every=-1)
    with pytest.raises(GanflowError, match="--fit-loss l1 is flow-map's"):
        TrainConfig(method="flow", fit_loss="l1")
    with pytest.raises(GanflowError, match="unknown --fit-loss 'huber'"):
        TrainConfig(method="flow-map", fit_loss="huber")
    with pytest.raises(GanflowError, match="--fit-optimizer adam chooses flow-map's"):
        TrainConfig(method="gan", fit_optimizer="adam")
    with pytest.raises(GanflowError, match="unknown --fit-optimizer 'lbfgs'"):
        TrainConfig(method="flow-map", fit_optimizer="lbfgs")
    with pytest.raises(GanflowError, match="--fit-nearest is a term of flow-map's"):
        TrainConfig(method="flow", fit_nearest=1.0)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(GanflowError, match="--fit-nearest must be a finite number"):
            TrainConfig(method="flow-map", fit_nearest=bad)
    with pytest.raises(GanflowError, match="init"):
        train(TrainConfig(data="ring8", method="flow-map", init="normal:0:1", iterations=2),
              out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_sample_snapshot_reads_the_saved_generator(tmp_path):
    cfg = TrainConfig(data="bimodal", method="flow", width=16, depth=2, batch_size=32,
                      iterations=20, eval_every=10, eval_samples=200, w2_samples=100)
    train(cfg, out=tmp_path / "r", progress=False)
    s0 = sample_run(tmp_path / "r", 100, snapshot=0)
    s20 = sample_run(tmp_path / "r", 100, snapshot=20)
    latest = sample_run(tmp_path / "r", 100)
    torch.testing.assert_close(s20, latest, rtol=0, atol=0)
    assert not np.allclose(s0.numpy(), s20.numpy())
    with pytest.raises(GanflowError, match="saved iterations: \\[0, 10, 20\\]"):
        sample_run(tmp_path / "r", 10, snapshot=5)


class _Constant(torch.nn.Module):
    """G(z) = b whatever z: the regression target is then a statistic of all the x_i."""

    def __init__(self) -> None:
        super().__init__()
        self.b = torch.nn.Parameter(torch.zeros(1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.b.expand(z.shape[0], 1)


@pytest.mark.parametrize("loss, expected", [("mse", -0.2), ("l1", -1.0)])
def test_fit_loss_mse_lands_between_two_modes_l1_on_one(loss, expected):
    # 60 % of the pairs at x = -1, 40 % at +1, all with the same latent: the MSE fit goes
    # to their mean -0.2 (between the modes), the L1 fit to their median -1 (a mode)
    from ganflow.flow_map import fit_pairs

    x = torch.cat([torch.full((600, 1), -1.0), torch.full((400, 1), 1.0)])
    z = torch.zeros(1000, 1)
    G = _Constant()
    opt = torch.optim.Adam(G.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    fit_pairs(G, opt, z, x, lambda m: torch.randint(0, 1000, (m,), generator=gen),
              batch_size=1000, steps=1500, loss=loss)
    # batches of 1000 drawn with replacement: their mean has a standard error of 0.03;
    # Adam's steps of ~lr = 0.01 jitter around the minimiser; hence 0.1 (the two answers
    # are 0.8 apart)
    assert abs(float(G.b) - expected) < 0.1, float(G.b)


def test_fit_nearest_pulls_fresh_samples_onto_the_particles_closed_form():
    # pairs at the latents -1 and +1 only, their particles at -2 and +2; an affine G(z) =
    # a z + b. The pairs alone are fitted exactly by a = 2, b = 0, and fresh latents
    # z ~ N(0, 1) then land anywhere between the modes. The nearest-particle term at
    # fresh z (target 2 sign(G(z)) = 2 sign(z)) adds w E[(a z - 2 sign z)^2]; the MSE
    # objective (a - 2)^2 + w (a^2 - 4 a E|z| + 4) is least at
    # a* = (2 + 2 w E|z|) / (1 + w), E|z| = sqrt(2 / pi): 1.798 for w = 1
    from ganflow.flow_map import fit_pairs

    z = torch.cat([torch.full((500, 1), -1.0), torch.full((500, 1), 1.0)])
    x = 2 * z
    for w, expected in ((0.0, 2.0), (1.0, (2 + 2 * math.sqrt(2 / math.pi)) / 2)):
        torch.manual_seed(0)
        G = torch.nn.Linear(1, 1)
        gen = torch.Generator().manual_seed(0)
        fit_pairs(G, torch.optim.SGD(G.parameters(), lr=0.02), z, x,
                  lambda m, g=gen: torch.randint(0, 1000, (m,), generator=g),
                  batch_size=1000, steps=2000, loss="mse", nearest=w,
                  sample_latent=lambda m, g=gen: torch.randn(m, 1, generator=g))
        # fresh batches of 1000: the gradient's noise moves a by ~lr x 0.05 per step,
        # averaged over ~1 / (2 lr) = 25 steps, so ~0.005; 0.02 is 4 x that, and the two
        # answers are 0.2 apart
        assert abs(float(G.weight.detach()) - expected) < 0.02, (w, float(G.weight.detach()))
        assert abs(float(G.bias.detach())) < 0.02
    with pytest.raises(ValueError, match="sample_latent"):
        fit_pairs(G, torch.optim.SGD(G.parameters(), lr=0.02), z, x,
                  lambda m: torch.randint(0, 1000, (m,)), batch_size=10, steps=1, nearest=1.0)
