r"""The state of one training run (:class:`Session`): networks, optimizers, the seeded
batch stream, the schedules, the counters and the method object.

Reproducibility: networks are initialised from ``seed`` on the CPU; every training batch
is drawn on the CPU from one ``torch.Generator`` (``gen``) whose state is checkpointed;
evaluation uses its own generators, re-seeded at every evaluation, so evaluating (or not)
never changes training. On the CPU, resuming from a checkpoint therefore gives the same
numbers as not stopping. Under ``torchrun`` (:mod:`ganflow.training.distributed`) every
rank holds the same networks, draws its own batches (``rank_seed``) and averages
gradients before every optimizer step.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .._errors import GanflowError
from ..algorithm import StepInfo, calibrate_discriminator
from ..data import Dataset, load_data
from ..generator_init import fit_generator_to_law
from ..networks import (
    make_conv_discriminator,
    make_conv_generator,
    make_discriminator,
    make_generator,
)
from .checkpoint import save_checkpoint
from .config import TrainConfig, parse_device
from .distributed import DistContext, check_supported, rank_seed
from .evaluate import sample_metrics
from .grad_sync import attach
from .methods import Method, get_method

__all__ = ["Session"]


class Session:
    """Everything a run's loop, checkpoints and evaluation work on (module docstring)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, data: Dataset,
                 ctx: DistContext | None = None) -> None:
        cfg = cfg.resolved(data)
        self.cfg, self.run_dir, self.data = cfg, Path(run_dir), data
        device = parse_device(cfg.device)  # validates the option (CUDA present, ...)
        self.ctx = ctx or DistContext(device=device)
        check_supported(cfg, self.ctx)
        method_cls = get_method(cfg.method)
        if self.ctx.world_size > 1 and not method_cls.distributed:
            raise GanflowError(
                f"--method {cfg.method} is single-process for now; run it without torchrun "
                f"(world size {self.ctx.world_size}), on one GPU with --device cuda")
        self.device = self.ctx.device  # cuda:LOCAL_RANK under torchrun with NCCL
        self.G, self.D = (net.to(self.device) for net in self._networks())
        self.opt_g = self._optimizer(self.G, cfg.lr_g, cfg.fit_optimizer or cfg.optimizer)
        self.opt_d = self._optimizer(self.D, cfg.lr_d, cfg.optimizer)
        # average gradients over ranks before every optimizer step (no-op on one process)
        attach(self.opt_g, self.ctx)
        attach(self.opt_d, self.ctx)
        # rank 0 keeps cfg.seed: a one-process run draws what it always drew
        self.gen = torch.Generator().manual_seed(rank_seed(cfg.seed, self.ctx.rank))
        self.step_cfg = cfg.step_config(data.length_scale)
        self.iteration = 0
        self.flow_time = 0.0
        self.seconds = 0.0
        self.last_metrics: dict = {}
        self.recent: list[StepInfo] = []  # step statistics since the last evaluation
        self.init_residual: float | None = None
        self.rng_states: list[torch.Tensor] | None = None  # every rank's, for a checkpoint
        self.method: Method = method_cls(self)

    def _networks(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        cfg, data = self.cfg, self.data
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if data.image_shape is not None:
                # images: small DCGAN-style conv nets on flat (n, C*H*W) vectors;
                # depth and activation are the MLP's and do not apply
                return (make_conv_generator(cfg.latent_dim, data.image_shape, width=cfg.width),
                        make_conv_discriminator(data.image_shape, width=cfg.width))
            return (make_generator(cfg.latent_dim, data.dim, width=cfg.width, depth=cfg.depth,
                                   activation=cfg.activation),
                    make_discriminator(data.dim, width=cfg.width, depth=cfg.depth,
                                       activation=cfg.activation))

    def _optimizer(self, net: torch.nn.Module, lr: float, kind: str) -> torch.optim.Optimizer:
        if kind == "sgd":
            return torch.optim.SGD(net.parameters(), lr=lr)
        return torch.optim.Adam(net.parameters(), lr=lr, betas=(self.cfg.beta1, 0.999))

    # -------------------------------------------------------------- a new run
    def start(self) -> None:
        """A new run's iteration 0: G fitted to the ``init`` law if one is given, the
        method's state, then ``d_warmup`` D steps. Each has its own seed stream, so the
        training batches are the same whatever the start."""
        cfg = self.cfg
        if cfg.init:
            self.init_residual = fit_generator_to_law(
                self.G, self.init_law(), latent_dim=cfg.latent_dim, device=self.device,
                generator=torch.Generator().manual_seed(cfg.seed + 5))
        self.method.start()
        if cfg.d_warmup:
            m = cfg.batch_size
            calibrate_discriminator(self.D, self.opt_d, lambda: self.sample_data(m),
                                    lambda: self.method.fake_batch(m), steps=cfg.d_warmup,
                                    penalty=cfg.d_penalty)

    def init_law(self) -> Dataset:
        """The ``--init`` law, checked against the data's dimension."""
        law = load_data(self.cfg.init)
        if law.dim != self.data.dim:
            raise GanflowError(
                f"--init {self.cfg.init!r} is {law.dim}-dimensional; the data "
                f"{self.data.name!r} is {self.data.dim}-dimensional")
        return law

    # -------------------------------------------------------------- batches
    def sample_data(self, m: int) -> torch.Tensor:
        return self.data.sample(m, self.gen).to(self.device)

    def sample_latent(self, m: int, gen: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(m, self.cfg.latent_dim, generator=gen or self.gen)
        return z.to(self.device)

    def pick(self, n: int, m: int) -> torch.Tensor:
        """m indices in [0, n), with replacement, from the training batch stream."""
        return torch.randint(0, n, (m,), generator=self.gen).to(self.device)

    def set_schedules(self) -> None:
        """The learning rates and eps at this iteration (linear decays over
        ``lr_decay_iters``); flow time advances by the eps actually used."""
        cfg = self.cfg
        frac = min(1.0, self.iteration / max(1, cfg.lr_decay_iters))
        if cfg.eps_decay < 1:
            eps = cfg.eps * (1.0 - (1.0 - cfg.eps_decay) * frac)
            if eps != self.step_cfg.eps:  # rebuilt only when it changes
                self.step_cfg = replace(self.step_cfg, eps=eps)
        if cfg.lr_decay >= 1:
            return
        scale = 1.0 - (1.0 - cfg.lr_decay) * frac
        for opt, lr in ((self.opt_g, cfg.lr_g), (self.opt_d, cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * scale

    # -------------------------------------------------------------- samples
    @property
    def eval_n(self) -> int:
        """Samples per evaluation: ``eval_samples``, at most what the method can draw."""
        cap = self.method.max_draw()
        return self.cfg.eval_samples if cap is None else min(self.cfg.eval_samples, cap)

    def draw(self, n: int, gen: torch.Generator, *, use_generator: bool = False) -> torch.Tensor:
        """n samples of the model (its generator's, or a particle method's particles)."""
        return self.method.draw(n, gen, use_generator=use_generator)

    # -------------------------------------------------------------- collaborators
    def save_checkpoint(self) -> Path:
        return save_checkpoint(self)

    def sample_metrics(self, *, use_generator: bool = False) -> dict:
        return sample_metrics(self, use_generator=use_generator)
