r"""Worker of tests/test_distributed.py, run by ``torchrun`` (one copy per rank).

Modes:

* ``equiv``: a few :func:`ganflow.algorithm.algorithm_step` s (SGD) for each case of
  :data:`CASES` with rank-seeded batches and :func:`ganflow.training.distributed.attach`, then
  the same D trained by ``DistributedDataParallel`` and by the hook side by side; every
  rank writes its final parameters to ``OUT/rank<r>.pt``. ``--fail-rank R --fail-after S``
  makes rank R raise after its S-th step (the others carry on into a collective).
* ``interrupt``: train until Ctrl-C (after creating ``OUT/ready<r>``), stop every rank at
  the same iteration (:func:`ganflow.training.distributed.interrupt_flag` +
  :meth:`~ganflow.training.distributed.DistContext.any_flag`), checkpoint every rank's generator
  state to ``OUT/ckpt.pt`` and write the iteration to ``OUT/stopped<r>``.
* ``bench``: iterations/s of the default configuration (Adam, batch 512, 3 x 128 MLPs)
  and the seconds spent in the gradient all-reduce; rank 0 prints one JSON line. Also runs
  as a plain ``python`` process (world size 1) for the baseline.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ganflow._errors import GanflowError
from ganflow.algorithm import StepConfig, algorithm_step, discriminator_drift
from ganflow.networks import make_discriminator, make_generator
from ganflow.particle_flow import particle_step
from ganflow.training.distributed import (
    distributed_session,
    exit_process,
    interrupt_flag,
    rank_seed,
)
from ganflow.training.grad_sync import attach

# (name, method, d_steps, fit_steps): K > 1 and several D steps check that the hook
# averages every optimizer step, not one per iteration
CASES = (("flow", "flow", 1, 1), ("gan-ns", "gan-ns", 1, 1), ("flow-k2", "flow", 2, 2))
LATENT = 2
DIM = 2


def draw_data(m: int, gen: torch.Generator) -> torch.Tensor:
    """A rank's data batch: a Gaussian blob away from G's initial outputs."""
    return 0.3 * torch.randn(m, DIM, generator=gen) + 1.0


def draw_latent(m: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(m, LATENT, generator=gen)


def build(seed: int, width: int, depth: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D initialised from ``seed`` (as the trainer does: same nets on every rank)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = make_generator(LATENT, DIM, width=width, depth=depth)
        D = make_discriminator(DIM, width=width, depth=depth)
    return G, D


def step_config(method: str, d_steps: int, fit_steps: int, batch: int) -> StepConfig:
    return StepConfig(method=method, divergence="jsd", eps=1.0, fit_steps=fit_steps,
                      pairing="index", d_steps=d_steps, batch_size=batch)


def _equiv(args, ctx) -> None:
    out: dict[str, dict[str, torch.Tensor]] = {}
    step = 0
    for name, method, d_steps, fit_steps in CASES:
        G, D = build(args.seed, args.width, args.depth)
        opt_g = torch.optim.SGD(G.parameters(), lr=args.lr)
        opt_d = torch.optim.SGD(D.parameters(), lr=args.lr)
        attach(opt_g, ctx)
        attach(opt_d, ctx)
        gen = torch.Generator().manual_seed(rank_seed(args.seed, ctx.rank))
        cfg = step_config(method, d_steps, fit_steps, args.batch)
        for _ in range(args.steps):
            algorithm_step(G, D, opt_g, opt_d, lambda m, g=gen: draw_data(m, g),
                           lambda m, g=gen: draw_latent(m, g), cfg)
            step += 1
            if ctx.rank == args.fail_rank and step == args.fail_after:
                raise RuntimeError(f"rank {ctx.rank} fails on purpose after step {step}")
        for net_name, net in (("G", G), ("D", D)):
            for k, v in net.state_dict().items():
                out.setdefault(name, {})[f"{net_name}.{k}"] = v.detach().clone()
    out["particles"] = _particles(args, ctx)
    # replicas that parted (rank 1's copy off by 0.5) are reset to rank 0's, once
    t = torch.arange(4.0) + (0.5 if ctx.rank == 1 else 0.0)
    changed = [ctx.sync_replicas(t), ctx.sync_replicas(t)]
    out["sync"] = {"t": t, "changed": torch.tensor(changed)}
    try:  # a function that is not row-wise is refused on every rank, before any gather
        ctx.map_rows(lambda rows: rows[:1], torch.zeros(4, 2))
        out["sync"]["refused"] = torch.tensor(False)
    except GanflowError:
        out["sync"]["refused"] = torch.tensor(True)
    out["ddp"] = _ddp_vs_hook(args, ctx)
    out["missing"] = _missing_grads(ctx)
    out["resume"] = _resume_check(args, ctx)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.save(out, Path(args.out) / f"rank{ctx.rank}.pt")


PARTICLES = 65  # odd: the ranks' shares of the drift differ in size (33 and 32 rows)


def initial_particles(seed: int) -> torch.Tensor:
    """The same particles on every rank (as the trainer starts them: one seed for all)."""
    return torch.randn(PARTICLES, DIM, generator=torch.Generator().manual_seed(seed + 11))


def _particles(args, ctx) -> dict[str, torch.Tensor]:
    r"""Particle steps as the trainer's particle methods take them under torchrun: D
    calibrated on each rank's own data batch and pick of particles (gradients averaged),
    the drift computed at each rank's share of the particles and gathered
    (:meth:`DistContext.map_rows`). Returns D's parameters and the particles."""
    _, D = build(args.seed, args.width, args.depth)
    opt_d = torch.optim.SGD(D.parameters(), lr=args.lr)
    attach(opt_d, ctx)
    gen = torch.Generator().manual_seed(rank_seed(args.seed, ctx.rank))
    x = initial_particles(args.seed)
    cfg = step_config("flow", 1, 1, args.batch)
    for _ in range(args.steps):
        particle_step(D, opt_d, x, lambda m: draw_data(m, gen),
                      lambda m: torch.randint(0, PARTICLES, (m,), generator=gen), cfg,
                      drift_fn=lambda p: ctx.map_rows(
                          lambda rows: discriminator_drift(D, rows, divergence="jsd"), p))
    return {"particles": x.clone(), **{f"D.{k}": v.detach().clone()
                                       for k, v in D.state_dict().items()}}


def _ddp_vs_hook(args, ctx) -> dict[str, torch.Tensor]:
    r"""D trained on the logistic loss by DDP and, from the same start on the same
    batches, by SGD + :func:`attach`; returns both final parameter sets."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    _, D_ddp = build(args.seed, args.width, args.depth)
    _, D_hook = build(args.seed, args.width, args.depth)
    ddp = DDP(D_ddp) if ctx.distributed else D_ddp
    opt_ddp = torch.optim.SGD(D_ddp.parameters(), lr=args.lr)
    opt_hook = torch.optim.SGD(D_hook.parameters(), lr=args.lr)
    attach(opt_hook, ctx)
    gen = torch.Generator().manual_seed(rank_seed(args.seed + 7, ctx.rank))
    m = args.batch
    for _ in range(args.steps):
        x = draw_data(m, gen)
        y = draw_latent(m, gen)  # stand-in for generated points
        for net, opt in ((ddp, opt_ddp), (D_hook, opt_hook)):
            opt.zero_grad(set_to_none=True)
            f = net(torch.cat([x, y]))  # one forward per backward, as DDP expects
            loss = F.softplus(-f[:m]).mean() + F.softplus(f[m:]).mean()
            loss.backward()
            opt.step()
    out = {f"ddp.{k}": v.detach().clone() for k, v in D_ddp.state_dict().items()}
    out.update({f"hook.{k}": v.detach().clone() for k, v in D_hook.state_dict().items()})
    return out


def _missing_grads(ctx) -> dict[str, torch.Tensor]:
    r"""Gradients after the hook when ranks disagree on which parameters have one:
    ``a`` has a gradient (rank + 1) on every rank, ``b`` (value 4) only on rank 0,
    ``c`` on none. Returns the averaged gradients (``c`` absent when left None)."""
    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    opt = torch.optim.SGD([{"params": [a, b]}, {"params": [c]}], lr=0.0)
    attach(opt, ctx)
    a.grad = torch.full((3,), float(ctx.rank + 1))
    if ctx.rank == 0:
        b.grad = torch.full((3,), 4.0)
    opt.step()
    return {k: p.grad.clone() for k, p in (("a", a), ("b", b), ("c", c)) if p.grad is not None}


class _Run:
    """What a trainer holds: nets, Adam optimizers with the hook, the rank's generator."""

    def __init__(self, args, ctx, seed: int) -> None:
        self.ctx = ctx
        self.G, self.D = build(seed, args.width, args.depth)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=1e-2, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=1e-2, betas=(0.5, 0.999))
        attach(self.opt_g, ctx)
        attach(self.opt_d, ctx)
        self.gen = torch.Generator().manual_seed(rank_seed(seed, ctx.rank))
        self.cfg = step_config("flow", 1, 1, args.batch)
        self.step = 0

    def advance(self) -> None:
        algorithm_step(self.G, self.D, self.opt_g, self.opt_d,
                       lambda m: draw_data(m, self.gen), lambda m: draw_latent(m, self.gen),
                       self.cfg)
        self.step += 1

    def save(self, path: Path) -> None:
        # every rank's generator state goes to rank 0 (a collective: all ranks call it)
        states = self.ctx.gather_objects(self.gen.get_state())
        if self.ctx.is_main:
            torch.save({"G": self.G.state_dict(), "D": self.D.state_dict(),
                        "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                        "rng": states, "step": self.step,
                        "world_size": self.ctx.world_size}, path)
        self.ctx.barrier()  # the file exists before any rank reads it

    def load(self, path: Path) -> None:
        ck = torch.load(path)
        assert ck["world_size"] == self.ctx.world_size
        self.G.load_state_dict(ck["G"])
        self.D.load_state_dict(ck["D"])
        self.opt_g.load_state_dict(ck["opt_g"])
        self.opt_d.load_state_dict(ck["opt_d"])
        self.gen.set_state(ck["rng"][self.ctx.rank])
        self.ctx.broadcast_module(self.G)
        self.ctx.broadcast_module(self.D)
        self.step = ck["step"]

    def params(self) -> dict[str, torch.Tensor]:
        return {f"{n}.{k}": v.detach().clone()
                for n, net in (("G", self.G), ("D", self.D)) for k, v in net.state_dict().items()}


def _resume_check(args, ctx, total: int = 6, stop: int = 3) -> dict:
    r"""A run of ``total`` iterations straight, and one that rank 1 alone asks to stop
    after ``stop`` (a Ctrl-C only it saw), checkpoints, and resumes in fresh objects
    (built from another seed, so everything must come from the file)."""
    straight = _Run(args, ctx, args.seed)
    for _ in range(total):
        straight.advance()
    run = _Run(args, ctx, args.seed)
    while run.step < total:
        if ctx.any_flag(ctx.rank == 1 and run.step == stop):
            break
        run.advance()
    stopped_at = run.step
    path = Path(args.out) / "ckpt.pt"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    run.save(path)
    resumed = _Run(args, ctx, args.seed + 100)
    resumed.load(path)
    while resumed.step < total:
        resumed.advance()
    return {"straight": straight.params(), "resumed": resumed.params(),
            "stopped_at": stopped_at}


def _interrupt(args, ctx) -> None:
    """Train until Ctrl-C, then stop together, checkpoint and exit normally."""
    run = _Run(args, ctx, args.seed)
    out = Path(args.out)
    with interrupt_flag(grace_s=10.0) as flag:  # generous: a loaded CI machine
        while run.step < args.steps:
            if ctx.any_flag(flag.is_set()):
                break
            run.advance()
            if run.step == 1:
                (out / f"ready{ctx.rank}").touch()
        run.save(out / "ckpt.pt")
    (out / f"stopped{ctx.rank}").write_text(str(run.step))


def _bench(args, ctx) -> None:
    G, D = build(args.seed, args.width, args.depth)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
    handles = [attach(opt_g, ctx, flatten=not args.no_flatten),
               attach(opt_d, ctx, flatten=not args.no_flatten)]
    gen = torch.Generator().manual_seed(rank_seed(args.seed, ctx.rank))
    cfg = step_config("flow", 1, 1, args.batch)

    def run(n: int) -> None:
        for _ in range(n):
            algorithm_step(G, D, opt_g, opt_d, lambda m: draw_data(m, gen),
                           lambda m: draw_latent(m, gen), cfg)

    run(args.warmup)
    for h in handles:
        if h is not None:
            h.stats.calls, h.stats.seconds = 0, 0.0
    ctx.barrier()
    t0 = time.perf_counter()
    run(args.steps)
    ctx.barrier()
    wall = time.perf_counter() - t0
    comm = sum(h.stats.seconds for h in handles if h is not None)
    calls = sum(h.stats.calls for h in handles if h is not None)
    comm = ctx.all_reduce_mean(comm)
    if ctx.is_main:
        print(json.dumps({
            "world_size": ctx.world_size, "batch_per_rank": args.batch,
            "effective_batch": args.batch * ctx.world_size, "flatten": not args.no_flatten,
            "it_per_s": round(args.steps / wall, 2),
            "allreduce_ms_per_step": round(1e3 * comm / args.steps, 3),
            "allreduce_calls_per_step": calls / args.steps,
        }), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("equiv", "bench", "interrupt"), default="equiv")
    p.add_argument("--out", default="dist-out")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-after", type=int, default=-1)
    p.add_argument("--no-flatten", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with distributed_session("cpu") as ctx:
        {"equiv": _equiv, "bench": _bench, "interrupt": _interrupt}[args.mode](args, ctx)


if __name__ == "__main__":
    main()
    exit_process(0)  # a rank must not run interpreter finalization (its docstring says why)
