"""Faults that could lose data or corrupt a run (issue 14), each ending with the run
resumable and nothing lost: the resumed run's metrics rows (every key but ``seconds``)
and weights equal those of a run that never stopped.

Real SIGKILLs at each phase of an evaluation's writes (snapshot, metrics row, weights,
state-N.json, latest.json, pruning; a forked child kills itself there), a real SIGKILL
and a real SIGTERM of a training subprocess, a real EFBIG (RLIMIT_FSIZE with SIGXFSZ
ignored), ENOSPC by monkeypatch, two writers, a torn metrics line, damaged, mismatched
and hostile checkpoints, symlinked subfolders, and the CLI's refusals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ganflow._io as io_mod
import ganflow.training._runfolder as rf
import ganflow.training.checkpoint as checkpoint_mod
import ganflow.training.logging as logging_mod
import ganflow.training.methods.generator as generator_mod
import ganflow.training.run as run_mod
from ganflow import GanflowError
from ganflow.cli import app
from ganflow.training import TrainConfig, read_metrics, resume, sample_run, train

TINY = dict(method="flow", width=16, depth=2, batch_size=32, iterations=40, eval_every=10,
            eval_samples=200, w2_samples=100)
ROOT = Path(__file__).resolve().parents[1]


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(run_dir)]


def _assert_same_run(ref: Path, run: Path) -> None:
    a, b = _rows(ref), _rows(run)
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b]
    assert a == b  # every key of every row, exactly
    torch.testing.assert_close(sample_run(ref, 50, seed=1), sample_run(run, 50, seed=1),
                               rtol=0, atol=0)
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name == ".lock"]
    assert leftovers == []
    ck = sorted(p.name for p in (run / "checkpoints").iterdir())
    n = a[-1]["iteration"]
    assert ck == ["latest.json", *(f"state-{i:08d}.{e}" for i in (n - 10, n)
                                   for e in ("json", "safetensors"))]


@pytest.fixture(scope="module", autouse=True)
def _no_figures():
    # a finished run draws its figures; they are not under test here and cost a second
    # each (test_enospc_in_a_metrics_append draws them from a torn file on purpose)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_mod, "_end_of_run_figures", lambda s: None)
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every fault is compared with."""
    out = tmp_path_factory.mktemp("ref") / "full"
    res = train(TrainConfig(**TINY), out=out, progress=False)
    assert res.status == "finished" and res.iteration == 40
    return out


# ------------------------------------------------------------------ stops between evaluations
def test_stop_between_evaluations_resumes_every_key(tmp_path, reference):
    part = train(TrainConfig(**TINY), out=tmp_path / "part", progress=False, stop_at=15)
    assert part.status == "stopped" and part.iteration == 15
    # a checkpoint at 15, but no metrics row: the next row's window covers 11..20
    assert [r["iteration"] for r in read_metrics(tmp_path / "part")] == [0, 10]
    state = json.loads((tmp_path / "part/checkpoints/latest.json").read_text())
    assert state["iteration"] == 15 and len(state["recent"]) == 5
    resume(tmp_path / "part", progress=False, stop_at=27)  # stopped twice
    resume(tmp_path / "part", progress=False)
    _assert_same_run(reference, tmp_path / "part")


# ------------------------------------------------------------------ SIGKILL at each phase
def _arm(point: tuple) -> None:
    """In a forked child: SIGKILL this process at ``point`` of the writes."""
    kind, name, nth = point
    seen = {"n": 0}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if kind in ("before", "after"):
        real = os.replace

        def replace(src, dst, *a, **k):
            hit = Path(dst).name == name
            if hit:
                seen["n"] += 1
            if hit and seen["n"] == nth and kind == "before":
                die()  # the temp file is written and fsynced, not renamed
            real(src, dst, *a, **k)
            if hit and seen["n"] == nth and kind == "after":
                die()

        os.replace = replace
    elif kind == "torn":
        def append(path, line):
            seen["n"] += 1
            if seen["n"] == nth:
                with open(path, "a") as fh:
                    fh.write(line[: len(line) // 2])
                die()
            io_mod.append_line_durable(path, line)

        logging_mod.append_line_durable = append
    elif kind == "unlink":
        real_unlink = Path.unlink

        def unlink(self, *a, **k):
            real_unlink(self, *a, **k)
            if self.name.startswith("state-"):
                seen["n"] += 1
                if seen["n"] == nth:
                    die()

        Path.unlink = unlink


def _fork(body) -> int:
    """Run ``body()`` in a forked child (a real process, no new interpreter: fast); the
    child exits 3 if body returns, 4 if it raises, and never returns to pytest."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            body()
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 4
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"child {pid} hung")
        time.sleep(0.02)


def _killed_child(run_dir: Path, point: tuple) -> int:
    def body():
        _arm(point)
        train(TrainConfig(**TINY), out=run_dir, progress=False)

    return _wait(_fork(body))


KILL_POINTS = [
    ("after", "config.json", 1),                  # before any checkpoint: starts over
    ("before", "G-00000020.safetensors", 1),      # snapshot temp written, not renamed
    ("after", "G-00000020.safetensors", 1),       # snapshot in place, no metrics row
    ("torn", "metrics.jsonl", 3),                 # half of the row of iteration 20
    ("before", "state-00000020.safetensors", 1),  # weights temp written, not renamed
    ("after", "state-00000020.safetensors", 1),   # weights, no state-20.json
    ("after", "state-00000020.json", 1),          # state-20.json, latest.json still at 10
    ("after", "latest.json", 3),                  # committed at 20, not pruned
    ("unlink", "prune", 1),                       # at 30: half of checkpoint 10 deleted
]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("point", KILL_POINTS, ids=["-".join(map(str, p)) for p in KILL_POINTS])
def test_sigkill_during_writes_resumes_exactly(tmp_path, reference, point, capsys):
    run = tmp_path / "run"
    status = _killed_child(run, point)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert (run / ".lock").exists()  # the dead writer's lock is left behind
    res = resume(run, progress=False)
    assert res.status == "finished" and res.iteration == 40
    assert "taking over the stale lock of pid" in capsys.readouterr().err
    _assert_same_run(reference, run)


# ------------------------------------------------------------------ real subprocesses
def _script(body: str) -> list[str]:
    pre = f"""
        import json, sys, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(ROOT)!r})
        import ganflow.training.run
        from ganflow.training import TrainConfig, train
        ganflow.training.run._end_of_run_figures = lambda s: None  # figures are not under test
        TINY = {TINY!r}
    """
    return [sys.executable, "-c", textwrap.dedent(pre) + textwrap.dedent(body)]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _wait_for(pred, proc, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            pytest.fail(f"the training process ended ({proc.returncode}) before {what}: "
                        f"{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _latest_iteration(run: Path) -> int:
    try:
        return json.loads((run / "checkpoints/latest.json").read_text())["iteration"]
    except (OSError, ValueError, KeyError):
        return -1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_a_random_moment_and_a_second_writer(tmp_path, reference, capsys):
    run = tmp_path / "run"

    def body():
        real = generator_mod.algorithm_step

        def slow(*a, **k):
            time.sleep(0.01)  # the kill lands mid-run, whatever the machine's speed
            return real(*a, **k)

        generator_mod.algorithm_step = slow
        # a long horizon with the reference's lr schedule (lr_decay_iters = 40)
        train(TrainConfig(**{**TINY, "iterations": 100000, "lr_decay_iters": 40}), out=run,
              progress=False)

    pid = _fork(body)
    try:
        deadline = time.monotonic() + 60
        while _latest_iteration(run) < 10:
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the child ended early"
            assert time.monotonic() < deadline, "no checkpoint at 10"
            time.sleep(0.01)
        # two writers: the second one is refused, naming the folder and the holder's pid
        with pytest.raises(GanflowError, match=rf"{run.name}.*in use by pid {pid}\b"):
            resume(run, progress=False)
        time.sleep(0.07)  # somewhere between two evaluations, or in one
    finally:
        os.kill(pid, signal.SIGKILL)
    status = _wait(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    k = _latest_iteration(run)
    if k > 30:
        pytest.skip(f"the child got to iteration {k} before the kill (a very slow machine)")
    resume(run, iterations=40, progress=False)  # back to the reference's horizon
    assert f"stale lock of pid {pid}" in capsys.readouterr().err
    _assert_same_run(reference, run)


def test_real_sigterm_saves_like_ctrl_c(tmp_path, reference):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _script(f"""
            import ganflow.training.methods.generator as tm, time
            real = tm.algorithm_step
            def slow(*a, **k):
                time.sleep(0.01)  # room for the signal to land between evaluations
                return real(*a, **k)
            tm.algorithm_step = slow
            res = train(TrainConfig(**TINY), out={str(run)!r}, progress=False)
            print(json.dumps({{"status": res.status, "iteration": res.iteration}}))
        """), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _latest_iteration(run) >= 0, proc, "the first checkpoint")
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert got["status"] == "interrupted" and 0 <= got["iteration"] < 40, got
    assert _latest_iteration(run) == got["iteration"]  # saved where it stopped
    assert "interrupted" in (run / "summary.md").read_text()
    resume(run, progress=False)
    _assert_same_run(reference, run)


def test_cli_sigterm_prints_the_resume_command(tmp_path, monkeypatch):
    real = generator_mod.algorithm_step
    calls = {"n": 0}

    def terminating(*args, **kwargs):
        info = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)  # a real SIGTERM, handled as Ctrl-C
        return info

    monkeypatch.setattr(generator_mod, "algorithm_step", terminating)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--method", "flow", "--out", str(out),
                                   "--iterations", "20", "--eval-every", "10", "--width", "8",
                                   "--depth", "1",
                                   "--batch-size", "16", "--no-progress"])
    assert res.exit_code == 130, res.output
    assert f"continue with: ganflow train --resume {out}" in res.output
    assert _latest_iteration(out) == 7


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_real_efbig_tears_a_row_and_resumes(tmp_path, reference):
    import resource

    run, msg_file = tmp_path / "run", tmp_path / "message.txt"

    def body():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG
        n = {"k": 0}

        def append(path, line):
            n["k"] += 1
            if n["k"] == 3:  # the row of iteration 20 crosses the file-size limit
                size = path.stat().st_size + len(line) // 2
                resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
            io_mod.append_line_durable(path, line)

        logging_mod.append_line_durable = append
        try:
            train(TrainConfig(**TINY), out=run, progress=False)
        except GanflowError as exc:
            resource.setrlimit(resource.RLIMIT_FSIZE,
                               (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            msg_file.write_text(str(exc))
            os._exit(7)

    status = _wait(_fork(body))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7, status
    msg = msg_file.read_text()
    assert len(msg.splitlines()) == 1
    assert "File too large" in msg and "checkpoint of iteration 10 is kept" in msg
    assert f"ganflow train --resume {run}" in msg
    text = (run / "metrics.jsonl").read_text()
    assert not text.endswith("\n")  # a real torn row
    assert [r["iteration"] for r in read_metrics(run)] == [0, 10]  # readers skip it
    resume(run, progress=False)
    _assert_same_run(reference, run)


# ------------------------------------------------------------------ full disk (monkeypatch)
def test_enospc_in_a_metrics_append(tmp_path, reference, monkeypatch):
    import errno

    real = logging_mod.append_line_durable
    n = {"k": 0}

    def full(path, line):
        n["k"] += 1
        if n["k"] == 3:
            with open(path, "a") as fh:
                fh.write(line[:20])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, line)

    monkeypatch.setattr(logging_mod, "append_line_durable", full)
    with pytest.raises(GanflowError, match="No space left on device") as info:
        train(TrainConfig(**TINY), out=tmp_path / "run", progress=False)
    assert "\n" not in str(info.value) and "iteration 10 is kept" in str(info.value)
    monkeypatch.setattr(logging_mod, "append_line_durable", real)
    # every reader tolerates the torn tail
    assert [r["iteration"] for r in read_metrics(tmp_path / "run")] == [0, 10]
    from ganflow.training import plot_run

    assert plot_run(tmp_path / "run")  # `ganflow plot` (the end-of-run figures are stubbed here)
    resume(tmp_path / "run", progress=False)
    _assert_same_run(reference, tmp_path / "run")


def test_enospc_in_a_checkpoint_write_leaves_no_temp(tmp_path, reference, monkeypatch):
    import errno

    armed = {"on": False}
    real_fsync, real_write = io_mod.os.fsync, checkpoint_mod.write_safetensors_atomic

    def fsync(fd):
        if armed["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    def write(path, tensors):
        armed["on"] = Path(path).name == "state-00000020.safetensors"
        try:
            return real_write(path, tensors)
        finally:
            armed["on"] = False

    monkeypatch.setattr(io_mod.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint_mod, "write_safetensors_atomic", write)
    with pytest.raises(GanflowError, match="No space left on device.*iteration 10 is kept"):
        train(TrainConfig(**TINY), out=tmp_path / "run", progress=False)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "run").rglob("*.tmp")] == []  # cleaned up
    assert not (tmp_path / "run/.lock").exists()  # released on the error
    resume(tmp_path / "run", progress=False)
    _assert_same_run(reference, tmp_path / "run")


def test_torn_middle_line_is_damage_not_a_tail(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"iteration": 0}\n{"iter\n{"iteration": 10}\n')
    with pytest.raises(GanflowError, match="line 2 is not JSON"):
        read_metrics(tmp_path)
    p.write_text('{"iteration": 0}\n{"iteration": 10}\n{"iteration": 2')
    assert read_metrics(tmp_path) == [{"iteration": 0}, {"iteration": 10}]


# ------------------------------------------------------------------ damaged checkpoints
@pytest.fixture
def stopped(tmp_path) -> Path:
    """A run stopped at 30 of 40: checkpoints 20 and 30."""
    run = tmp_path / "run"
    train(TrainConfig(**TINY), out=run, progress=False, stop_at=30)
    return run


def test_truncated_checkpoint_falls_back_to_the_older_one(stopped, reference, capsys):
    w = stopped / "checkpoints/state-00000030.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    resume(stopped, progress=False)
    err = capsys.readouterr().err
    assert "state-00000030.safetensors" in err and "skipped" in err
    assert "using checkpoints/state-00000020.safetensors (iteration 20)" in err
    _assert_same_run(reference, stopped)


@pytest.mark.parametrize("latest", ["{not json", '{"iteration": 30, "weights": "../../etc/x"}',
                                    '{"iteration": 30, "weights": "/etc/passwd"}', "[]"])
def test_bad_latest_json_falls_back(stopped, reference, latest, capsys):
    (stopped / "checkpoints/latest.json").write_text(latest)
    resume(stopped, progress=False)
    err = capsys.readouterr().err
    assert "checkpoints/latest.json" in err and "using checkpoints/state-0000003" in err
    _assert_same_run(reference, stopped)


def test_nothing_loads_names_the_files(stopped, reference, capsys):
    ck = stopped / "checkpoints"
    for p in ck.glob("state-*.json"):
        p.unlink()  # an old run folder: latest.json alone
    sample_run(stopped, 5)  # still loads
    (ck / "latest.json").write_text('{"weights": "../x"}')
    with pytest.raises(GanflowError, match=r"no checkpoint loads: checkpoints/latest.json"):
        sample_run(stopped, 5)
    (ck / "latest.json").unlink()
    with pytest.raises(GanflowError, match="no checkpoint in it"):
        sample_run(stopped, 5)
    # no checkpoint at all (a run killed before its first): --resume starts it over
    resume(stopped, progress=False)
    assert "starting it over" in capsys.readouterr().err
    _assert_same_run(reference, stopped)


def test_other_architecture_is_a_clear_error(stopped):
    cfg = json.loads((stopped / "config.json").read_text())
    (stopped / "config.json").write_text(json.dumps({**cfg, "width": 32}))
    with pytest.raises(GanflowError, match=r"state-00000030.safetensors.*does not fit the ne"):
        sample_run(stopped, 5)


def test_data_that_changed_shape_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save("table.npy", np.random.default_rng(0).normal(size=(500, 2)))
    train(TrainConfig(**{**TINY, "data": "table.npy", "iterations": 10}), out="run",
          progress=False)
    cfg = json.loads(Path("run/config.json").read_text())
    assert cfg["data"] == str(tmp_path / "table.npy")  # stored absolute
    np.save("table.npy", np.random.default_rng(0).normal(size=(500, 3)))
    with pytest.raises(GanflowError, match="changed architecture or data shape"):
        resume("run", iterations=20, progress=False)


def test_relative_data_path_resumes_from_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    np.save("table.npy", np.random.default_rng(0).normal(size=(500, 2)))
    train(TrainConfig(**{**TINY, "data": "table.npy", "iterations": 10}), out="../run",
          progress=False)
    monkeypatch.chdir(tmp_path)
    assert resume("run", iterations=20, progress=False).iteration == 20


# ------------------------------------------------------------------ hostile folders, writers
@pytest.mark.parametrize("sub", ["checkpoints", "snapshots", "samples"])
def test_symlinked_subfolder_is_refused(stopped, tmp_path, sub):
    elsewhere = tmp_path / "elsewhere"
    if (stopped / sub).exists():
        (stopped / sub).rename(elsewhere)
    else:  # samples/: a stopped run has drawn no figures yet
        elsewhere.mkdir()
    (stopped / sub).symlink_to(elsewhere)
    before = sorted(p.name for p in elsewhere.iterdir())
    with pytest.raises(GanflowError, match="is a symlink"):
        resume(stopped, progress=False)
    with pytest.raises(GanflowError, match="is a symlink"):
        sample_run(stopped, 5)
    assert sorted(p.name for p in elsewhere.iterdir()) == before


def test_second_writer_in_process_and_stale_lock(stopped, capsys):
    with rf.run_lock(stopped):
        with pytest.raises(GanflowError, match=rf"{stopped.name}.*in use by pid {os.getpid()}"):
            resume(stopped, progress=False)
        sample_run(stopped, 5)  # readers need no lock
    # a lock file left by a dead process on this host does not block
    (stopped / ".lock").write_text(f"999999999 {os.uname().nodename}\n")
    assert resume(stopped, progress=False).iteration == 40
    assert "stale lock of pid 999999999" in capsys.readouterr().err
    assert not (stopped / ".lock").exists()


def test_two_fresh_trains_on_one_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with rf.run_lock(out, fresh=True):  # another `train --out run` holds it
        with pytest.raises(GanflowError, match=rf"in use by pid {os.getpid()}"):
            train(TrainConfig(**TINY), out=out, progress=False)
    assert [p.name for p in out.iterdir()] == []
    (out / "config.json").write_text("{}")  # the first one finished meanwhile
    with pytest.raises(GanflowError, match="filled by another run"):
        with rf.run_lock(out, fresh=True):
            pass
    assert [p.name for p in out.iterdir()] == ["config.json"]


# ------------------------------------------------------------------ CLI refusals
def test_sample_refuses_to_overwrite_and_checks_first(tmp_path, stopped, monkeypatch):
    runner = CliRunner()
    target = tmp_path / "s.npy"
    target.write_bytes(b"mine")
    res = runner.invoke(app, ["sample", str(stopped), "--n", "5", "--out", str(target)])
    assert res.exit_code == 2 and "exists; add --force" in res.output
    assert target.read_bytes() == b"mine"
    res = runner.invoke(app, ["sample", str(stopped), "--n", "5", "--out", str(target),
                              "--force"])
    assert res.exit_code == 0, res.output
    assert np.load(target).shape == (5, 2)
    # an unwritable folder is found before the run is loaded (the run here does not exist)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: Path(p) != ro and real_access(p, m))
    res = runner.invoke(app, ["sample", str(tmp_path / "nowhere"), "--out", str(ro / "x.npy")])
    assert res.exit_code == 2 and "not a writable folder" in res.output
    res = runner.invoke(app, ["train", "--out", str(ro / "run"), "--no-progress"])
    assert res.exit_code == 2 and "not writable" in res.output
    assert list(ro.iterdir()) == []


def test_resume_refuses_options_it_would_ignore(stopped):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--resume", str(stopped), "--data", "grid25",
                              "--eps", "0.5", "--no-progress"])
    assert res.exit_code == 2
    assert "--data, --eps would be ignored" in res.output
    assert _latest_iteration(stopped) == 30  # nothing ran
