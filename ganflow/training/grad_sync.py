r"""Averaging gradients over torchrun ranks before every optimizer step (:func:`attach`);
docs/distributed.md says why the average of the per-rank gradients is the gradient on the
union batch."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .distributed import DistContext, setup_from_env

__all__ = ["attach"]


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


