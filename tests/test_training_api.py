r"""The training layer's API: a run reproduced by ``ganflow train --config``, TensorBoard
logging, :func:`ganflow.load_run`, and a method added without touching the loop."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import ganflow.training.methods.base as methods_base
from ganflow import GanflowError, Run, TrainConfig, load_run, read_metrics, train
from ganflow.algorithm import StepInfo, calibrate_discriminator
from ganflow.cli import app
from ganflow.training import Method, register_method

runner = CliRunner()
TINY = dict(method="flow", width=16, depth=2, batch_size=32, iterations=20,
            eval_every=10, eval_samples=200, w2_samples=100)
FLAGS = ["--width", "16", "--depth", "2", "--batch-size", "32", "--iterations", "20",
         "--eval-every", "10", "--no-progress"]


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(run_dir)]


def test_train_config_reproduces_a_run_from_its_config_json(tmp_path):
    first = runner.invoke(app, ["train", "--method", "gan-ns", "--seed", "3", "--out",
                                str(tmp_path / "a"), *FLAGS])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["train", "--config", str(tmp_path / "a" / "config.json"),
                                "--out", str(tmp_path / "b"), "--no-progress"])
    assert again.exit_code == 0, again.output
    a = json.loads((tmp_path / "a" / "config.json").read_text())
    b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert a == b
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")  # bit-identical on the CPU


def test_flags_beside_config_override_it_and_the_decays_follow_a_new_horizon(tmp_path):
    cfg = tmp_path / "options.toml"
    cfg.write_text('method = "gan"\nseed = 4\nwidth = 16\ndepth = 2\nbatch_size = 32\n'
                   'iterations = 20\neval_every = 10\nlr_decay_iters = 20\n')
    r = runner.invoke(app, ["train", "--config", str(cfg), "--seed", "5", "--iterations",
                            "10", "--out", str(tmp_path / "run"), "--no-progress"])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (got["method"], got["seed"], got["width"], got["iterations"]) == ("gan", 5, 16, 10)
    assert got["lr_decay_iters"] == 10  # resolved from the new horizon, not the file's 20


@pytest.mark.parametrize("method", ["particles", "flow-chain"])
def test_an_old_run_with_ignored_fit_options_still_opens(tmp_path, method):
    # older ganflow took (and ignored) --fit-steps and --pairing for the methods that fit
    # no generator; they are refused now, but such a run folder must still open, sample,
    # resume and train again from its config.json
    run = tmp_path / "old"
    r = runner.invoke(app, ["train", "--method", method, "--particles", "100", "--out",
                            str(run), *FLAGS, "--iterations", "10"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(fit_steps=5, pairing="energy")
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GanflowError, match="fits no generator"):
        TrainConfig.from_dict(cfg)  # refused when given as new options...
    assert load_run(run).sample(20).shape == (20, 2)  # ...read as it trained in a run
    r = runner.invoke(app, ["train", "--resume", str(run), "--iterations", "20",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--config", str(run / "config.json"), "--out",
                            str(tmp_path / "again"), "--no-progress"])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "again" / "config.json").read_text())
    assert (got["fit_steps"], got["pairing"]) == (1, "index")


def test_config_of_an_old_flow_map_run_is_read_as_it_trained(tmp_path):
    # a flow-map run written before --repair-every / --fit-loss existed: its config.json
    # lacks them, and the run never re-paired and fitted by the MSE. --config must give
    # that run again, not today's defaults (re-pairing every 100, the L1 fit); a plain
    # options file without them still gets the defaults
    old = tmp_path / "old"
    r = runner.invoke(app, ["train", "--method", "flow-map", "--particles", "100",
                            "--out", str(old), *FLAGS])
    assert r.exit_code == 0, r.output
    cfg = json.loads((old / "config.json").read_text())
    for key in ("repair_every", "fit_loss", "fit_optimizer"):
        del cfg[key]
    (old / "config.json").write_text(json.dumps(cfg))
    r = runner.invoke(app, ["train", "--config", str(old / "config.json"),
                            "--out", str(tmp_path / "again"), "--no-progress"])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "again" / "config.json").read_text())
    assert (got["repair_every"], got["fit_loss"]) == (0, "mse")
    plain = tmp_path / "options.json"
    plain.write_text(json.dumps(cfg))  # the same options, outside a run folder
    r = runner.invoke(app, ["train", "--config", str(plain), "--out", str(tmp_path / "new"),
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "new" / "config.json").read_text())
    assert (got["repair_every"], got["fit_loss"]) == (100, "l1")


@pytest.mark.parametrize("text, message", [
    ('{"widht": 16}', "unknown config keys \\['widht'\\]"),
    ("[1, 2]", "must hold an object of options, got list"),
    ("{not json", "cannot be read as JSON"),
])
def test_bad_config_files_are_refused_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "c.json"
    path.write_text(text)
    r = runner.invoke(app, ["train", "--config", str(path), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert pytest.importorskip("re").search(message, r.output), r.output
    assert not (tmp_path / "run").exists()


def test_tensorboard_log_holds_the_metrics_rows(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    res = train(TrainConfig(**TINY, log="tensorboard"), out=tmp_path / "run", progress=False)
    acc = event_accumulator.EventAccumulator(str(res.run_dir / "tensorboard"))
    acc.Reload()
    rows = read_metrics(res.run_dir)
    for key in ("hq", "energy", "d_loss"):
        logged = [(e.step, e.value) for e in acc.Scalars(key)]
        expected = [(r["iteration"], r[key]) for r in rows if r.get(key) is not None]
        assert [s for s, _ in logged] == [s for s, _ in expected]
        # TensorBoard stores float32: equal to float32 rounding
        torch.testing.assert_close(torch.tensor([v for _, v in logged]),
                                   torch.tensor([v for _, v in expected], dtype=torch.float32))


def test_load_run_reads_a_run_folder(tmp_path):
    res = train(TrainConfig(**TINY), out=tmp_path / "run", progress=False)
    run = load_run(res.run_dir)
    assert isinstance(run, Run)
    assert (run.iteration, run.config.iterations, run.data.name) == (20, 20, "ring8")
    assert [it for it, _ in run.snapshots()] == [0, 10, 20]
    assert run.metrics() == read_metrics(res.run_dir)
    assert run.has_generator and run.particles is None
    x = run.sample(300, seed=2)
    assert x.shape == (300, 2) and x.dtype == torch.float32
    torch.testing.assert_close(run.sample(300, seed=2), x)  # seeded: the same draw
    first = run.sample(300, seed=2, snapshot=0)
    assert not torch.allclose(first, x)  # the untrained generator's samples differ
    with pytest.raises(GanflowError, match="saved iterations: \\[0, 10, 20\\]"):
        run.sample(10, snapshot=5)


def test_a_method_is_one_class_the_loop_does_not_know(tmp_path, monkeypatch):
    # a new method registered from outside the package: D is calibrated, G never moves
    monkeypatch.setattr(methods_base, "_REGISTRY", dict(methods_base._REGISTRY))

    @register_method("d-only")
    class DOnly(Method):
        def step(self) -> StepInfo:
            s = self.s
            loss, taken = calibrate_discriminator(
                s.D, s.opt_d, lambda: s.sample_data(32), lambda: self.fake_batch(32))
            return StepInfo(loss, 0.0, taken, 0, s.step_cfg.eps)

    res = train(TrainConfig(**{**TINY, "method": "d-only"}), out=tmp_path / "run", progress=False)
    rows = read_metrics(res.run_dir)
    assert res.status == "finished" and [r["iteration"] for r in rows] == [0, 10, 20]
    assert rows[0]["energy"] == rows[-1]["energy"]  # G untouched: the same samples
    assert rows[-1]["d_loss"] < 1.386  # D learned something: below ln 4 (chance)
    with pytest.raises(GanflowError, match="unknown --method 'nosuch'.*d-only"):
        TrainConfig(method="nosuch")
