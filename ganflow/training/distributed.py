r"""Data-parallel training through ``torch.distributed``: one process per rank,
launched by ``torchrun`` (``torchrun --standalone --nproc_per_node=2 -m ganflow train
...``); nothing here starts or supervises processes.

:func:`setup_from_env` reads torchrun's ``RANK``, ``WORLD_SIZE``, ... and joins the process
group (``nccl`` for CUDA, else ``gloo``); without them it returns a one-process context
whose every method is a no-op, so the training loop calls this layer unconditionally.
Every rank holds the same G and D and draws its own batches (:func:`rank_seed`); a
pre-hook on every ``optimizer.step()`` (:func:`ganflow.training.grad_sync.attach`)
replaces each gradient by its mean over the ranks, so an iteration is one with the
effective batch N x m. Rank-local stop reasons (Ctrl-C, a NaN) are agreed with
:meth:`DistContext.any_flag` once per iteration, so no rank is left waiting in a
collective. Why this is exact, what is not pooled (assignment and energy pairings act
per rank), and what is single-process
(:func:`check_supported`) is written out in docs/distributed.md.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._errors import GanflowError

__all__ = [
    "STOP_SIGNALS",
    "DistContext",
    "check_supported",
    "distributed_session",
    "exit_process",
    "interrupt_flag",
    "rank_seed",
    "setup_from_env",
    "shutdown",
]


# the signals a training loop treats as Ctrl-C (stop between iterations, checkpoint):
# SIGTERM is how job schedulers, `docker stop` and `kill` ask a process to end
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# set once this process has joined a process group: it must then end by exit_process
_JOINED = False


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

    def row_range(self, n: int) -> tuple[int, int]:
        r"""This rank's share [start, end) of n rows: n split into ``world_size`` contiguous
        blocks whose sizes differ by at most one (rank order). All of them on one process."""
        return _share(n, self.rank, self.world_size)

    def map_rows(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                 ) -> torch.Tensor:
        r"""``fn(x)`` for a row-wise ``fn`` (row i of the result depends on row i of ``x``
        alone), computed in parts: each rank applies ``fn`` to its share of the rows
        (:meth:`row_range`) and every rank gets all of them, in order. Every rank must
        call it with the same ``x`` (e.g. replicated particles); one process computes
        ``fn(x)`` whole."""
        if not self.distributed:
            return fn(x)
        start, end = self.row_range(x.shape[0])
        part = fn(x[start:end])
        if part.shape[0] != end - start:
            raise GanflowError(f"map_rows: fn gave {part.shape[0]} rows for {end - start}; "
                               "expected a row-wise function (one output row per row)")
        return self._gather_rows(part, x.shape[0])

    def sync_replicas(self, *tensors: torch.Tensor) -> bool:
        r"""Make replicated tensors (the same on every rank by construction) equal to rank
        0's if they are not; returns whether they had to be. Every rank must call it.

        Replicas stay equal only while every rank's arithmetic is bitwise the same; a
        nondeterministic kernel (some CUDA ones) or unlike devices could part them
        silently. A float64 checksum per tensor is compared (one small all-gather); only
        on a mismatch are the tensors sent from rank 0."""
        if not self.distributed:
            return False
        sums = [float(t.double().sum()) for t in tensors]
        if all(other == sums for other in self.all_gather_objects(sums)):
            return False
        for t in tensors:
            wire = t.to(self._comm_device())
            torch.distributed.broadcast(wire, src=0)
            t.copy_(wire)
        return True

    def _gather_rows(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's share of an (n, ...) tensor, put together on every rank."""
        rows = [_share(n, r, self.world_size) for r in range(self.world_size)]
        longest = max(end - start for start, end in rows)
        # all_gather needs equal shapes: pad every share to the longest, trim after
        wire = part.new_zeros((longest, *part.shape[1:]), device=self._comm_device())
        wire[:part.shape[0]] = part
        out = [torch.empty_like(wire) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, wire)
        return torch.cat([o[:end - start] for o, (start, end) in zip(out, rows, strict=True)]
                         ).to(part.device)

    def shutdown(self) -> None:
        """Leave the process group (safe to call twice, or when never joined)."""
        shutdown()

    # ------------------------------------------------------------------ helpers
    def _comm_device(self) -> torch.device:
        # NCCL moves only CUDA tensors; gloo only CPU ones (for the ops used here)
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def _object_device(self) -> torch.device | None:
        return self.device if self.backend == "nccl" else None


def _share(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share [start, end) of n rows split over ``world``."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


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
        _mark_joined()
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev,
                       backend=torch.distributed.get_backend())


def _mark_joined() -> None:
    global _JOINED
    _JOINED = True


def exit_process(code: int | str | None) -> None:
    r"""End the process with ``code`` (as ``sys.exit`` would read it); a process that
    joined a process group ends by ``os._exit``, after flushing stdout and stderr.

    Why: gloo's worker threads drop their last reference to a finished collective's work
    object some time after the collective returns, and that object may hold tensors that
    Python created (the pickled objects of ``gather_object``). If the interpreter is
    already finalizing, the thread's attempt to take the GIL for their decref ends the
    thread by a forced unwind through C++, and the process aborts ("terminate called
    without an active exception", SIGABRT) after the work was done and the run saved. A
    backtrace of one such abort showed exactly this (``AsyncBarrierWork`` destroyed in
    ``ProcessGroupGloo::runLoop`` during ``Py_FinalizeEx``); ``destroy_process_group`` does
    not join those threads while the process group is still referenced elsewhere. No
    Python code runs after this call, so skipping finalization loses nothing: every file
    is already written atomically and closed. A process that never joined exits as usual.
    """
    if not _JOINED:
        raise SystemExit(code)
    status = 0 if code is None else code if isinstance(code, int) else 1
    try:
        if not isinstance(code, int | None):  # sys.exit("message"): print it, exit 1
            print(code, file=sys.stderr)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except (OSError, ValueError, AttributeError):  # a closed or absent stream must not
        pass  # turn the exit into a normal one (finalization is what this avoids)
    os._exit(int(status))


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


# ------------------------------------------------------------------ what is supported
def check_supported(cfg: Any, ctx: DistContext) -> None:
    r"""Raise :class:`GanflowError` if ``cfg`` (a TrainConfig or StepConfig) cannot run on
    ``ctx.world_size`` > 1 processes; nothing is checked for one process.

    Rejected: ``faithful`` (rank-local stopping criteria could give ranks different
    numbers of optimizer steps, and the all-reduce of the one with more would wait
    forever), ``fit_solver="gauss-newton"`` (it updates G without the optimizer, so
    the update would not be averaged and the ranks' generators would drift apart) and
    ``distil`` (the particle method's distillation is not synchronised)."""
    if ctx.world_size <= 1:
        return
    if getattr(cfg, "faithful", False):
        raise GanflowError(
            f"faithful mode is single-process for now: its calibration and fit stop on "
            f"each rank's own batch, so the {ctx.world_size} ranks could take different "
            "numbers of steps and deadlock; run it without torchrun (one process), or "
            "drop --faithful"
        )
    if getattr(cfg, "distil", False):
        raise GanflowError(
            f"--distil is single-process for now (world size {ctx.world_size}): the "
            "distillation after the last iteration writes its own files and stops on "
            "Ctrl-C without the ranks agreeing; drop --distil under torchrun, or train the "
            "particles in one process"
        )
    if getattr(cfg, "fit_solver", "optimizer") == "gauss-newton":
        raise GanflowError(
            f"fit_solver 'gauss-newton' is single-process for now (world size "
            f"{ctx.world_size}): it moves G without the optimizer, so its update is not "
            "averaged over ranks; expected fit_solver 'optimizer'"
        )
