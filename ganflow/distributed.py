r"""Data-parallel training through ``torch.distributed``: one process per rank,
launched by ``torchrun``; nothing here starts or supervises processes.

Launching::

    # one machine, 2 processes (CPU: gloo; with --device cuda: NCCL, one GPU per rank)
    torchrun --standalone --nproc_per_node=2 -m ganflow train --data ring8 ...

    # several machines: the same command on each, node_rank 0..nnodes-1
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 \
        --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT -m ganflow train ...

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`setup_from_env` reads them and, when ``WORLD_SIZE`` > 1, joins the
process group (backend ``nccl`` when the run's device is CUDA, else ``gloo``). Without
them (a plain ``ganflow train``) it returns a single-process context whose every method
is a no-op, so the trainer calls this layer unconditionally.

What is averaged. Every rank holds the same G and D (initialised from the same seed and
broadcast from rank 0) and draws its own data and latent batches of m =
``batch_size`` points from its own generator (:func:`rank_seed`). Before *every*
``optimizer.step()`` - each of D's calibration steps and each of G's K fit steps - a
pre-hook (:func:`attach`) replaces every parameter's ``.grad`` by its mean over the
ranks. The losses of :mod:`ganflow.algorithm` are batch means, so the mean of the N
per-rank gradients is the gradient of the same loss on the union batch of N x m points:
one iteration is an iteration with the *effective batch N x m* (what ``DistributedData
Parallel`` computes too; tests/test_distributed.py checks both, against DDP and against
a one-process run on the concatenated batches). The parameters stay identical on all
ranks because every rank applies the same averaged gradient to the same parameters.

This holds for networks whose forward pass treats points independently (the MLPs and
conv nets here): a layer with batch statistics (BatchNorm) would normalise by each rank's
m points, and its running buffers would drift apart across ranks.

What is *not* pooled: anything a rank computes from its own batch without a gradient.
The targets y_i = G(z_i) + eps drift(G(z_i)) are per point and need nothing else, so
index pairing is unaffected. Assignment pairing (``pairing="assignment"``) solves the
optimal assignment between each rank's m points G(z_i) and its own m targets: the
set-wise fit is a sum of N independent optimal transports of size m, not one transport
of size N x m. Each is still a valid coupling of the union batch (block diagonal), but
not the optimal one, so the set-wise estimator is coarser - as with a one-process run
at batch m - while its cost is N times smaller than one N x m assignment.
Energy pairing (``pairing="energy"``) likewise compares each rank's m points with its
own m targets: the averaged gradient is that of the mean of N energy distances of
size m, not of one energy distance between the union sets.

In a training loop, on every rank::

    with distributed_session(cfg.device) as ctx, interrupt_flag() as stop:
        check_supported(cfg, ctx)
        G, D = ...                       # from cfg.seed, identical on every rank
        ctx.broadcast_module(G); ctx.broadcast_module(D)   # after loading a checkpoint
        attach(opt_g, ctx); attach(opt_d, ctx)
        gen = torch.Generator().manual_seed(rank_seed(cfg.seed, ctx.rank))
        while it < end:
            if ctx.any_flag(stop.is_set()):           # every rank, every iteration
                break
            info = algorithm_step(G, D, opt_g, opt_d, ...)    # batch m per rank
            if ctx.any_flag(not finite(info)): raise ...      # all ranks raise together
            if it % eval_every == 0:
                states = ctx.gather_objects(gen.get_state())  # every rank calls it
                if ctx.is_main: evaluate, log, save (G, D, optimizers, states)

Single-process only (:func:`check_supported`): the faithful mode stops D's calibration
and G's fit on criteria measured on each rank's own batch, so ranks could take different
numbers of optimizer steps and wait forever in each other's all-reduce; the Gauss-Newton
fit moves parameters without the optimizer, so its update would not be averaged.

Stopping together. A rank that leaves the loop early while the others enter a collective
hangs them (until the process-group timeout). The trainer therefore agrees on every
rank-local stop reason (Ctrl-C, a NaN loss) with :meth:`DistContext.any_flag` once per
iteration, at the same point on every rank. Ctrl-C reaches each rank twice: from the
terminal (the whole foreground process group) and, a moment later, forwarded by the
``torchrun`` agent, which then waits 30 s before killing; :func:`interrupt_flag` treats
a repeat within ``grace_s`` as the same interrupt, so the ranks still stop between
iterations and checkpoint. A rank that dies (an exception, a kill) is handled by
``torchrun``: its agent sees the failed worker and terminates the others, and the launch
exits non-zero (tests/test_distributed.py checks that no process is left).
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ._errors import GanflowError

__all__ = [
    "STOP_SIGNALS",
    "DistContext",
    "attach",
    "check_supported",
    "distributed_session",
    "interrupt_flag",
    "rank_seed",
    "setup_from_env",
    "shutdown",
]


# the signals a training loop treats as Ctrl-C (stop between iterations, checkpoint):
# SIGTERM is how job schedulers, `docker stop` and `kill` ask a process to end
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def rank_seed(seed: int, rank: int) -> int:
    r"""The seed of rank ``rank``'s batch generator for a run of seed ``seed``.

    Rank 0 keeps ``seed``, so a one-process run draws exactly what it drew before this
    layer existed. Rank r > 0 gets a 63-bit hash of (seed, r) (NumPy's ``SeedSequence``):
    unlike ``seed + r`` it does not (but with odds 2^-63) coincide with rank 0 of run
    ``seed + r``, nor with the evaluation generators (the trainer seeds them ``seed + 1``
    and ``seed + 2``). It does not depend on the world size: rank r draws the same stream
    in a run of any size.
    """
    for name, val in (("seed", seed), ("rank", rank)):
        if not isinstance(val, int | np.integer) or isinstance(val, bool) or val < 0:
            raise GanflowError(f"{name} must be a non-negative integer, got {val!r}")
    if rank == 0:
        return int(seed)
    state = np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, np.uint64)[0]
    return int(state) >> 1  # 63 bits: a valid torch.Generator seed on every platform


@dataclass
class DistContext:
    r"""This process's place in the run; every method is a no-op when ``world_size`` is 1.

    Attributes:
        rank: global rank, 0..world_size-1 (rank 0 logs, evaluates and checkpoints).
        world_size: number of processes N; the effective batch is N x batch_size.
        local_rank: rank on this machine (selects the GPU).
        device: where this rank trains (``cuda:local_rank`` with NCCL).
        backend: "nccl", "gloo", or None when single-process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0: the one process that logs, evaluates and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when there are several ranks and this process has joined their group."""
        return self.world_size > 1 and _initialized()

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            torch.distributed.barrier()

    def all_reduce_mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (a Python float; float64 on the wire)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def any_flag(self, flag: bool) -> bool:
        r"""True on every rank if ``flag`` is true on any rank.

        Call it at the same point of the loop on every rank (it is a collective): this is
        how rank-local reasons to stop (Ctrl-C seen by one process, a NaN loss on one
        rank's batch) become one decision, so no rank waits alone in an all-reduce."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_module(self, module: nn.Module, src: int = 0) -> None:
        r"""Overwrite ``module``'s parameters and buffers with rank ``src``'s, in place.

        The trainer builds identical networks on every rank from the run's seed, so this
        is a safety net (and it makes a resumed run start from exactly rank 0's state)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                torch.distributed.broadcast(t.data, src=src)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (pickled; for small things like a path)."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src, device=self._object_device())
        return box[0]

    def gather_objects(self, obj: Any, dst: int = 0) -> list[Any] | None:
        r"""Every rank's ``obj``, in rank order, on rank ``dst`` (None elsewhere).

        For checkpoints: ``ctx.gather_objects(gen.get_state())`` on every rank gives rank 0
        the batch-generator state of each rank, so a resume with the same world size
        draws exactly what the uninterrupted run would have drawn."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj, out, dst=dst)
        return out

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def shutdown(self) -> None:
        """Leave the process group (safe to call twice, or when never joined)."""
        shutdown()

    # ------------------------------------------------------------------ helpers
    def _comm_device(self) -> torch.device:
        # NCCL moves only CUDA tensors; gloo only CPU ones (for the ops used here)
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def _object_device(self) -> torch.device | None:
        return self.device if self.backend == "nccl" else None


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        val = int(text)
    except ValueError:
        raise GanflowError(
            f"environment variable {name}={text!r} is not an integer; torchrun sets it to one"
        ) from None
    if val < 0:
        raise GanflowError(f"environment variable {name}={text!r} must be >= 0")
    return val


def setup_from_env(
    device: str | torch.device = "cpu", *, backend: str | None = None,
    timeout: datetime.timedelta | None = None,
) -> DistContext:
    r"""Join the process group ``torchrun`` describes, or return a one-process context.

    Args:
        device: the run's device option. "cuda" (or "cuda:K": the index is ignored) gives
            every rank ``cuda:LOCAL_RANK`` and, by default, the NCCL backend; anything
            else trains on that device with gloo.
        backend: force "gloo" or "nccl" (default: as above).
        timeout: how long a collective waits for a missing rank before failing (default:
            PyTorch's). ``torchrun`` terminates the rest as soon as one rank dies, so this
            only matters when a rank hangs without dying.

    Without ``WORLD_SIZE`` > 1 in the environment nothing is initialised and the context
    is rank 0 of 1 on ``device``. Calling it again after a successful join returns the
    same ranks without joining twice.
    """
    dev = torch.device(device)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext(device=dev)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if rank >= world:
        raise GanflowError(f"RANK={rank} must be smaller than WORLD_SIZE={world}")
    if not torch.distributed.is_available():
        raise GanflowError(
            f"WORLD_SIZE={world} asks for {world} processes, but this PyTorch build has no "
            "torch.distributed; run one process (plain `ganflow train`)"
        )
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise GanflowError(f"unknown backend {backend!r}: expected 'gloo' or 'nccl'")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise GanflowError("backend 'nccl' needs CUDA, which is not available here")
        if local >= torch.cuda.device_count():
            raise GanflowError(
                f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPUs: "
                "run at most one process per GPU (--nproc_per_node)"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    elif not torch.distributed.is_gloo_available():
        raise GanflowError("backend 'gloo' is not available in this PyTorch build")
    if dev.type == "cuda" and backend == "gloo" and dev.index is None:
        dev = torch.device("cuda", local)
    if not _initialized():
        kwargs: dict[str, Any] = {"backend": backend}
        if timeout is not None:
            kwargs["timeout"] = timeout
        if backend == "nccl":
            kwargs["device_id"] = dev  # eager NCCL init: errors show at startup
        torch.distributed.init_process_group(**kwargs)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev,
                       backend=torch.distributed.get_backend())


def shutdown() -> None:
    """Destroy the default process group if there is one (idempotent)."""
    if _initialized():
        torch.distributed.destroy_process_group()


@contextmanager
def distributed_session(
    device: str | torch.device = "cpu", *, backend: str | None = None,
    timeout: datetime.timedelta | None = None,
) -> Iterator[DistContext]:
    r"""``with distributed_session(cfg.device) as ctx:`` - :func:`setup_from_env`, and
    ``destroy_process_group`` when the block ends, normally or by an exception (which
    propagates, so the process exits non-zero and ``torchrun`` stops the other ranks)."""
    ctx = setup_from_env(device, backend=backend, timeout=timeout)
    try:
        yield ctx
    except BaseException:
        # no barrier: the other ranks may never get here (torchrun stops them)
        try:
            shutdown()
        except Exception:  # never hide the block's own exception behind a teardown one
            pass
        raise
    # Normal end: wait for every rank before tearing down, so that no rank destroys its
    # gloo connections while a peer is still using them (seen once in ~45 launches
    # without this barrier: a rank aborted at exit with "terminate called without an
    # active exception").
    try:
        ctx.barrier()
    finally:
        shutdown()


@contextmanager
def interrupt_flag(
    grace_s: float = 2.0, signals: Sequence[int] = (signal.SIGINT,),
) -> Iterator[threading.Event]:
    r"""An event set by Ctrl-C (``signals``), for a loop that stops between iterations.

    A second signal within ``grace_s`` seconds of the first only sets the event again:
    under ``torchrun`` every rank gets the terminal's SIGINT and then the agent's
    forwarded one. A signal after that raises :class:`KeyboardInterrupt` (the user
    insists). Outside the main thread nothing is installed (the event never fires).
    Old handlers are restored on exit. Use with :meth:`DistContext.any_flag`::

        with interrupt_flag() as stop:
            while ...:
                if ctx.any_flag(stop.is_set()):
                    break  # every rank breaks at the same iteration
    """
    event = threading.Event()
    first: list[float] = []

    def handler(signum: int, frame: Any) -> None:
        now = time.monotonic()
        if first and now - first[0] > grace_s:
            raise KeyboardInterrupt
        if not first:
            first.append(now)
        event.set()

    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            old[sig] = signal.signal(sig, handler)
    try:
        yield event
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


# ------------------------------------------------------------------ gradient averaging
@dataclass
class _HookStats:
    """Time spent in the gradient all-reduce (for benchmarks): calls and seconds."""

    calls: int = 0
    seconds: float = 0.0


def _grad_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    # every parameter the optimizer owns, in its own (deterministic, rank-independent)
    # order; duplicates across groups would be reduced twice, so keep the first
    seen: set[int] = set()
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _average_grads(params: Sequence[torch.Tensor], world: int, flatten: bool) -> None:
    r"""Replace each ``p.grad`` by its mean over the ranks (SUM, then / world).

    A parameter without a gradient on some rank counts as a zero gradient there (DDP's
    rule for unused parameters); one without a gradient on every rank keeps ``None``, so
    the optimizer skips it as it would in one process. Ranks must agree on which tensors
    are reduced, whatever their local ``.grad`` is, or the collectives would not match:
    hence zeros for missing gradients and a per-parameter presence count on the wire."""
    # one bucket per dtype and device (a collective moves one dtype), in parameter order
    buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in params:
        buckets.setdefault((p.dtype, p.device), []).append(p)
    for (dtype, dev), ps in buckets.items():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
        present = torch.tensor([0.0 if p.grad is None else 1.0 for p in ps], dtype=dtype,
                               device=dev)
        if flatten:
            flat = torch.cat([g.reshape(-1) for g in grads] + [present])
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            flat.div_(world)
            outs = list(torch.split(flat, [g.numel() for g in grads] + [len(ps)]))
            count = outs.pop()
        else:
            for g in grads:
                torch.distributed.all_reduce(g, op=torch.distributed.ReduceOp.SUM)
            torch.distributed.all_reduce(present, op=torch.distributed.ReduceOp.SUM)
            outs = [g.div_(world) for g in grads]
            count = present
        for p, g, c in zip(ps, outs, count.tolist(), strict=True):
            if c == 0:
                p.grad = None  # no rank had a gradient: leave the parameter alone
            elif flatten:
                p.grad = g.view_as(p).clone() if p.grad is None else p.grad.copy_(g.view_as(p))
            else:
                p.grad = g


def attach(
    optimizer: torch.optim.Optimizer, ctx: DistContext | None = None, *, flatten: bool = True,
) -> torch.utils.hooks.RemovableHandle | None:
    r"""Average the gradients of ``optimizer``'s parameters over the ranks before each step.

    Registers a ``register_step_pre_hook`` that all-reduces (mean) every parameter's
    ``.grad`` right before every ``optimizer.step()``, so :func:`ganflow.algorithm.
    algorithm_step` runs unchanged: each of D's calibration steps and each of G's K fit
    steps uses the gradient of the batch-mean loss on the union of the ranks' batches.
    Every rank must therefore call ``step()`` the same number of times (see
    :func:`check_supported`).

    Args:
        ctx: the run's context (default: :func:`setup_from_env` of the environment).
        flatten: one all-reduce per step on a flat buffer of all gradients (default)
            rather than one per parameter tensor. Numerically the same (an elementwise
            sum); fewer, larger messages pay the per-message latency once per step
            instead of once per tensor (benchmarks/README.md, ``bench_distributed.py``).

    Returns the hook's handle (``.remove()`` detaches it), or None when single-process
    (nothing is registered). ``handle.stats`` counts the calls and the seconds spent.
    """
    ctx = ctx if ctx is not None else setup_from_env()
    if not ctx.distributed:
        return None
    params = _grad_params(optimizer)
    world = ctx.world_size
    stats = _HookStats()

    def hook(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        t0 = time.perf_counter()
        _average_grads(params, world, flatten)
        stats.calls += 1
        stats.seconds += time.perf_counter() - t0

    handle = optimizer.register_step_pre_hook(hook)
    handle.stats = stats  # type: ignore[attr-defined]
    return handle


# ------------------------------------------------------------------ what is supported
def check_supported(cfg: Any, ctx: DistContext) -> None:
    r"""Raise :class:`GanflowError` if ``cfg`` (a TrainConfig or StepConfig) cannot run on
    ``ctx.world_size`` > 1 processes; nothing is checked for one process.

    Rejected: ``faithful`` (rank-local stopping criteria could give ranks different
    numbers of optimizer steps, and the all-reduce of the one with more would wait
    forever) and ``fit_solver="gauss-newton"`` (it updates G without the optimizer, so
    the update would not be averaged and the ranks' generators would drift apart)."""
    if ctx.world_size <= 1:
        return
    if getattr(cfg, "faithful", False):
        raise GanflowError(
            f"faithful mode is single-process for now: its calibration and fit stop on "
            f"each rank's own batch, so the {ctx.world_size} ranks could take different "
            "numbers of steps and deadlock; run it without torchrun (one process), or "
            "drop --faithful"
        )
    if getattr(cfg, "fit_solver", "optimizer") == "gauss-newton":
        raise GanflowError(
            f"fit_solver 'gauss-newton' is single-process for now (world size "
            f"{ctx.world_size}): it moves G without the optimizer, so its update is not "
            "averaged over ranks; expected fit_solver 'optimizer'"
        )
