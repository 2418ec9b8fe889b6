"""The trainer: reproducibility, resume == no stop, NaN handling, no overwrite, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ganflow.training.methods.generator as generator_mod
from ganflow import GanflowError
from ganflow.cli import app
from ganflow.training import (
    TrainConfig,
    TrainingDivergedError,
    read_metrics,
    resume,
    sample_run,
    train,
)

# tiny networks and evaluations: each run takes about a second
TINY = dict(method="flow", width=16, depth=2, batch_size=32, iterations=30, eval_every=10,
            eval_samples=200, w2_samples=100, lr_g=1e-3, lr_d=1e-3)
KEYS = ("iteration", "flow_time", "modes", "hq", "mode_kl", "energy", "w2", "d_loss", "g_loss")


def _strip(rows):
    return [{k: r.get(k) for k in KEYS} for r in rows]


def _weights(run_dir):
    return sample_run(run_dir, 50, seed=1)


@pytest.mark.parametrize("extra", [
    {},  # Algorithm 1, Adam
    {"method": "gan-ns", "lr_decay": 0.1},  # a baseline with a learning-rate schedule
    {"faithful": True, "eps": 0.5, "pairing": "assignment", "fit_steps": 2},
    {"faithful": True, "eps": 0.5, "fit_solver": "gauss-newton", "step_quantile": 1.0},
    {"pairing": "energy", "d_penalty": 1.0},  # the set-wise loss and D's R1 penalty
])
def test_resume_gives_the_same_metrics(tmp_path, extra):
    cfg = TrainConfig(**{**TINY, **extra})
    full = train(cfg, out=tmp_path / "full", progress=False)
    assert full.status == "finished" and full.iteration == 30
    part = train(cfg, out=tmp_path / "part", progress=False, stop_at=10)
    assert part.status == "stopped" and part.iteration == 10
    resumed = resume(tmp_path / "part", progress=False)
    assert resumed.iteration == 30
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [r["iteration"] for r in a] == [0, 10, 20, 30]
    assert _strip(a) == _strip(b)  # exactly equal, not merely close
    torch.testing.assert_close(_weights(tmp_path / "full"), _weights(tmp_path / "part"),
                               rtol=0, atol=0)
    for name in ("config.json", "summary.md", "samples/samples.png", "samples/metrics.png",
                 "checkpoints/latest.json"):
        assert (tmp_path / "full" / name).exists(), name


def test_resume_extends_a_finished_run(tmp_path):
    # A learning-rate decay runs over the horizon fixed when the run was created, so
    # extending a finished run equals a longer run only without decay.
    const = {**TINY, "lr_decay": 1.0}
    cfg = TrainConfig(**{**const, "iterations": 20})
    train(TrainConfig(**const), out=tmp_path / "a", progress=False)
    train(cfg, out=tmp_path / "b", progress=False)
    resume(tmp_path / "b", iterations=30, progress=False)
    assert _strip(read_metrics(tmp_path / "a")) == _strip(read_metrics(tmp_path / "b"))
    row = read_metrics(tmp_path / "a")[-1]
    assert set(KEYS) | {"seconds"} <= set(row)
    assert row["flow_time"] == pytest.approx(30 * cfg.eps)
    with pytest.raises(GanflowError, match="go back"):
        resume(tmp_path / "b", iterations=10, progress=False)


def test_seeds_matter_and_repeat(tmp_path):
    r1 = train(TrainConfig(**{**TINY, "iterations": 10}), out=tmp_path / "1", progress=False)
    r2 = train(TrainConfig(**{**TINY, "iterations": 10}), out=tmp_path / "2", progress=False)
    r3 = train(TrainConfig(**{**TINY, "iterations": 10, "seed": 5}), out=tmp_path / "3",
               progress=False)
    assert _strip([r1.metrics]) == _strip([r2.metrics])
    assert r1.metrics["energy"] != r3.metrics["energy"]


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_step = generator_mod.algorithm_step
    calls = {"n": 0}

    def poisoned(G, *args, **kwargs):
        info = real_step(G, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 15:  # the 15th iteration blows up
            with torch.no_grad():
                next(G.parameters()).fill_(float("nan"))
            info.g_loss = float("nan")
        return info

    monkeypatch.setattr(generator_mod, "algorithm_step", poisoned)
    with pytest.raises(TrainingDivergedError, match="g loss is nan at iteration 15"):
        train(TrainConfig(**TINY), out=tmp_path / "run", progress=False)
    state = json.loads((tmp_path / "run/checkpoints/latest.json").read_text())
    assert state["iteration"] == 10
    x = sample_run(tmp_path / "run", 20)  # the kept checkpoint is good
    assert torch.isfinite(x).all()
    assert "diverged" in (tmp_path / "run/summary.md").read_text()


def test_nothing_overwritten_and_bad_options(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GanflowError, match="not empty"):
        train(TrainConfig(**TINY), out=out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(GanflowError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(GanflowError, match="--d-penalty must be a finite number >= 0"):
        TrainConfig(d_penalty=-0.5)
    with pytest.raises(GanflowError, match="--pairing energy has no point-wise residual"):
        TrainConfig(method="flow", pairing="energy", faithful=True)
    with pytest.raises(GanflowError, match="unknown data"):
        train(TrainConfig(**{**TINY, "data": "spiral"}), out=tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    with pytest.raises(GanflowError, match="not a ganflow run"):
        resume(tmp_path / "nowhere", progress=False)


def test_cli_train_sample_plot(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--iterations", "20", "--eval-every", "10",
            "--width", "16", "--depth", "2", "--batch-size", "32", "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "finished at iteration 20" in res.output
    res = runner.invoke(app, ["sample", str(out), "--n", "30", "--out", str(tmp_path / "s.npy")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "s.npy").shape == (30, 2)
    res = runner.invoke(app, ["plot", str(out)])
    assert res.exit_code == 0 and "samples.png" in res.output
    res = runner.invoke(app, ["train", "--resume", str(out), "--iterations", "30",
                              "--no-progress"])
    assert res.exit_code == 0 and "finished at iteration 30" in res.output


@pytest.mark.parametrize(("args", "match"), [
    (["--data", "missing.npy"], "does not exist"),
    (["--method", "wgan"], "unknown --method"),
    (["--pairing", "greedy"], "unknown --pairing"),
    (["--divergence", "hellinger"], "unknown divergence"),
    (["--eps", "-1"], "eps"),
    (["--faithful", "--fit-solver", "lbfgs"], "unknown --fit-solver"),
    (["--faithful", "--step-quantile", "1.5"], "--step-quantile"),
])
def test_cli_errors(tmp_path, args, match):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--out", str(out), "--no-progress", *args])
    assert res.exit_code != 0
    assert "error:" in res.output and match in res.output
    assert not out.exists()


def test_ctrl_c_saves_and_resumes_exactly(tmp_path, monkeypatch):
    import os
    import signal

    cfg = TrainConfig(**TINY)
    train(cfg, out=tmp_path / "full", progress=False)
    real_step = generator_mod.algorithm_step
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        info = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 12:  # Ctrl-C in the middle of iteration 12
            os.kill(os.getpid(), signal.SIGINT)
        return info

    monkeypatch.setattr(generator_mod, "algorithm_step", interrupting)
    res = train(cfg, out=tmp_path / "cut", progress=False)
    assert res.status == "interrupted" and res.iteration == 12
    state = json.loads((tmp_path / "cut/checkpoints/latest.json").read_text())
    assert state["iteration"] == 12  # the finished iteration was saved, not lost
    monkeypatch.setattr(generator_mod, "algorithm_step", real_step)
    resume(tmp_path / "cut", progress=False)
    assert _strip(read_metrics(tmp_path / "full")) == _strip(read_metrics(tmp_path / "cut"))
