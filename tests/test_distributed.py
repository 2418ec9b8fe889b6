r"""Data parallelism (ganflow.training.distributed): 2 gloo processes launched by torchrun against
one process on the concatenated batches, DDP, failure and interrupt handling, and the
one-process no-op context.

Every launch runs in its own session (``start_new_session``) with a timeout, and the
whole session is killed in ``finally``: a failing test cannot leave processes behind.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ganflow._errors import GanflowError
from ganflow.algorithm import StepConfig, algorithm_step
from ganflow.particle_flow import particle_step
from ganflow.training.config import TrainConfig
from ganflow.training.distributed import (
    DistContext,
    check_supported,
    distributed_session,
    rank_seed,
    setup_from_env,
    shutdown,
)
from ganflow.training.grad_sync import attach

WORKER = Path(__file__).with_name("_dist_worker.py")
LAUNCH_TIMEOUT = 60  # seconds; a launch takes ~6 s on the shared 2-core machine


def _load_worker():
    spec = importlib.util.spec_from_file_location("_dist_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


worker = _load_worker()

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this build",
)


# ------------------------------------------------------------------ process helpers
def _session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``, read from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # fields after the command name "(...)": state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # 2 processes on 2 cores: more threads thrash
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start(args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", str(WORKER), *args]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def _launch(args: list[str], timeout: float = LAUNCH_TIMEOUT) -> tuple[int, str, float]:
    """Run the worker on 2 ranks; (exit code, stderr, seconds). Kills all on timeout."""
    proc = _start(args)
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun launch {args} did not finish within {timeout} s (hung ranks)")
    finally:
        _kill_session(proc)
        assert _session_pids(proc.pid) == [], "processes left after the launch"


# ------------------------------------------------------------------ 2 ranks = batch 2m
def _single_process(case: tuple, args: dict) -> dict[str, torch.Tensor]:
    """The worker's case in one process on batches of 2m: every draw is rank 0's m points
    followed by rank 1's, each from that rank's own generator."""
    name, method, d_steps, fit_steps = case
    m = args["batch"]
    G, D = worker.build(args["seed"], args["width"], args["depth"])
    opt_g = torch.optim.SGD(G.parameters(), lr=args["lr"])
    opt_d = torch.optim.SGD(D.parameters(), lr=args["lr"])
    gens = [torch.Generator().manual_seed(rank_seed(args["seed"], r)) for r in (0, 1)]

    def joint(draw):
        def sample(n: int) -> torch.Tensor:
            assert n == 2 * m  # algorithm_step asks for cfg.batch_size points per draw
            # same calls in the same order as on each rank, so each generator advances
            # exactly as the rank's own did
            return torch.cat([draw(m, g) for g in gens])
        return sample

    cfg = worker.step_config(method, d_steps, fit_steps, 2 * m)
    for _ in range(args["steps"]):
        algorithm_step(G, D, opt_g, opt_d, joint(worker.draw_data), joint(worker.draw_latent),
                       cfg)
    return {f"{n}.{k}": v for n, net in (("G", G), ("D", D)) for k, v in net.state_dict().items()}


def _single_process_particles(args: dict) -> dict[str, torch.Tensor]:
    """The worker's particle steps in one process on the union batches (as above), the
    drift computed at all particles at once."""
    m = args["batch"]
    _, D = worker.build(args["seed"], args["width"], args["depth"])
    opt_d = torch.optim.SGD(D.parameters(), lr=args["lr"])
    gens = [torch.Generator().manual_seed(rank_seed(args["seed"], r)) for r in (0, 1)]
    x = worker.initial_particles(args["seed"])
    cfg = worker.step_config("flow", 1, 1, 2 * m)
    for _ in range(args["steps"]):
        particle_step(D, opt_d, x, lambda n: torch.cat([worker.draw_data(m, g) for g in gens]),
                      lambda n: torch.cat([torch.randint(0, worker.PARTICLES, (m,), generator=g)
                                           for g in gens]), cfg)
    return {"particles": x, **{f"D.{k}": v for k, v in D.state_dict().items()}}


@needs_gloo
def test_two_ranks_equal_one_process_on_the_union_batch(tmp_path):
    args = {"seed": 3, "steps": 3, "batch": 32, "width": 16, "depth": 2, "lr": 0.05}
    rc, err, _ = _launch(["--out", str(tmp_path)]
                         + [f"--{k}={v}" for k, v in args.items()])
    assert rc == 0, err[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for case in worker.CASES:
        name = case[0]
        # the ranks apply the same averaged gradient to the same parameters: bitwise equal
        for k in r0[name]:
            assert torch.equal(r0[name][k], r1[name][k]), (name, k)
        # All losses are batch means, L = (1/2m) sum_{i<2m} l_i = (L_0 + L_1) / 2 with L_r
        # rank r's mean over its m points, so grad L = (grad L_0 + grad L_1) / 2: the hook's
        # average. D's calibration, the targets (per point) and the fit then see the same
        # numbers as on the union batch, up to float32 summation order (a mean of 2m terms
        # against two means of m and a sum), ~1e-7 relative per gradient; after 3 SGD
        # steps at lr 0.05 the gap measured 3e-8 (parameters moved by 1.5e-2). 1e-5 leaves
        # 300x room for other BLAS kernels and orderings, and is still 50x below the gap a
        # missing average makes (rank 0's gradient alone: 5e-4 after the same 3 steps).
        ref = _single_process(case, args)
        for k, v in ref.items():
            torch.testing.assert_close(r0[name][k], v, rtol=0, atol=1e-5, msg=f"{name} {k}")
    # particle methods: the same particles on both ranks (each computed half the drift and
    # gathered the other half), equal to one process's steps on the union batches
    # within the tolerance above (same argument: averaged batch-mean gradients; the drift
    # is row-wise, so computing it in parts changes only BLAS blocking, ~1e-7)
    for k in r0["particles"]:
        assert torch.equal(r0["particles"][k], r1["particles"][k]), k
    ref = _single_process_particles(args)
    assert not torch.equal(ref["particles"], worker.initial_particles(args["seed"]))
    for k, v in ref.items():
        torch.testing.assert_close(r0["particles"][k], v, rtol=0, atol=1e-5, msg=k)
    # replicated state that parted is reset to rank 0's on both ranks, and only once
    for r in (r0, r1):
        assert torch.equal(r["sync"]["t"], torch.arange(4.0))
        assert r["sync"]["changed"].tolist() == [True, False]
        assert bool(r["sync"]["refused"])
    # the hook is DDP: DDP divides by 2 (exact) then sums; the hook sums then divides by 2
    # (exact); a sum of two floats does not depend on their order, so bitwise equal
    ddp = r0["ddp"]
    hooked = [k for k in ddp if k.startswith("hook.")]
    assert hooked
    for k in hooked:
        assert torch.equal(ddp[k], ddp["ddp." + k[len("hook."):]]), k
    # a parameter without a gradient on some rank counts as 0 there (DDP's rule), one
    # without a gradient anywhere keeps None (the optimizer skips it, as in one process)
    for r in (r0, r1):
        miss = r["missing"]
        assert set(miss) == {"a", "b"}
        assert torch.equal(miss["a"], torch.full((3,), 1.5))  # (1 + 2) / 2
        assert torch.equal(miss["b"], torch.full((3,), 2.0))  # (4 + 0) / 2
    # a stop seen by rank 1 only stops both at the same iteration, and the checkpoint
    # (every rank's generator state, optimizers, nets) resumes exactly: bitwise equal to
    # the run that never stopped
    for r in (r0, r1):
        res = r["resume"]
        assert res["stopped_at"] == 3
        for k, v in res["straight"].items():
            assert torch.equal(res["resumed"][k], v), k
    # and the nets did learn something different from their start (the test is not void)
    G0, _ = worker.build(args["seed"], args["width"], args["depth"])
    assert not torch.equal(G0.state_dict()["net.0.weight"], r0["flow"]["G.net.0.weight"])


@needs_gloo
def test_failure_on_one_rank_stops_every_rank(tmp_path):
    # rank 1 raises after its first step while rank 0 goes on into the next all-reduce:
    # torchrun must notice the failed worker, stop rank 0 and exit non-zero
    rc, err, secs = _launch(["--out", str(tmp_path), "--fail-rank=1", "--fail-after=1"])
    assert rc != 0
    assert "fails on purpose" in err
    assert secs < LAUNCH_TIMEOUT
    assert not (tmp_path / "rank0.pt").exists()


@needs_gloo
def test_interrupt_stops_every_rank_together(tmp_path):
    # Ctrl-C sends SIGINT to the whole foreground process group (torchrun and both ranks),
    # and torchrun forwards one more to each rank; the ranks must stop at the same
    # iteration, checkpoint every rank's generator state and exit by themselves
    proc = _start(["--mode=interrupt", "--out", str(tmp_path), "--steps=100000"])
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not all((tmp_path / f"ready{r}").exists() for r in (0, 1)):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
        # by themselves, not by torchrun's SIGKILL 30 s after its forwarded SIGINT
        assert time.monotonic() - t0 < 25, err[-3000:]
    except subprocess.TimeoutExpired:
        pytest.fail("ranks still running after Ctrl-C")
    finally:
        _kill_session(proc)
        assert _session_pids(proc.pid) == []
    stops = [(tmp_path / f"stopped{r}").read_text() for r in (0, 1)]
    assert stops[0] == stops[1] and int(stops[0]) >= 1, (stops, err[-3000:])
    ck = torch.load(tmp_path / "ckpt.pt")
    assert ck["step"] == int(stops[0]) and len(ck["rng"]) == 2
    assert not torch.equal(ck["rng"][0], ck["rng"][1])  # each rank's own stream


# ------------------------------------------------------------------ one process
def test_single_process_context_is_a_no_op(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    ctx = setup_from_env("cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (0, 1, 0, True)
    assert not ctx.distributed and ctx.backend is None and ctx.device == torch.device("cpu")
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    assert attach(opt, ctx) is None
    assert not opt._optimizer_step_pre_hooks  # nothing registered
    assert ctx.all_reduce_mean(2.5) == 2.5
    assert ctx.any_flag(True) is True and ctx.any_flag(False) is False
    assert ctx.gather_objects("x") == ["x"] and ctx.all_gather_objects(1) == [1]
    assert ctx.broadcast_object({"a": 1}) == {"a": 1}
    before = [p.clone() for p in net.parameters()]
    ctx.broadcast_module(net)
    ctx.barrier()
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    ctx.shutdown()
    ctx.shutdown()  # twice, and never initialised: both fine
    shutdown()
    with distributed_session() as inner:
        assert inner.world_size == 1
    # WORLD_SIZE=1 (torchrun --nproc_per_node=1) is the one-process case too
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert setup_from_env().world_size == 1


def test_single_process_step_is_unchanged():
    # attach on one process must not change a step: same parameters with and without it
    nets = []
    for use in (False, True):
        G, D = worker.build(0, 16, 2)
        opt_g = torch.optim.SGD(G.parameters(), lr=0.05)
        opt_d = torch.optim.SGD(D.parameters(), lr=0.05)
        if use:
            attach(opt_g, DistContext())
            attach(opt_d, DistContext())
        gen = torch.Generator().manual_seed(rank_seed(0, 0))
        algorithm_step(G, D, opt_g, opt_d, lambda m, g=gen: worker.draw_data(m, g),
                       lambda m, g=gen: worker.draw_latent(m, g), StepConfig(batch_size=16))
        nets.append(G.state_dict())
    for k in nets[0]:
        assert torch.equal(nets[0][k], nets[1][k])


def test_rank_seed():
    assert rank_seed(0, 0) == 0 and rank_seed(123, 0) == 123
    seeds = {rank_seed(s, r) for s in range(4) for r in range(4)}
    assert len(seeds) == 16  # distinct streams for every (seed, rank)
    assert rank_seed(5, 1) == rank_seed(5, 1)  # reproducible
    assert rank_seed(0, 1) not in (1, 2)  # not the next run's seed nor an eval seed
    assert 0 <= rank_seed(2**40, 7) < 2**63
    torch.Generator().manual_seed(rank_seed(9, 3))  # a valid seed
    for bad in (-1, 1.5, True, "0"):
        with pytest.raises(GanflowError, match="rank must be"):
            rank_seed(0, bad)
        with pytest.raises(GanflowError, match="seed must be"):
            rank_seed(bad, 0)


def test_setup_rejects_bad_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(GanflowError, match="WORLD_SIZE='two'"):
        setup_from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(GanflowError, match="RANK=2 must be smaller than WORLD_SIZE=2"):
        setup_from_env()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(GanflowError, match="unknown backend 'mpi'"):
        setup_from_env(backend="mpi")


_EXIT_SCRIPT = """
import sys
from ganflow.training import distributed
code = {"none": None, "int": 3, "text": "bye"}[sys.argv[1]]
if sys.argv[2] == "joined":
    distributed._mark_joined()
print("unflushed", end="")  # still in the buffer: os._exit alone would lose it
# finalization must not run: an atexit handler (run by it) would print
import atexit
atexit.register(lambda: print("FINALIZED", file=sys.stderr))
distributed.exit_process(code)
"""


@pytest.mark.parametrize("code,status", [("none", 0), ("int", 3), ("text", 1)])
def test_exit_process_skips_finalization_only_after_joining(code, status):
    # a rank that joined a gloo group must end without interpreter finalization (gloo
    # threads abort it otherwise), keeping sys.exit's exit statuses and buffered output
    for joined in ("joined", "alone"):
        proc = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, code, joined],
                              env=_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == status, proc.stderr
        assert proc.stdout == "unflushed"
        assert ("bye" in proc.stderr) == (code == "text")
        assert ("FINALIZED" in proc.stderr) == (joined == "alone")


def test_check_supported():
    one = DistContext()
    two = DistContext(rank=0, world_size=2)
    faithful = StepConfig(faithful=True)
    gauss = StepConfig(faithful=True, fit_solver="gauss-newton")
    plain = StepConfig(pairing="assignment")
    for cfg in (faithful, gauss, plain):
        check_supported(cfg, one)  # one process: everything
    check_supported(plain, two)
    with pytest.raises(GanflowError, match="faithful mode is single-process"):
        check_supported(faithful, two)
    with pytest.raises(GanflowError, match="gauss-newton"):
        check_supported(StepConfig(fit_solver="gauss-newton"), two)
    with pytest.raises(GanflowError, match="--distil is single-process"):
        check_supported(TrainConfig(method="particles", distil=True), two)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 4, 65])
def test_row_range_splits_rows_into_contiguous_shares(world, n):
    # without a process group map_rows computes fn(x) whole, whatever world_size says
    x = torch.arange(2 * n, dtype=torch.float32).reshape(n, 2)
    assert torch.equal(DistContext(rank=0, world_size=world).map_rows(lambda r: 2 * r, x),
                       2 * x)
    shares = [DistContext(rank=r, world_size=world).row_range(n) for r in range(world)]
    # contiguous, in rank order, covering [0, n) exactly once
    assert shares[0][0] == 0 and shares[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shares[:-1], shares[1:], strict=True))
    sizes = [end - start for start, end in shares]
    assert max(sizes) - min(sizes) <= 1  # balanced


# ------------------------------------------------------------------ the trainer on 2 ranks
def _train_2_ranks(args: list[str], timeout: float = 2 * LAUNCH_TIMEOUT) -> str:
    """``torchrun --nproc_per_node=2 -m ganflow train ARGS``; returns stdout (or fails)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", "-m", "ganflow", "train", "--no-progress", *args]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun -m ganflow train {args} did not finish within {timeout} s")
    finally:
        _kill_session(proc)
        assert _session_pids(proc.pid) == [], "processes left after the launch"
    assert proc.returncode == 0, err[-3000:]
    return out


@needs_gloo
@pytest.mark.parametrize("method,extra", [
    ("flow-chain", []),
    ("particles", []),
    ("flow-map", ["--fit-steps", "2", "--repair-every", "3"]),
])
def test_particle_methods_on_two_ranks_resume_exactly(tmp_path, method, extra):
    from ganflow.training import read_metrics

    # the particles are replicated and each rank moves its share of them: a stop and a
    # resume on 2 ranks must give the rows of the run that never stopped
    common = ["--method", method, "--particles", "101", "--d-steps", "1", "--d-warmup", "2",
              "--width", "16", "--depth", "2", "--batch-size", "32", "--eval-every", "4",
              "--lr-decay", "1", "--eps-decay", "1", "--seed", "5", *extra]
    _train_2_ranks([*common, "--iterations", "8", "--out", str(tmp_path / "full")])
    _train_2_ranks([*common, "--iterations", "4", "--out", str(tmp_path / "part")])
    _train_2_ranks(["--resume", str(tmp_path / "part"), "--iterations", "8"])
    full, part = (read_metrics(tmp_path / n) for n in ("full", "part"))
    assert [r["iteration"] for r in full] == [0, 4, 8]
    timing = {"seconds", "iter_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in full] == [
        {k: v for k, v in r.items() if k not in timing} for r in part]
    assert full[-1]["drift_rms"] > 0  # the particles moved


@needs_gloo
def test_trainer_on_two_ranks_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from ganflow.training import read_metrics, resume

    # constant learning rate: a decay's horizon is fixed when a run is created
    common = ["--method", "flow", "--width", "16", "--depth", "2", "--batch-size", "32",
              "--eval-every", "10", "--lr-decay", "1", "--seed", "5"]
    out = _train_2_ranks([*common, "--iterations", "20", "--out", str(tmp_path / "full")])
    assert out.count("finished at iteration 20") == 1  # rank 0 alone reports
    _train_2_ranks([*common, "--iterations", "10", "--out", str(tmp_path / "part")])
    _train_2_ranks(["--resume", str(tmp_path / "part"), "--iterations", "20"])
    keys = ("iteration", "flow_time", "modes", "hq", "mode_kl", "energy", "w2", "d_loss",
            "g_loss")
    full, part = (read_metrics(tmp_path / n) for n in ("full", "part"))
    assert [r["iteration"] for r in full] == [0, 10, 20]
    assert [{k: r.get(k) for k in keys} for r in full] == [{k: r.get(k) for k in keys}
                                                           for r in part]
    ck = tmp_path / "full" / "checkpoints"
    tensors = load_file(str(sorted(ck.glob("state-*.safetensors"))[-1]))
    # both ranks' batch streams are checkpointed, and they differ (own noise per rank)
    assert not torch.equal(tensors["rng.train"], tensors["rng.train.1"])
    # a 2-rank run resumes on 2 ranks only: one process would draw other batches
    with pytest.raises(GanflowError, match="trained on 2 process"):
        resume(tmp_path / "full", iterations=30, progress=False)
