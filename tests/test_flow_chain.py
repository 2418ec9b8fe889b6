"""The flow-chain method: the generator is G_0 composed with every recorded Euler step of
ODE (2) (ganflow.drift_chain; docs/theory.md section 8).

Closed form as in test_flow_map.py: KL flow, data N(0, 1), start N(2, 0.5^2), flow map
X_t(x) = m_t + sqrt(v_t) / s0 (x - m0), m_t = 2 e^{-t}, v_t = 1 - 0.75 e^{-2t}; with the
exact affine start G_0(z) = 2 + 0.5 z_1 the chain must give G_t(z) = m_t + sqrt(v_t) z_1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _ou_flow import M0, S0, assert_run_follows_the_flow, learned_d_config
from _ou_flow import ou as _ou
from typer.testing import CliRunner

from ganflow import GanflowError
from ganflow.cli import app
from ganflow.drift_chain import DriftChain
from ganflow.tracking import track_run
from ganflow.training import TrainConfig, load_run, read_metrics, resume, sample_run, train


class _OracleLogit(torch.nn.Module):
    """f = ln(rho_d / u_t), rho_d = N(0, 1), u_t = N(m_t, v_t); t is a buffer, so that it
    is part of the state a DriftChain records."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("t", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, v = _ou(float(self.t))
        x = x[:, 0]
        return -0.5 * x**2 + 0.5 * (x - m) ** 2 / v + 0.5 * math.log(v)


def _affine_start() -> torch.nn.Module:
    G = torch.nn.Linear(2, 1)
    with torch.no_grad():
        G.weight.copy_(torch.tensor([[S0, 0.0]]))
        G.bias.fill_(M0)
    return G


def _oracle_chain(eps: float, t_end: float, *, every: int = 1) -> DriftChain:
    D = _OracleLogit()
    chain = DriftChain(D, divergence="kl", every=every)
    for k in range(round(t_end / eps)):
        D.t.fill_(k * eps)
        chain.record(D, eps)
    return chain


def test_chain_is_the_ou_flow_map_at_first_order_in_eps():
    G = _affine_start()
    z = torch.zeros(41, 2)
    z[:, 0] = torch.linspace(-2.5, 2.5, 41)
    errs = []
    for eps in (0.02, 0.01):
        chain = _oracle_chain(eps, 1.0)
        assert len(chain) == round(1 / eps) and chain.flow_time() == pytest.approx(1.0)
        with torch.no_grad():
            x = chain.apply(G(z))[:, 0].double()
        m, v = _ou(1.0)
        errs.append(float((x - (m + math.sqrt(v) * z[:, 0].double())).abs().max()))
    # Euler's global error is O(eps): halving eps halves it
    assert 0.8 < math.log2(errs[0] / errs[1]) < 1.2, errs
    # at eps = 0.01 the error on |z| <= 2.5 is largest in the tails, where the drift is
    # steepest (measured 0.033, the particles' 0.044 in test_flow_map.py over wider
    # tails); against a displacement of 0.9-2.2 by t = 1
    assert errs[1] < 0.05, errs


def test_chain_samples_have_the_ou_law_at_fresh_latents():
    G = _affine_start()
    chain = _oracle_chain(0.01, 1.0)
    z = torch.randn(20000, 2, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        x0 = G(z)
    for t in (0.5, 1.0):
        x = chain.apply(x0, steps=round(t / 0.01))[:, 0].double()
        m, v = _ou(t)
        # standard errors of mean and variance of 20 000 draws: 0.007 and 0.009; Euler's
        # bias at eps = 0.01 about 0.01 (previous test): 0.04 is 4x their sum
        assert abs(float(x.mean()) - m) < 0.04, (t, float(x.mean()), m)
        assert abs(float(x.var()) - v) < 0.04, (t, float(x.var()), v)
    # moving by [0, 50) then [50, 100) is moving by [0, 100), bit for bit
    half = chain.apply(x0, steps=50)
    torch.testing.assert_close(chain.apply(half, start=50), chain.apply(x0), rtol=0, atol=0)


def test_every_reuses_each_recorded_state_for_its_window():
    D = _OracleLogit()
    thin, full = DriftChain(D, divergence="kl", every=2), DriftChain(D, divergence="kl")
    for k in range(5):
        D.t.fill_(0.1 * k)
        thin.record(D, 0.1)
        D.t.fill_(0.1 * (k - k % 2))  # the state thin keeps for step k
        full.record(D, 0.1)
    assert len(thin) == len(full) == 5
    assert len(thin.states) == 3 and len(full.states) == 5
    x = torch.linspace(-1, 3, 30)[:, None]
    torch.testing.assert_close(thin.apply(x), full.apply(x), rtol=0, atol=0)


def test_limit_clips_each_points_move():
    D = _OracleLogit()
    clipped, free = DriftChain(D, divergence="kl"), DriftChain(D, divergence="kl")
    clipped.record(D, 1.0, limit=0.1)
    free.record(D, 1.0)
    # the KL drift at t = 0 is grad f = -x + (x - 2) / 0.25 = 3x - 8: -2, 0.04, 10
    x = torch.tensor([[2.0], [2.68], [6.0]])
    # float32 rounding of 3 x 2.68 - 8 is ~1e-6: inside assert_close's 1e-5
    torch.testing.assert_close(clipped.apply(x) - x, torch.tensor([[-0.1], [0.04], [0.1]]))
    torch.testing.assert_close(free.apply(x) - x, torch.tensor([[-2.0], [0.04], [10.0]]))


def test_states_kept_in_blocks_read_back_across_block_boundaries(monkeypatch):
    # blocks of 3 states (the oracle's state is one float, t), so that 10 records span 4
    # blocks, a restored chain is one block of its own and appends start a new one
    import ganflow.drift_chain as dc

    monkeypatch.setattr(dc, "_BLOCK_FLOATS", 3)
    chain = _oracle_chain(0.1, 1.0)
    assert len(chain.states) == 10 and len(chain.states._blocks) == 4
    expected = torch.tensor([[k * 0.1] for k in range(10)])  # as _oracle_chain sets t
    torch.testing.assert_close(chain.states_between(2, 9), expected[2:9], rtol=0, atol=0)
    assert chain.states_between(4, 4).shape == (0, 1)
    other = DriftChain(_OracleLogit(), divergence="kl")
    other.restore(chain.states_between(0, 7), chain.steps_tensor()[:7])
    D = _OracleLogit()
    for k in range(7, 10):
        D.t.fill_(0.1 * k)
        other.record(D, 0.1)
    torch.testing.assert_close(other.states_between(0, 10), expected, rtol=0, atol=0)
    x = torch.linspace(-1, 3, 30)[:, None]
    torch.testing.assert_close(other.apply(x), chain.apply(x), rtol=0, atol=0)
    with pytest.raises(IndexError):
        chain.states[10]


def test_chain_state_round_trips_and_refuses_another_architecture():
    chain = _oracle_chain(0.1, 0.5, every=2)
    other = DriftChain(_OracleLogit(), divergence="kl", every=2)
    other.load_state_tensors(chain.state_tensors())
    x = torch.linspace(-1, 3, 30)[:, None]
    torch.testing.assert_close(other.apply(x), chain.apply(x), rtol=0, atol=0)
    with pytest.raises(GanflowError, match="chain_states has shape"):
        DriftChain(torch.nn.Linear(1, 1), divergence="kl").load_state_tensors(
            chain.state_tensors())
    with pytest.raises(GanflowError, match="steps must be an integer in"):
        chain.apply(x, steps=len(chain) + 1)
    with pytest.raises(GanflowError, match="every must be a positive integer"):
        DriftChain(_OracleLogit(), divergence="kl", every=0)


SMALL = dict(data="ring8", method="flow-chain", width=16, depth=2, batch_size=32,
             iterations=30, eval_every=10, eval_samples=200, w2_samples=100, particles=300,
             d_steps=2, d_warmup=5)


def test_particles_are_the_generator_at_their_own_latents(tmp_path):
    train(TrainConfig(**SMALL), out=tmp_path / "r", progress=False)
    run = load_run(tmp_path / "r")
    chain = run.session.method.chain
    assert len(chain) == 30 and len(chain.states) == 30
    # the particles' latents: the method's own seed stream (flow-map's pairs')
    z = torch.randn(300, run.config.latent_dim,
                    generator=torch.Generator().manual_seed(run.config.seed + 3))
    with torch.no_grad():
        x0 = run.G(z)
    # the same drifts at the same points in the same order; only D's batch differs
    # (300 particles in one chunk either way), so equal to float rounding
    torch.testing.assert_close(chain.apply(x0), run.particles)
    assert float((run.particles - x0).abs().max()) > 0.1  # and they did move
    rows = read_metrics(tmp_path / "r")
    assert [r["chain_steps"] for r in rows] == [0, 10, 20, 30]
    assert all("particles_hq" in r and "hq" in r for r in rows)
    # G itself was never trained: it is still the start G_0
    fresh = TrainConfig(**SMALL)
    train(fresh, out=tmp_path / "zero", progress=False, stop_at=0)
    g0 = load_run(tmp_path / "zero").G.state_dict()
    for k, v in run.G.state_dict().items():
        torch.testing.assert_close(v, g0[k], rtol=0, atol=0)


def test_flow_chain_resume_and_snapshots_are_exact(tmp_path, monkeypatch):
    cfg = TrainConfig(**SMALL)
    train(cfg, out=tmp_path / "full", progress=False)
    part = train(cfg, out=tmp_path / "part", progress=False, stop_at=10)
    assert part.iteration == 10
    at10 = sample_run(tmp_path / "part", 64, seed=5)
    # a segment of states beyond the checkpoint, as a run killed between writing it and
    # its checkpoint leaves: ignored on load, replaced by the resumed run
    chain_dir = tmp_path / "part" / "chain"
    stale = chain_dir / "D-00000010-00000015.safetensors"
    stale.write_bytes((chain_dir / "D-00000000-00000010.safetensors").read_bytes())
    # the checkpoint holds the evaluations' draw: the resumed run continues it from step
    # 10 instead of moving its samples through the chain from step 0 again
    starts = []
    apply = DriftChain.apply

    def spy(self, x, **kw):
        starts.append(kw.get("start", 0))
        return apply(self, x, **kw)

    monkeypatch.setattr(DriftChain, "apply", spy)
    resume(tmp_path / "part", progress=False)
    monkeypatch.undo()
    assert starts[0] == 10, starts
    assert not stale.exists()
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    keys = ("iteration", "flow_time", "energy", "w2", "hq", "mode_kl", "particles_hq",
            "d_loss", "drift_rms")
    # bit for bit the numbers of the run that never stopped
    assert [{k: r.get(k) for k in keys} for r in a] == [{k: r.get(k) for k in keys} for r in b]
    torch.testing.assert_close(sample_run(tmp_path / "full", 64), sample_run(tmp_path / "part", 64),
                               rtol=0, atol=0)
    # the snapshot of iteration 10 samples what the run sampled at iteration 10
    torch.testing.assert_close(sample_run(tmp_path / "full", 64, seed=5, snapshot=10), at10,
                               rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "full" / "snapshots").iterdir()) == [
        f"C-{i:08d}.safetensors" for i in (0, 10, 20, 30)]
    # the discriminators are written once each, in segments, not into every checkpoint
    assert sorted(p.name for p in (tmp_path / "full" / "chain").iterdir()) == [
        f"D-{a:08d}-{b:08d}.safetensors" for a, b in ((0, 10), (10, 20), (20, 30))]
    ckpts = sorted((tmp_path / "full" / "checkpoints").glob("state-*.safetensors"))
    assert len(ckpts) == 2 and abs(ckpts[0].stat().st_size - ckpts[1].stat().st_size) < 1000
    out = tmp_path / "s.npy"
    cli = CliRunner().invoke(app, ["sample", str(tmp_path / "full"), "--snapshot", "20",
                                   "--n", "40", "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    # moving samples through a chain shows a bar over its steps (20 of them here), unless
    # --no-progress; the samples are the same either way
    assert "40 samples through the chain" in cli.stderr and "/20 " in cli.stderr
    quiet = CliRunner().invoke(app, ["sample", str(tmp_path / "full"), "--snapshot", "20",
                                     "--n", "40", "--out", str(out), "--force",
                                     "--no-progress"])
    assert quiet.exit_code == 0, quiet.output
    assert "through the chain" not in quiet.stderr
    torch.testing.assert_close(torch.from_numpy(np.load(out)),
                               sample_run(tmp_path / "full", 40, snapshot=20), rtol=0, atol=0)
    with pytest.raises(GanflowError, match="saved iterations: \\[0, 10, 20, 30\\]"):
        sample_run(tmp_path / "full", 8, snapshot=15)
    # a folder that lost a segment says so
    (tmp_path / "full" / "chain" / "D-00000010-00000020.safetensors").unlink()
    with pytest.raises(GanflowError, match="lacks the discriminator states 10-30"):
        load_run(tmp_path / "full")


def test_flow_chain_with_a_learned_discriminator_follows_the_ou_flow(tmp_path):
    # Through train(), with a learned D: flow-map's settings and tolerances (_ou_flow.py)
    train(learned_d_config("flow-chain"), out=tmp_path / "r", progress=False)
    assert_run_follows_the_flow(tmp_path / "r")
    # and `ganflow track` reads its snapshots: on the flow at every one of them
    res = track_run(tmp_path / "r", n=2000, cells=300)
    assert list(res.iterations) == [0, 10, 20]
    assert res.on_flow.all(), (res.l1_gap, res.l1_floor)


def test_image_runs_keep_both_evaluation_draws_moving(tmp_path, monkeypatch):
    # an image run's evaluation draws its metrics samples and a grid of 64: each must
    # continue from the previous evaluation's step, at the cost of the new steps only,
    # also across a resume (one cached draw would be pushed out by the other and re-moved
    # from step 0 at every evaluation: a cost quadratic in the run's length)
    calls = []
    apply = DriftChain.apply

    def spy(self, x, **kw):
        calls.append((x.shape[0], kw.get("start", 0)))
        return apply(self, x, **kw)

    monkeypatch.setattr(DriftChain, "apply", spy)
    cfg = TrainConfig(data="digits", width=4, batch_size=16, particles=100, iterations=30,
                      eval_every=10, eval_samples=80)
    train(cfg, out=tmp_path / "run", progress=False, figures=False, stop_at=20)
    resume(tmp_path / "run", progress=False, figures=False)
    starts = {n: [start for m, start in calls if m == n] for n in (80, 64)}
    assert starts == {80: [0, 0, 10, 20], 64: [0, 0, 10, 20]}, calls


def test_flow_chain_refusals():
    with pytest.raises(GanflowError, match="--chain-every thins flow-chain"):
        TrainConfig(method="flow", chain_every=2)
    with pytest.raises(GanflowError, match="--chain-every must be"):
        TrainConfig(method="flow-chain", chain_every=0)
    with pytest.raises(GanflowError, match="--repair-every re-pairs"):
        TrainConfig(method="flow-chain", repair_every=5)
    with pytest.raises(GanflowError, match="--distil fits a generator"):
        TrainConfig(method="flow-chain", distil=True)
    with pytest.raises(GanflowError, match="--fit-nearest is a term"):
        TrainConfig(method="flow-chain", fit_nearest=1.0)
    with pytest.raises(GanflowError, match="refuses --divergence chi2"):
        TrainConfig(method="flow-chain", divergence="chi2")

