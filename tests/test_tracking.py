"""`ganflow track`: generator snapshots against the PDE solution from the same start."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ganflow as gf
from ganflow.cli import app
from ganflow.grid import Grid
from ganflow.tracking import _sample_grid_density, track_run

TINY = dict(method="flow", width=16, depth=2, batch_size=64, iterations=40, eval_every=10,
            eval_samples=200, w2_samples=100, eps=0.05)


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "bimodal"
    gf.train(gf.TrainConfig(data="bimodal", **TINY), out=out, progress=False)
    return out


def test_track_compares_every_snapshot_with_the_pde(flow_run, tmp_path):
    res = track_run(flow_run, n=1000, cells=300)
    np.testing.assert_array_equal(res.iterations, [0, 10, 20, 30, 40])
    np.testing.assert_allclose(res.times, 0.05 * res.iterations)  # t = eps x iterations
    assert res.l1_gap[0] < 1e-12  # u(0) is the generator's own KDE
    assert (res.l1_gap[1:] > 0).all() and (res.l1_floor > 0).all()
    # the PDE's own JSD to rho_d never increases (same checks as the solver's tests)
    assert (np.diff(res.pde_jsd) <= 1e-12).all()
    out = tmp_path / "t.json"
    cli = CliRunner().invoke(app, ["track", str(flow_run), "--n", "500", "--cells", "200",
                                   "--json", str(out), "--plot", str(tmp_path / "t.png")])
    assert cli.exit_code == 0, cli.output
    data = json.loads(out.read_text())
    assert len(data["l1_gap"]) == len(data["times"]) == 5
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_grid_density_sampler_reproduces_the_density():
    grid = Grid(1, 5.0, 500)
    u = grid.density(gf.load_target("bimodal")).reshape(grid.shape)
    x = _sample_grid_density(u, grid, 200_000, torch.Generator().manual_seed(0))
    # bimodal: mean 0, variance 0.25 + 1.5^2 = 2.5; 5 standard errors
    assert abs(float(x.mean())) < 5 * (2.5 / 200_000) ** 0.5
    assert abs(float(x.var()) - 2.5) < 0.03


def test_track_starts_the_pde_from_the_init_law(tmp_path):
    # With --init the PDE starts from the exact start density, not from the generator's
    # KDE: the gap at t = 0 measures the fit of G_0 to it (not 0 by construction), and a
    # GAN baseline is tracked too (flow time eps x iterations, Proposition 8).
    run = tmp_path / "gan"
    gf.train(gf.TrainConfig(**{**TINY, "method": "gan-ns"}, data="bimodal", init="normal:0:1"),
             out=run, progress=False)
    res = track_run(run, n=2000, cells=300)
    assert res.start == "init law"
    assert 0 < res.l1_gap[0] <= 2 * res.l1_floor[0]  # G_0 is the init law within the noise
    assert res.on_flow[0] and res.on_flow.dtype == bool
    cli = CliRunner().invoke(app, ["track", str(run), "--n", "500", "--cells", "200",
                                   "--draws", "2", "--plot", str(tmp_path / "t.png")])
    assert cli.exit_code == 0, cli.output
    assert "on flow" in cli.output and "u(0) = init law" in cli.output
    assert "(mean of 2 draws)" in cli.output


def test_track_refuses_what_it_cannot_track(tmp_path):
    moons = tmp_path / "moons"
    gf.train(gf.TrainConfig(data="moons", **TINY), out=moons, progress=False)
    with pytest.raises(gf.GanflowError, match="sample-only"):
        track_run(moons)
    with pytest.raises(gf.GanflowError, match="no config.json"):
        track_run(tmp_path)


def test_track_averages_independent_draws(flow_run):
    # draws=R: the first draw is the single-draw estimate, bit for bit; the reported gap
    # and floor are the means over R draws that differ from each other (fresh latents and
    # fresh exact samples of u(t)); the verdict uses the means
    one = track_run(flow_run, n=500, cells=200)
    three = track_run(flow_run, n=500, cells=200, draws=3)
    assert three.l1_gap_draws.shape == three.l1_floor_draws.shape == (3, len(three.times))
    np.testing.assert_array_equal(three.l1_gap_draws[0], one.l1_gap)
    np.testing.assert_array_equal(three.l1_floor_draws[0], one.l1_floor)
    np.testing.assert_allclose(three.l1_gap, three.l1_gap_draws.mean(0), rtol=1e-12)
    np.testing.assert_allclose(three.l1_floor, three.l1_floor_draws.mean(0), rtol=1e-12)
    assert (np.ptp(three.l1_floor_draws, axis=0) > 0).all()
    assert (np.ptp(three.l1_gap_draws[:, 1:], axis=0) > 0).all()  # t = 0: the KDE itself
    np.testing.assert_array_equal(three.on_flow, three.l1_gap <= 2 * three.l1_floor)
    assert three.to_dict()["draws"] == 3
    for bad in (0, -1, 2.5, True):
        with pytest.raises(gf.GanflowError, match=r"draws=.*positive integer"):
            track_run(flow_run, draws=bad)
