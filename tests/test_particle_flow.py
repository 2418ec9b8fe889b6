r"""The particle method of issue 7: particles moved by the discriminator's drift.

An oracle discriminator reproduces the closed-form KL flow; a learned one tracks the
PDE solution u(t) better as N grows; the trainer's run folder, resume, sampling and
distillation work for particle runs as for the generator methods."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from ganflow import GanflowError, StepConfig
from ganflow.algorithm import discriminator_drift
from ganflow.cli import app
from ganflow.particle_flow import particle_step
from ganflow.tracking import track_run
from ganflow.training import TrainConfig, load_run, read_metrics, resume, sample_run, train


class _OracleKL(nn.Module):
    r"""Exact logit f = ln rho_d - ln rho for rho_d = N(0, 1) and rho = N(mu, sigma^2) with
    mu, sigma the particles' current mean and std. Started from a standardised sample of
    N(a, s^2), the KL drift grad f is affine, so the particles stay an affine image of
    their start and rho is exactly their Gaussian law. ``dummy`` gives the optimizer a
    parameter whose gradient is identically 0: calibration is a no-op."""

    def __init__(self, particles: torch.Tensor) -> None:
        super().__init__()
        self.particles = particles
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        p = self.particles[:, 0]
        mu, sigma = p.mean(), p.std(unbiased=False)
        y = y[:, 0]
        return -0.5 * y**2 + 0.5 * ((y - mu) / sigma) ** 2 + torch.log(sigma) + 0 * self.dummy


def _oracle_particles(a: float, s: float, eps: float, n_iter: int, chunk: int = 8192):
    z = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = a + s * (z - z.mean()) / z.std(unbiased=False)
    D = _OracleKL(x)
    opt = torch.optim.SGD(D.parameters(), lr=0.1)
    cfg = StepConfig(divergence="kl", eps=eps, batch_size=64)
    gen = torch.Generator().manual_seed(1)
    for _ in range(n_iter):
        info = particle_step(
            D, opt, x, lambda m: torch.randn(m, 1, generator=gen, dtype=torch.float64),
            lambda m: torch.randint(0, len(x), (m,), generator=gen), cfg, chunk=chunk)
        assert info.flow_time == eps and info.fit_steps == 0 and math.isnan(info.g_loss)
    return float(x.mean()), float(x.std(unbiased=False)), x


@pytest.mark.parametrize(("a", "s"), [(2.0, 0.5), (-1.0, 2.0)])
def test_oracle_particles_follow_the_closed_form_kl_flow(a, s):
    # KL flow from N(a, s^2) to N(0, 1): N(a e^-t, 1 + (s^2 - 1) e^-2t) at t = eps x k
    t_end, errs = 1.0, []
    for eps in (0.02, 0.01):
        n_iter = round(t_end / eps)
        mu, sigma, _ = _oracle_particles(a, s, eps, n_iter)
        mu_ex = a * math.exp(-t_end)
        sd_ex = math.sqrt(1 + (s**2 - 1) * math.exp(-2 * t_end))
        # explicit Euler in flow time: O(eps) error, here < 2 eps relative
        torch.testing.assert_close(torch.tensor([mu, sigma]), torch.tensor([mu_ex, sd_ex]),
                                   rtol=2 * eps, atol=0.0)
        errs.append(abs(mu - mu_ex) + abs(sigma - sd_ex))
    assert 1.7 < errs[0] / errs[1] < 2.3  # first order: halving eps halves the error


def test_chunking_changes_nothing():
    # the drift of each particle depends on that particle alone: any chunking is exact
    _, _, a = _oracle_particles(2.0, 0.5, 0.05, 5, chunk=8192)
    _, _, b = _oracle_particles(2.0, 0.5, 0.05, 5, chunk=7)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    D = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))
    x = torch.randn(100, 2)
    torch.testing.assert_close(discriminator_drift(D, x, chunk=3), discriminator_drift(D, x))


# ------------------------------------------------------------------ trainer
TINY = dict(method="particles", particles=400, width=16, depth=2, batch_size=32,
            iterations=30, eval_every=10, eval_samples=200, w2_samples=100)


def test_particle_run_resumes_exactly_and_samples(tmp_path):
    cfg = TrainConfig(**TINY)
    full = train(cfg, out=tmp_path / "full", progress=False)
    assert full.status == "finished" and full.flow_time == pytest.approx(30 * cfg.eps)
    train(cfg, out=tmp_path / "part", progress=False, stop_at=10)
    resume(tmp_path / "part", progress=False)
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [r["iteration"] for r in a] == [0, 10, 20, 30]
    for r, s in zip(a, b, strict=True):
        r.pop("seconds"), s.pop("seconds")
        assert r == s  # exactly: the particles are part of the checkpoint
    assert a[-1]["n_eval"] == 200 and "g_loss" not in a[-1]
    x = sample_run(tmp_path / "full", 400, seed=3)
    assert x.shape == (400, 2) and len(torch.unique(x, dim=0)) == 400  # distinct particles
    torch.testing.assert_close(x, sample_run(tmp_path / "part", 400, seed=3), rtol=0, atol=0)
    with pytest.raises(GanflowError, match="400 particles"):
        sample_run(tmp_path / "full", 401)
    snaps = sorted(p.name for p in (tmp_path / "full" / "snapshots").iterdir())
    assert snaps == [f"P-{k:08d}.safetensors" for k in (0, 10, 20, 30)]
    assert "400 particles" in (tmp_path / "full" / "summary.md").read_text()


def test_distil_gives_a_generator(tmp_path):
    cfg = TrainConfig(**{**TINY, "distil": True, "distil_iterations": 300, "lr_g": 1e-2,
                         "data": "normal:1:0.5", "particle_init": "normal:-1:0.5"})
    res = train(cfg, out=tmp_path / "d", progress=False)
    assert res.status == "finished"
    info = json.loads((tmp_path / "d" / "distil.json").read_text())
    assert set(info) >= {"generator", "particles", "fit_mse", "seconds"}
    x = sample_run(tmp_path / "d", 2000)  # more than N: the distilled generator samples
    assert x.shape == (2000, 1)
    parts = load_run(tmp_path / "d", device="cpu").particles
    # The set-wise fit matches the particle SET: mean and std of G's samples equal the
    # particles' within 0.1 (400 particles: the mean's own standard error is ~0.03; a
    # 16-unit G after 300 steps is approximate, and that is all this bound allows for).
    torch.testing.assert_close(torch.stack([x.mean(), x.std()]),
                               torch.stack([parts.mean(), parts.std()]), rtol=0, atol=0.1)
    assert (tmp_path / "d" / "samples" / "distilled.png").exists()


def test_particle_options_are_checked(tmp_path):
    with pytest.raises(GanflowError, match="needs --method particles"):
        TrainConfig(distil=True)
    with pytest.raises(GanflowError, match="particles must be"):
        TrainConfig(method="particles", particles=1)
    with pytest.raises(GanflowError, match="1-dimensional"):
        train(TrainConfig(**{**TINY, "particle_init": "bimodal"}), out=tmp_path / "x",
              progress=False)
    assert not (tmp_path / "x").exists()  # nothing written on bad options


def test_cli_particles(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--method", "particles", "--particles", "300",
                                 "--iterations", "10", "--eval-every", "5", "--width", "16",
                                 "--batch-size", "32", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "finished at iteration 10" in r.output
    r = CliRunner().invoke(app, ["sample", str(out), "--n", "301", "--out",
                                 str(tmp_path / "s.npy")])
    assert r.exit_code != 0 and "300 particles" in r.output


@pytest.mark.slow
def test_learned_d_particles_track_the_pde_better_as_n_grows(tmp_path):
    # KL flow on the 1-D bimodal target from N(0, 0.4^2): D (2 x 64) calibrated by 30 Adam
    # steps (lr 1e-2 decaying to 1e-3) per step of eps 0.025, its fake batch all N
    # particles. Measured, seeds 0-3: mean L1 gap to u(t) over t in {1, 1.5, 2} is
    # 0.068-0.139 at N = 300 (floor 0.14-0.15) and 0.033-0.052 at N = 3000 (floor 0.054):
    # on the flow as far as N samples tell. (A 2 x 32 D without decay failed this in 2 of
    # 4 seeds, gap 0.28-0.33: a noisy logit cannot resolve the last mode-weight error.)
    gaps, floors = {}, {}
    for n in (300, 3000):
        cfg = TrainConfig(data="bimodal", method="particles", particles=n,
                          particle_init="normal:0:0.4", divergence="kl", eps=0.025,
                          iterations=80, eval_every=20, d_steps=30, lr_d=1e-2, lr_decay=0.1,
                          width=64, depth=2, batch_size=n, eval_samples=min(n, 1000),
                          w2_samples=200)
        train(cfg, out=tmp_path / str(n), progress=False)
        tr = track_run(tmp_path / str(n), n=n)
        late = tr.times >= 1.0
        gaps[n], floors[n] = float(np.mean(tr.l1_gap[late])), float(np.mean(tr.l1_floor[late]))
    assert gaps[3000] < 0.75 * gaps[300]
    # within 1.25x its noise floor: on the flow
    assert gaps[3000] < 1.25 * floors[3000]


def test_particles_can_start_from_the_untrained_generator(tmp_path):
    # the same start as the generator methods: particles = G_0(z) for the same seed
    cfg = TrainConfig(**{**TINY, "particle_init": "generator", "iterations": 10})
    train(cfg, out=tmp_path / "p", progress=False)
    from safetensors.torch import load_file
    start = load_file(str(tmp_path / "p" / "snapshots" / "P-00000000.safetensors"))["particles"]
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    flow = train(TrainConfig(**{**TINY, "method": "flow", "iterations": 1, "eval_every": 1}),
                 out=tmp_path / "g", progress=False)
    G0 = load_run(flow.run_dir, device="cpu").G
    G0.load_state_dict(load_file(str(tmp_path / "g" / "snapshots" / "G-00000000.safetensors")))
    with torch.no_grad():
        expected = G0(torch.randn(cfg.particles, 2, generator=gen))  # latent 2 for 2-D data
    torch.testing.assert_close(start, expected, rtol=0, atol=0)


def test_eps_decay_anneals_the_flow_step(tmp_path):
    # eps_k = eps (1 - (1 - 0.5) k / 20) for k = 0..19: flow time 20 - 0.5 * 190 / 20
    cfg = TrainConfig(**{**TINY, "iterations": 20, "eps_decay": 0.5, "lr_decay": 1.0})
    res = train(cfg, out=tmp_path / "e", progress=False)
    assert res.flow_time == pytest.approx(15.25, rel=1e-12)
    with pytest.raises(GanflowError, match="--eps-decay must be in"):
        TrainConfig(eps_decay=0.0)
