r"""The training loop around :func:`ganflow.algorithm.algorithm_step` (DESIGN.md layer 6).

A run folder holds::

    config.json        every option, resolved
    metrics.jsonl      one JSON object per evaluation (iteration, flow_time, seconds,
                       modes, hq, mode_kl for mixtures, energy, w2, and step statistics)
    checkpoints/       state-<iteration>.safetensors (weights, optimizer tensors, RNG)
                       + state-<iteration>.json (everything else) + latest.json (a copy
                       of the newest state-*.json, written last: the commit point; a
                       crash before it leaves the previous state). The two newest are
                       kept; one that does not load is skipped for the older one
                       (:mod:`ganflow._runfolder`)
    samples/           PNG figures (samples over the target, metric curves)
    snapshots/         G-<iteration>.safetensors: the generator at every evaluation
    summary.md         the outcome in a few lines
    .lock              while a writer (train, --resume) runs: its pid and host

Reproducibility: networks are initialised from ``seed`` on the CPU; every training
batch is drawn on the CPU from one ``torch.Generator`` whose state is checkpointed;
evaluation uses its own generators, re-seeded at every evaluation, so evaluating (or
not) never changes training. On the CPU, resuming from a checkpoint therefore gives the
same numbers as not stopping (tests/test_trainer.py).

Flow time: ``eps`` per iteration (docs/theory.md section 5), or in the faithful mode the
sum of the controlled steps actually taken.

``method="particles"`` (:mod:`ganflow.particle_flow`) trains no generator: N
particles, part of every checkpoint, are moved by the calibrated discriminator's drift;
evaluation uses a fixed-seed subsample of ``eval_samples`` of them, and the snapshots
``snapshots/P-<iteration>.safetensors`` hold the first ``min(N, 20000)`` particles (the
particles are exchangeable, so these are a uniform subsample). With ``distil`` a
generator is fitted set-wise to the final particles (``distil.json``), so the run still
gives a sampler.

Image data (``Dataset.image_shape``) get conv nets and the image metrics of
:mod:`ganflow.features` (Frechet distance, class coverage) in every evaluation, and a
sample grid ``samples/grid-<iteration>.png``. Under ``torchrun``
(:mod:`ganflow.distributed`) every rank runs this loop on its own batches with averaged
gradients; rank 0 alone evaluates and writes, and the checkpoint holds every rank's
batch stream (``rng.train``, ``rng.train.<rank>``).
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from . import _runfolder
from ._errors import GanflowError
from ._io import (
    append_line_durable,
    read_jsonl,
    write_bytes_atomic,
    write_json_atomic,
    write_safetensors_atomic,
)
from .algorithm import (
    FIT_SOLVERS,
    METHODS,
    PAIRINGS,
    StepConfig,
    StepInfo,
    algorithm_step,
    calibrate_discriminator,
    check_penalty_and_pairing,
)
from .data import Dataset, load_data
from .distributed import (
    STOP_SIGNALS,
    DistContext,
    attach,
    check_supported,
    distributed_session,
    interrupt_flag,
    rank_seed,
)
from .divergences import get_divergence
from .flow_map import flow_map_step, initial_pairs
from .generator_init import fit_generator_to_law
from .metrics import energy_distance, mode_metrics, w2
from .networks import (
    ACTIVATIONS,
    make_conv_discriminator,
    make_conv_generator,
    make_discriminator,
    make_generator,
)
from .particle_flow import distil_step, particle_step

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "plot_run",
    "resume",
    "sample_run",
    "train",
]

OPTIMIZERS = ("adam", "sgd")
# the generator methods of algorithm.py, the particle method of particle_flow.py and the
# persistent-pairs generator of flow_map.py
TRAIN_METHODS = (*METHODS, "particles", "flow-map")
# methods that keep N particles as state (checkpointed; single-process)
_PARTICLE_METHODS = ("particles", "flow-map")
# particles kept per snapshot: enough for `ganflow track`'s KDE (n = 5000 by default)
# without writing N x d floats at every evaluation
_SNAPSHOT_PARTICLES = 20000


class TrainingDivergedError(RuntimeError):
    """A loss or a parameter became NaN/Inf; the message names the iteration and quantity."""


# TrainConfig fields that are not `ganflow train` options; every other one is the flag
# --field-name, and bad-value messages name the flag
_NOT_OPTIONS = ("eval_samples", "w2_samples", "lr_decay_iters")


def _flag(name: str) -> str:
    return name if name in _NOT_OPTIONS else "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    r"""Every option of a run; the defaults are ``ganflow train``'s.

    The defaults are Algorithm 1 with the JSD, eps = 1, K = 1, index pairing, Adam
    (lr 1e-3, beta1 0.5) for both networks with a linear learning-rate decay to 1 %,
    batch 512, 3 x 128 ReLU MLPs, latent dimension 2 and 10 000 iterations: the paper's
    algorithm as it stands, with the settings that did best on ring8 (all modes, balanced
    weights, across seeds). The comments on the fields below give the reason for each choice;
    the runs behind them and the alternatives that were rejected are in
    docs/history.md.
    """

    data: str = "ring8"
    method: str = "flow"
    divergence: str = "jsd"
    eps: float = 1.0
    # None = by method: 1 and 1 (the paper's Algorithm 1 and the GANs); flow-map 20 and 10,
    # since its generator stays on the flow only if D is calibrated and the fit accurate
    # at every step (benchmarks/README.md, "flow-map")
    fit_steps: int | None = None
    pairing: str = "index"
    d_steps: int | None = None
    # D steps before the first move (None = by method: flow-map 500, else 0): the drift
    # at t = 0 needs a calibrated D as much as any later one
    d_warmup: int | None = None
    # gamma of an R1 penalty (gamma/2) E_data |grad f|^2 on D; 0 = off (the paper). On
    # ring8 with SGD it stops the collapse and the runaway (benchmarks/bench_divergence.py)
    d_penalty: float = 0.0
    # 512 rather than 256: a larger batch estimates the mode weights, which the flow
    # must balance, better
    batch_size: int = 512
    lr_g: float = 1e-3
    lr_d: float = 1e-3
    optimizer: str = "adam"
    beta1: float = 0.5
    # final learning rate / initial one (linear over lr_decay_iters): ring8's modes are
    # 0.02 wide, and only a decaying step lets Adam's jitter fall below that
    lr_decay: float = 0.01
    lr_decay_iters: int = 0  # 0: the run's --iterations when the run is created
    # final eps / initial eps (linear over lr_decay_iters, as the learning rates). For
    # particles this anneals the moves, as a decaying lr anneals a generator's Adam steps
    # (Adam moves G by about lr whatever eps is, so a generator run hardly notices it)
    eps_decay: float = 1.0
    # None = chosen by the data when the run is created (stored resolved in config.json):
    # width 128 (MLP) or 32 (conv channels, image data); latent dimension 2 for d <= 2,
    # 16 for images, else d; 10 000 iterations, or 3000 for images (a digits run then
    # takes minutes on 2 cores)
    width: int | None = None
    depth: int = 3
    latent_dim: int | None = None
    activation: str = "relu"
    seed: int = 0
    device: str = "cpu"
    iterations: int | None = None
    eval_every: int = 1000
    eval_samples: int = 2500
    w2_samples: int = 1000
    faithful: bool = False
    cfl: float = 0.5
    calib_tol: float = 1e-3
    calib_max_steps: int = 20
    fit_tol: float = 0.1
    fit_max_steps: int = 20
    # faithful only: the CFL step is set by this quantile of |drift| (1 = the max), so a
    # few fast points cannot freeze flow time; the fit is by the optimizer above
    # ("gauss-newton": a scale-aware least-squares solve; it fits the batch but, once G
    # sits on narrow modes, no better on fresh z and at several times the cost: see
    # algorithm.py's docstring, and benchmarks/README.md for the runs)
    step_quantile: float = 0.9
    fit_solver: str = "optimizer"
    # the law every method starts from: "" = the untrained generator's (particles: N(0, I_d)
    # unless particle_init says otherwise), else a --data spec of the data's dimension that
    # the generator is fitted to before iteration 0 (ganflow.generator_init)
    init: str = ""
    # methods "particles" and "flow-map": N particles (flow-map: N latent-particle pairs);
    # "particles" only: their start ("" = N(0, I_d), the latent law in data space, or the
    # --init law; "generator" = the law of the untrained generator of the same seed; else
    # any --data spec of the same dimension), and the optional set-wise distillation of
    # the final particles into a generator
    particles: int = 10000
    particle_init: str = ""
    distil: bool = False
    distil_iterations: int = 2000

    def __post_init__(self) -> None:
        if self.method not in TRAIN_METHODS:
            raise GanflowError(
                f"unknown --method {self.method!r}: expected one of {list(TRAIN_METHODS)}")
        if self.pairing not in PAIRINGS:
            raise GanflowError(
                f"unknown --pairing {self.pairing!r}: expected one of {list(PAIRINGS)}"
            )
        check_penalty_and_pairing(self.d_penalty, self.pairing, self.faithful)
        if self.optimizer not in OPTIMIZERS:
            raise GanflowError(
                f"unknown --optimizer {self.optimizer!r}: expected one of {list(OPTIMIZERS)}"
            )
        if self.activation not in ACTIVATIONS:
            raise GanflowError(
                f"unknown --activation {self.activation!r}: expected one of {sorted(ACTIVATIONS)}"
            )
        if self.fit_solver not in FIT_SOLVERS:
            raise GanflowError(
                f"unknown --fit-solver {self.fit_solver!r}: expected one of {list(FIT_SOLVERS)}"
            )
        if not (0 < self.step_quantile <= 1):
            raise GanflowError(f"--step-quantile must be in (0, 1], got {self.step_quantile!r}")
        get_divergence(self.divergence)
        for name in ("lr_g", "lr_d", "eps", "cfl", "fit_tol", "calib_tol"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise GanflowError(f"{_flag(name)} must be a positive finite number, got {v!r}")
        for name in ("lr_decay", "eps_decay"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0 < v <= 1):
                raise GanflowError(f"{_flag(name)} must be in (0, 1], got {v!r}")
        if not (0 <= self.beta1 < 1):
            raise GanflowError(f"--beta1 must be in [0, 1), got {self.beta1!r}")
        for name in ("width", "latent_dim", "iterations", "fit_steps", "d_steps"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise GanflowError(f"{_flag(name)} must be a positive integer, got {v!r}")
        if self.d_warmup is not None and (not isinstance(self.d_warmup, int)
                                          or isinstance(self.d_warmup, bool) or self.d_warmup < 0):
            raise GanflowError(f"--d-warmup must be an integer >= 0, got {self.d_warmup!r}")
        for name in ("batch_size", "eval_every", "eval_samples",
                     "w2_samples",
                     "calib_max_steps", "fit_max_steps", "particles", "distil_iterations"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise GanflowError(f"{_flag(name)} must be a positive integer, got {v!r}")
        if self.depth < 0:
            raise GanflowError(f"--depth must be an integer >= 0, got {self.depth!r}")
        if self.lr_decay_iters < 0:
            raise GanflowError(f"lr_decay_iters must be >= 0, got {self.lr_decay_iters!r}")
        if self.eval_samples < 2 or self.w2_samples < 2:
            raise GanflowError("eval_samples and w2_samples must be at least 2")
        if self.method in _PARTICLE_METHODS and self.particles < 2:
            raise GanflowError(f"--particles must be at least 2, got {self.particles!r}")
        if self.distil and self.method != "particles":
            raise GanflowError(
                f"--distil fits a generator to particles: it needs --method particles, "
                f"not {self.method!r}")
        if self.method == "flow-map" and self.divergence == "chi2":
            raise GanflowError(
                "--method flow-map refuses --divergence chi2: its drift 2 e^(-f) grad f is "
                "unbounded where D -> 1 (on ring8 Algorithm 1 blew up with it in 3 of 3 seeds), "
                "and every particle is moved by it; use kl (the fastest stable flow), jsd or ns")
        _parse_device(self.device)

    def resolved(self, data: Dataset) -> TrainConfig:
        """This config with the data-dependent defaults (``None`` fields) filled in."""
        image = data.image_shape is not None
        flow_map = self.method == "flow-map"
        auto = {
            "d_steps": 20 if flow_map else 1,
            "fit_steps": 10 if flow_map else 1,
            "d_warmup": 500 if flow_map else 0,
            "width": 32 if image else 128,
            "latent_dim": 16 if image else (2 if data.dim <= 2 else data.dim),
            "iterations": 3000 if image else 10000,
        }
        fill = {k: v for k, v in auto.items() if getattr(self, k) is None}
        if self.lr_decay_iters == 0:
            fill["lr_decay_iters"] = fill.get("iterations", self.iterations)
        return TrainConfig.from_dict({**asdict(self), **fill}) if fill else self

    def step_config(self, length_scale: float) -> StepConfig:
        keys = {f.name for f in fields(StepConfig)} - {"length_scale", "method"}
        # the particle and flow-map steps use the flow's D, drift and step control
        method = "flow" if self.method in _PARTICLE_METHODS else self.method
        return StepConfig(length_scale=length_scale, method=method,
                          **{k: getattr(self, k) for k in keys})

    @classmethod
    def from_dict(cls, obj: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(obj) - known
        if unknown:
            raise GanflowError(
                f"unknown config keys {sorted(unknown)}; expected some of {sorted(known)}"
            )
        return cls(**obj)


def _parse_device(text: str) -> torch.device:
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise GanflowError(f"unknown --device {text!r}: expected cpu, cuda, cuda:N, mps"
                           ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GanflowError(f"--device {text!r} asked for, but CUDA is not available here; "
                           "use --device cpu")
    return dev


@dataclass
class TrainResult:
    """Where a run ended: its folder, status and last evaluation."""

    run_dir: Path
    status: str  # "finished", "interrupted" or "diverged"
    iteration: int
    flow_time: float
    seconds: float
    metrics: dict = field(default_factory=dict)


# ------------------------------------------------------------------------ the trainer
class _Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, data: Dataset,
                 ctx: DistContext | None = None) -> None:
        cfg = cfg.resolved(data)
        self.cfg, self.run_dir, self.data = cfg, run_dir, data
        # one process unless torchrun started several (ganflow.distributed): then every
        # rank holds the same nets, draws its own batches, and gradients are averaged
        device = _parse_device(cfg.device)  # validates the option (CUDA present, ...)
        self.ctx = ctx or DistContext(device=device)
        check_supported(cfg, self.ctx)
        if self.ctx.world_size > 1 and cfg.method in _PARTICLE_METHODS:
            raise GanflowError(
                f"--method {cfg.method} is single-process for now: each rank would hold its "
                f"own particles, whose moves need D's drift at all of them; run it without "
                f"torchrun (world size {self.ctx.world_size}), on one GPU with --device cuda")
        self.device = self.ctx.device  # cuda:LOCAL_RANK under torchrun with NCCL
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if data.image_shape is not None:
                # images: small DCGAN-style conv nets on flat (n, C*H*W) vectors;
                # depth and activation are the MLP's and do not apply
                G = make_conv_generator(cfg.latent_dim, data.image_shape, width=cfg.width)
                D = make_conv_discriminator(data.image_shape, width=cfg.width)
            else:
                G = make_generator(cfg.latent_dim, data.dim, width=cfg.width, depth=cfg.depth,
                                   activation=cfg.activation)
                D = make_discriminator(data.dim, width=cfg.width, depth=cfg.depth,
                                       activation=cfg.activation)
        self.G, self.D = G.to(self.device), D.to(self.device)
        self.opt_g = self._optimizer(self.G, cfg.lr_g)
        self.opt_d = self._optimizer(self.D, cfg.lr_d)
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
        self.recent: list[StepInfo] = []
        # particles (method particles) or the x_i of the pairs (flow-map), and the pairs' z_i;
        # set by start() for a new run, by load_checkpoint() for a saved one
        self.particles: torch.Tensor | None = None
        self.latents: torch.Tensor | None = None
        self.init_residual: float | None = None
        self.distilled = False
        self._rng_states: list[torch.Tensor] | None = None  # set by _save_all_ranks

    @property
    def samples_are_particles(self) -> bool:
        """True for the particle method: its samples are its particles (no generator)."""
        return self.cfg.method == "particles"

    def start(self) -> None:
        """Set up a new run's iteration 0: G fitted to the ``init`` law if one is given,
        then the particles or pairs. Each has its own seed stream, so the training batches
        are the same whatever the start."""
        cfg = self.cfg
        if cfg.init:
            law = self._init_law()
            self.init_residual = fit_generator_to_law(
                self.G, law, latent_dim=cfg.latent_dim, device=self.device,
                generator=torch.Generator().manual_seed(cfg.seed + 5))
        if cfg.method == "particles":
            self.particles = self._initial_particles().to(self.device)
        elif cfg.method == "flow-map":
            self.latents, self.particles = initial_pairs(
                self.G, cfg.particles, cfg.latent_dim,
                torch.Generator().manual_seed(cfg.seed + 3), device=self.device)
        if cfg.d_warmup:
            m = cfg.batch_size
            if self.particles is not None:
                def fake() -> torch.Tensor:
                    return self.particles[self.pick_particles(m)]
            else:
                def fake() -> torch.Tensor:
                    with torch.no_grad():
                        return self.G(self.sample_latent(m))
            calibrate_discriminator(self.D, self.opt_d, lambda: self.sample_data(m), fake,
                                    steps=cfg.d_warmup, penalty=cfg.d_penalty)

    def _init_law(self) -> Dataset:
        law = load_data(self.cfg.init)
        if law.dim != self.data.dim:
            raise GanflowError(
                f"--init {self.cfg.init!r} is {law.dim}-dimensional; the data "
                f"{self.data.name!r} is {self.data.dim}-dimensional")
        return law

    def _initial_particles(self) -> torch.Tensor:
        cfg, data = self.cfg, self.data
        # its own seed stream: the training batches are the same with or without particles
        gen = torch.Generator().manual_seed(cfg.seed + 3)
        if not cfg.particle_init and cfg.init:
            return self._init_law().sample(cfg.particles, gen).float()
        if not cfg.particle_init:
            return torch.randn(cfg.particles, data.dim, generator=gen)
        if cfg.particle_init == "generator":
            # the law of the untrained generator of the same seed: the start of the
            # generator methods, so particle and generator runs begin identically
            z = torch.randn(cfg.particles, cfg.latent_dim, generator=gen).to(self.device)
            with torch.no_grad():
                return self.G(z).cpu()
        start = load_data(cfg.particle_init)
        if start.dim != data.dim:
            raise GanflowError(
                f"--particle-init {cfg.particle_init!r} is {start.dim}-dimensional; the data "
                f"{data.name!r} is {data.dim}-dimensional")
        return start.sample(cfg.particles, gen)

    def pick_particles(self, m: int) -> torch.Tensor:
        """m particle indices, with replacement, from the training generator."""
        assert self.particles is not None
        return torch.randint(0, self.particles.shape[0], (m,), generator=self.gen).to(
            self.device)

    @property
    def eval_n(self) -> int:
        """Samples per evaluation: ``eval_samples``, at most N for a particle run."""
        n = self.cfg.eval_samples
        return min(n, self.particles.shape[0]) if self.samples_are_particles else n

    @torch.no_grad()
    def draw(self, n: int, gen: torch.Generator, *, use_generator: bool = False) -> torch.Tensor:
        """n samples of the model: G(z), or n distinct particles (fixed by ``gen``)."""
        if not self.samples_are_particles or use_generator:
            return self.G(self.sample_latent(n, gen))
        total = self.particles.shape[0]
        if n > total:
            raise GanflowError(
                f"the run has {total} particles; asked for {n} distinct ones (ask for at "
                "most that many, or train with --distil for a generator)")
        return self._particle_subset(n, gen)

    def _particle_subset(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n distinct particles (n <= N), chosen by ``gen``."""
        idx = torch.randperm(self.particles.shape[0], generator=gen)[:n]
        return self.particles[idx.to(self.device)]

    def _optimizer(self, net: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(net.parameters(), lr=lr)
        return torch.optim.Adam(net.parameters(), lr=lr, betas=(self.cfg.beta1, 0.999))

    # -------------------------------------------------------------- sampling
    def sample_data(self, m: int) -> torch.Tensor:
        return self.data.sample(m, self.gen).to(self.device)

    def sample_latent(self, m: int, gen: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(m, self.cfg.latent_dim, generator=gen or self.gen)
        return z.to(self.device)

    def _set_lr(self) -> None:
        cfg = self.cfg
        frac = min(1.0, self.iteration / max(1, cfg.lr_decay_iters))
        if cfg.eps_decay < 1:
            # the flow step eps follows its own linear schedule (flow time advances by the
            # eps actually used); rebuilt only when it changes
            eps = cfg.eps * (1.0 - (1.0 - cfg.eps_decay) * frac)
            if eps != self.step_cfg.eps:
                self.step_cfg = replace(self.step_cfg, eps=eps)
        if cfg.lr_decay >= 1:
            return
        scale = 1.0 - (1.0 - cfg.lr_decay) * frac
        for opt, lr in ((self.opt_g, cfg.lr_g), (self.opt_d, cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * scale

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def sample_metrics(self, *, use_generator: bool = False) -> dict:
        """Mode metrics, energy and W2 of the model's samples against held-out data."""
        cfg = self.cfg
        n = cfg.eval_samples if use_generator else self.eval_n
        # Fixed latent (or particle subset) and held-out data every time: curves are not
        # jittered by resampling, and evaluation never touches the training generator.
        fake = self.draw(n, torch.Generator().manual_seed(cfg.seed + 1),
                         use_generator=use_generator).double().cpu()
        held = self.data.sample(n, torch.Generator().manual_seed(cfg.seed + 2))
        out: dict = {}
        if self.samples_are_particles and not use_generator:
            out["n_eval"] = n
        if not torch.isfinite(fake).all():
            raise TrainingDivergedError(
                f"generated samples are NaN/Inf at iteration {self.iteration}")
        if self.data.mixture is not None:
            out.update(mode_metrics(fake, self.data.mixture))
        if self.data.image_shape is not None:
            out.update(self._image_metrics(fake))
        out["energy"] = energy_distance(fake, held.double())
        k = min(cfg.w2_samples, n)
        out["w2"] = w2(fake[:k], held[:k].double())
        return out

    def _init_metrics(self) -> dict:
        """The start against the ``init`` law: energy distance of the model's samples to
        fresh draws of it, next to the same distance between two draws (the noise floor)."""
        n = self.eval_n
        law = self._init_law()
        fake = self.draw(n, torch.Generator().manual_seed(self.cfg.seed + 1)).double().cpu()
        a, b = (law.sample(n, torch.Generator().manual_seed(self.cfg.seed + s)).double()
                for s in (6, 7))
        out = {"init_energy": energy_distance(fake, a), "init_energy_floor": energy_distance(b, a)}
        if self.init_residual is not None:
            out["init_fit_mse"] = self.init_residual
        return out

    def _particle_metrics(self) -> dict:
        """Flow-map: the pairs' particles (the flow's state) on a fixed subsample, with the
        prefix ``particles_``: how far the generator is from them shows in the gap."""
        if self.data.mixture is None:
            return {}
        n = min(self.cfg.eval_samples, self.particles.shape[0])
        x = self._particle_subset(n, torch.Generator().manual_seed(self.cfg.seed + 1))
        x = x.double().cpu()
        return {f"particles_{k}": v for k, v in mode_metrics(x, self.data.mixture).items()}

    def _pair_rms(self, n: int = 2500) -> float:
        """RMS |G(z_i) - x_i| over the first n pairs: how far G is from the flow's state."""
        z, x = self.latents[:n], self.particles[:n]
        return float((self.G(z) - x).pow(2).sum(-1).mean().sqrt())

    def _image_metrics(self, fake: torch.Tensor) -> dict:
        # Frechet distance and class coverage in the feature space of ganflow's own
        # classifier (trained once per data set and cached: ganflow.features)
        from .features import image_metrics

        res = image_metrics(fake.float(), self.data, seed=self.cfg.seed)
        # unlabelled images have no class metrics (None): left out of metrics.jsonl
        return {k: res[k] for k in ("frechet_distance", "frechet_distance_floor",
                                    "class_coverage", "class_kl") if res[k] is not None}

    @torch.no_grad()
    def evaluate(self) -> dict:
        out: dict = {"iteration": self.iteration, "flow_time": self.flow_time,
                     "seconds": round(self.seconds, 3)}
        out.update(self.sample_metrics())
        if self.iteration == 0 and self.cfg.init:
            out.update(self._init_metrics())
        if self.latents is not None:
            out["pair_rms"] = self._pair_rms()
            out.update(self._particle_metrics())
        if self.recent:
            for key in ("d_loss", "g_loss", "drift_rms", "drift_max", "fit_ratio"):
                vals = [getattr(s, key) for s in self.recent]
                mean = sum(vals) / len(vals)
                out[key] = mean if math.isfinite(mean) else None
            if self.samples_are_particles:
                del out["g_loss"], out["fit_ratio"]  # no generator is fitted
            out["d_steps"] = sum(s.d_steps for s in self.recent) / len(self.recent)
            out["fit_steps"] = sum(s.fit_steps for s in self.recent) / len(self.recent)
        self.recent = []
        return out

    # -------------------------------------------------------------- checkpoints
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors: dict[str, torch.Tensor] = {}
        meta: dict = {}
        for name, net in (("G", self.G), ("D", self.D)):
            for k, v in net.state_dict().items():
                tensors[f"{name}.{k}"] = v.detach().cpu().contiguous()
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            sd = opt.state_dict()
            scalars: dict = {}
            for idx, st in sd["state"].items():
                for k, v in st.items():
                    if isinstance(v, torch.Tensor):
                        tensors[f"{name}.{idx}.{k}"] = v.detach().cpu().contiguous()
                    else:
                        scalars[f"{idx}.{k}"] = v
            meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars,
                          "indices": sorted(sd["state"])}
        # every rank's batch generator (gathered by run()), so a distributed resume is exact
        states = self._rng_states or [self.gen.get_state()]
        tensors["rng.train"] = states[0]
        for r, st in enumerate(states[1:], start=1):
            tensors[f"rng.train.{r}"] = st
        if self.particles is not None:
            tensors["particles"] = self.particles.detach().cpu().contiguous()
        if self.latents is not None:
            tensors["latents"] = self.latents.detach().cpu().contiguous()
        return tensors, meta

    def save_checkpoint(self) -> Path:
        for name, net in (("G", self.G), ("D", self.D)):
            for pname, p in net.named_parameters():
                if not torch.isfinite(p).all():
                    raise TrainingDivergedError(
                        f"parameter {name}.{pname} is NaN/Inf at iteration {self.iteration}; "
                        "not saved")
        if self.particles is not None and not torch.isfinite(self.particles).all():
            raise TrainingDivergedError(
                f"particles are NaN/Inf at iteration {self.iteration}; not saved")
        ck = self.run_dir / "checkpoints"
        ck.mkdir(parents=True, exist_ok=True)
        tensors, meta = self.state_tensors()
        # weights, then state-<it>.json (this checkpoint's own record, for a
        # fallback when a newer one is damaged), then latest.json (the commit); each is
        # written temp + fsync + rename, so a kill at any moment leaves a loadable state
        fname, sname = _runfolder.checkpoint_files(self.iteration)
        write_safetensors_atomic(ck / fname, tensors)
        state = {"iteration": self.iteration, "flow_time": self.flow_time,
                 "seconds": self.seconds, "weights": fname, "torch": torch.__version__,
                 "distilled": self.distilled, "world_size": self.ctx.world_size,
                 "optimizers": meta, "last_metrics": self.last_metrics,
                 # step statistics since the last evaluation, so that an interrupted and
                 # resumed run logs the same averages as one that never stopped
                 "recent": [{k: (v if math.isfinite(v) else None) for k, v in asdict(s).items()}
                            for s in self.recent]}
        write_json_atomic(ck / sname, state)
        write_json_atomic(ck / "latest.json", state)
        # keep the newest two checkpoints: the one latest.json names, and one before it
        _runfolder.prune_checkpoints(ck, fname)
        return ck / fname

    def load_checkpoint(self, *, resuming: bool = False) -> None:
        # the newest checkpoint that loads: a damaged or mismatched one is reported on
        # stderr and the one before it used; none loading is a GanflowError
        _runfolder.load_newest_checkpoint(
            self.run_dir, lambda state, tensors: self._load_state(state, tensors,
                                                                  resuming=resuming))

    def _load_state(self, state: dict, tensors: dict, *, resuming: bool = False) -> None:
        """Set every part of the trainer from one checkpoint (raises on a mismatch)."""
        for name, net in (("G", self.G), ("D", self.D)):
            sd = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            net.load_state_dict(sd)
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            meta = state["optimizers"][name]
            st: dict = {}
            for idx in meta["indices"]:
                entry = {}
                prefix = f"{name}.{idx}."
                for k, v in tensors.items():
                    if k.startswith(prefix):
                        entry[k[len(prefix):]] = v
                for k, v in meta["scalars"].items():
                    i, key = k.split(".", 1)
                    if int(i) == idx:
                        entry[key] = v
                st[idx] = entry
            opt.load_state_dict({"state": st, "param_groups": meta["param_groups"]})
        saved_world = int(state.get("world_size", 1))
        if resuming and saved_world != self.ctx.world_size:
            raise GanflowError(
                f"run {str(self.run_dir)!r} was trained on {saved_world} process(es); resume "
                f"it with the same number (now {self.ctx.world_size}): each rank's batch "
                "stream is part of the checkpoint")
        key = "rng.train" if self.ctx.rank == 0 else f"rng.train.{self.ctx.rank}"
        self.gen.set_state(tensors[key])
        if "particles" in tensors:
            self.particles = tensors["particles"].to(self.device)
        if "latents" in tensors:
            self.latents = tensors["latents"].to(self.device)
        self.distilled = bool(state.get("distilled", False))
        self.iteration = int(state["iteration"])
        self.flow_time = float(state["flow_time"])
        self.seconds = float(state["seconds"])
        self.last_metrics = state.get("last_metrics") or {}
        self.recent = [StepInfo(**{k: (float("nan") if v is None else v) for k, v in r.items()})
                       for r in state.get("recent", [])]

    # -------------------------------------------------------------- loop
    def run(self, *, progress: bool = True, stop_at: int | None = None) -> TrainResult:
        from tqdm.auto import tqdm

        cfg, ctx = self.cfg, self.ctx
        main = ctx.is_main  # rank 0 alone evaluates and writes; every rank trains
        end = cfg.iterations if stop_at is None else min(stop_at, cfg.iterations)
        metrics_path = self.run_dir / "metrics.jsonl"
        status = "finished"
        t0 = time.perf_counter() - self.seconds
        # Ctrl-C only sets a flag: the loop stops between iterations, so the saved state is
        # never half an update (a repeat within 2 s, as torchrun forwards it, is the same
        # Ctrl-C; a later one gives up at once). SIGTERM (a scheduler, docker stop, kill)
        # is a Ctrl-C too: checkpoint, summary, the resume command
        with interrupt_flag(signals=STOP_SIGNALS) as interrupted:
            bar = tqdm(total=cfg.iterations, initial=self.iteration,
                       disable=not (progress and main), dynamic_ncols=True,
                       desc=f"{cfg.method} {self.data.name}")
            try:
                # decided on rank 0: the ranks must agree on every collective they enter
                if ctx.broadcast_object(self.iteration == 0 and not metrics_path.exists()):
                    self._evaluate_and_save(metrics_path)
                while self.iteration < end:
                    # every rank, every iteration: a Ctrl-C seen by any rank stops all
                    if ctx.any_flag(interrupted.is_set()):
                        status = "interrupted"
                        break
                    self._set_lr()
                    info, checked = self._step()
                    bad = [q for q in checked if not math.isfinite(getattr(info, q))]
                    if ctx.any_flag(bool(bad)):  # all ranks raise together, none hangs
                        what = (f"{bad[0].replace('_', ' ')} is {getattr(info, bad[0])}"
                                if bad else "a loss is NaN/Inf on another rank")
                        raise TrainingDivergedError(f"{what} at iteration {self.iteration + 1}")
                    self.iteration += 1
                    self.flow_time += info.flow_time
                    self.recent.append(info)
                    self.seconds = time.perf_counter() - t0
                    # evaluations at eval_every and the horizon only: a stop_at between
                    # them saves without one (below), so the rows and the step-statistics
                    # window are those of a run that never stopped
                    if self.iteration % cfg.eval_every == 0 or self.iteration == cfg.iterations:
                        self._evaluate_and_save(metrics_path)
                        bar.set_postfix(self._postfix(), refresh=False)
                    elif self.iteration % 50 == 0:
                        bar.set_postfix(self._postfix(), refresh=False)
                    bar.update(1)
                if status == "interrupted":
                    self.seconds = time.perf_counter() - t0
                    self._save_all_ranks()
                elif self.iteration < cfg.iterations:
                    status = "stopped"
                    if self.iteration % cfg.eval_every:  # as Ctrl-C: a checkpoint, no row
                        self.seconds = time.perf_counter() - t0
                        self._save_all_ranks()
                elif cfg.distil and self.particles is not None:
                    bar.close()
                    status = self.distil(interrupted, progress=progress)
            except TrainingDivergedError:
                if main:
                    self._write_summary("diverged")
                raise
            finally:
                bar.close()
        if main:
            self._write_summary(status)
            if status != "stopped":
                try:
                    plot_run(self.run_dir)
                except Exception as exc:  # a figure must never cost the run its results
                    (self.run_dir / "samples").mkdir(exist_ok=True)
                    (self.run_dir / "samples" / "plot-error.txt").write_text(repr(exc))
        return TrainResult(self.run_dir, status, self.iteration, self.flow_time, self.seconds,
                           dict(self.last_metrics))

    def _step(self) -> tuple[StepInfo, tuple[str, ...]]:
        """One iteration of the run's method, and the StepInfo fields that must be finite."""
        if self.cfg.method == "particles":
            self.distilled = False  # the particles move on from any distilled G
            return particle_step(self.D, self.opt_d, self.particles, self.sample_data,
                                 self.pick_particles, self.step_cfg), ("d_loss", "drift_max")
        if self.cfg.method == "flow-map":
            return flow_map_step(self.G, self.D, self.opt_g, self.opt_d, self.latents,
                                 self.particles, self.sample_data, self.pick_particles,
                                 self.step_cfg), ("d_loss", "g_loss", "drift_max")
        return algorithm_step(self.G, self.D, self.opt_g, self.opt_d, self.sample_data,
                              self.sample_latent, self.step_cfg), ("d_loss", "g_loss")

    def _save_all_ranks(self) -> None:
        """Checkpoint on rank 0 with every rank's batch-generator state (a collective:
        every rank calls it at the same iteration)."""
        self._rng_states = self.ctx.gather_objects(self.gen.get_state())
        if self.ctx.is_main:
            self.save_checkpoint()

    def _evaluate_and_save(self, metrics_path: Path) -> None:
        if self.ctx.is_main:
            self._log(metrics_path, self.evaluate())
        else:
            self.recent = []  # rank 0 logs the step statistics (of its own batches)
        self._save_all_ranks()

    def distil(self, interrupted: threading.Event, *, progress: bool = True) -> str:
        """Fit G set-wise to the final particles (``distil_iterations`` steps); writes
        ``distil.json`` with the generator's metrics next to the particles'."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        assert self.particles is not None
        # own seed streams: distilling never changes the particles' training stream
        zgen = torch.Generator().manual_seed(cfg.seed + 4)

        def pick(m: int) -> torch.Tensor:
            return torch.randint(0, self.particles.shape[0], (m,), generator=zgen).to(
                self.device)

        losses: list[float] = []
        t0 = time.perf_counter()
        for k in tqdm(range(cfg.distil_iterations), disable=not progress,
                      dynamic_ncols=True, desc="distil"):
            if interrupted.is_set():
                return "interrupted"  # the particles' checkpoint stands; G is not distilled
            # the same linear learning-rate decay as training, over the distillation
            scale = 1.0 - (1.0 - cfg.lr_decay) * k / cfg.distil_iterations
            for group in self.opt_g.param_groups:
                group["lr"] = cfg.lr_g * scale
            loss = distil_step(self.G, self.opt_g, self.particles,
                               self.sample_latent(cfg.batch_size, zgen), pick)
            if not math.isfinite(loss):
                raise TrainingDivergedError(
                    f"distillation loss is {loss} at distillation step {k + 1}")
            losses.append(loss)
        self.distilled = True
        self.save_checkpoint()
        row = {"iteration": self.iteration, "distil_iterations": cfg.distil_iterations,
               "seconds": round(time.perf_counter() - t0, 3),
               "fit_mse": sum(losses[-50:]) / len(losses[-50:]),
               "generator": self.sample_metrics(use_generator=True),
               "particles": self.sample_metrics()}
        write_json_atomic(self.run_dir / "distil.json", row)
        return "finished"

    def _postfix(self) -> dict:
        out = {"t": f"{self.flow_time:.3g}"}
        for key in ("modes", "hq", "mode_kl", "frechet_distance", "class_coverage", "w2"):
            if key in self.last_metrics:
                v = self.last_metrics[key]
                out[key] = v if isinstance(v, int) else f"{v:.3g}"
        return out

    def _log(self, path: Path, row: dict) -> None:
        # the generator at every evaluation: `ganflow track` compares each with the PDE
        # solution at the same flow time (a few KB for the MLPs; written before the row,
        # so every logged row has its snapshot)
        if self.samples_are_particles:
            snap = self.run_dir / "snapshots" / f"P-{self.iteration:08d}.safetensors"
            tensors = {"particles": self.particles[:_SNAPSHOT_PARTICLES].detach().cpu()
                       .contiguous()}
        else:
            snap = self.run_dir / "snapshots" / f"G-{self.iteration:08d}.safetensors"
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.G.state_dict().items()}
        write_safetensors_atomic(snap, tensors)
        if self.data.image_shape is not None:
            # a sample grid at every evaluation: how the images form over training
            from .run_plots import save_image_grid

            grid = self.draw(min(64, self.cfg.eval_samples),
                             torch.Generator().manual_seed(self.cfg.seed + 1))
            save_image_grid(grid.cpu(), self.data.image_shape,
                            self.run_dir / "samples" / f"grid-{self.iteration:08d}.png")
        self.last_metrics = row
        append_line_durable(path, json.dumps(row))

    def _write_summary(self, status: str) -> None:
        rows = read_metrics(self.run_dir)
        cfg = self.cfg
        lines = [f"# ganflow run: {cfg.method} on {self.data.name}", "",
                 f"- status: **{status}** at iteration {self.iteration} of {cfg.iterations}",
                 f"- flow time: {self.flow_time:.4g}; wall time: {self.seconds:.1f} s "
                 f"on {cfg.device}",
                 f"- method {cfg.method}, divergence {cfg.divergence}, eps {cfg.eps}, "
                 f"K={cfg.fit_steps}, pairing {cfg.pairing}, faithful {cfg.faithful}, "
                 f"seed {cfg.seed}"]
        if cfg.method in ("gan", "gan-ns"):
            lines.append(f"- the {cfg.method} loss does not use the divergence; "
                         f"{cfg.divergence} only names the flow `ganflow track` compares with")
        if cfg.init:
            lines.append(f"- started from --init {cfg.init}")
        if self.latents is not None:
            lines.append(f"- {self.latents.shape[0]} latent-particle pairs; the generator is "
                         "regressed on them (metrics are the generator's)")
        elif self.particles is not None:
            lines.append(f"- {self.particles.shape[0]} particles (no generator), started from "
                         f"{cfg.particle_init or 'N(0, I)'}; metrics on a subsample of "
                         f"{self.eval_n}")
            distil = self.run_dir / "distil.json"
            if self.distilled and distil.exists():
                gm = json.loads(distil.read_text())["generator"]
                lines.append("- distilled generator (set-wise fit, distil.json): " + ", ".join(
                    f"{k} {_fmt(v)}" for k, v in gm.items()))
        lines.append("")
        if rows:
            last = rows[-1]
            lines.append("| " + " | ".join(k for k in last) + " |")
            lines.append("|" + "---|" * len(last))
            lines.append("| " + " | ".join(_fmt(v) for v in last.values()) + " |")
            if self.data.mixture is not None:
                k = self.data.mixture.n_components
                hit = next((r for r in rows if r.get("modes") == k and r.get("hq", 0) >= 0.8
                            and r.get("mode_kl", 1) <= 0.05), None)
                lines += ["", "Quality bar (all modes, HQ >= 80 %, mode-weight KL <= 0.05): "
                          + (f"first met at iteration {hit['iteration']} "
                             f"({hit['seconds']:.1f} s)" if hit else "not met")]
        write_bytes_atomic(self.run_dir / "summary.md", ("\n".join(lines) + "\n").encode())


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ------------------------------------------------------------------------ public API
def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (an empty list if there is none). A torn last line
    (an append cut by a full disk or a kill) is skipped; ``--resume`` rewrites the file
    without it. Every reader of metrics.jsonl goes through here."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return read_jsonl(path)[0]


def _fresh_run_dir(cfg: TrainConfig, data: Dataset) -> Path:
    base = Path("runs") / f"{data.name}-{cfg.method}-s{cfg.seed}"
    path, k = base, 1
    while path.exists():
        path = Path(f"{base}-{k}")
        k += 1
    return path


def train(
    config: TrainConfig | None = None, *, out: str | Path | None = None, progress: bool = True,
    stop_at: int | None = None,
) -> TrainResult:
    r"""Train a new run (Algorithm 1 or a GAN baseline) and return its :class:`TrainResult`.

    ``out`` must not exist or be an empty folder (nothing is ever overwritten); by default
    a fresh ``runs/<data>-<method>-s<seed>[-k]``. ``stop_at`` stops early (as Ctrl-C would,
    with a checkpoint) while keeping ``config.iterations`` as the run's horizon.
    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this and they train one run
    together (:mod:`ganflow.distributed`); rank 0 writes the folder.
    Raises :class:`GanflowError` on bad options or data (before anything is written) and
    :class:`TrainingDivergedError` on NaN/Inf (the last good checkpoint is kept).
    """
    cfg = config or TrainConfig()
    if out is not None:
        _runfolder.check_writable_target(out)  # before loading data (it may be large)
    data = load_data(cfg.data)
    # data files are stored by absolute path: a resume from another folder finds them
    cfg = replace(cfg, **_runfolder.absolute_data_specs(cfg))
    with distributed_session(cfg.device) as ctx:
        # rank 0 names the folder: a default name probes the disk, which must happen once
        run_dir = Path(ctx.broadcast_object(
            str(out) if out is not None else str(_fresh_run_dir(cfg, data))))
        # (a lock or temp file alone is what a train killed before config.json leaves)
        if run_dir.exists() and (not run_dir.is_dir() or _runfolder.has_content(run_dir)):
            # suggest --resume only where it can work: a run folder with a checkpoint
            resumable = (run_dir / "config.json").is_file() and (
                run_dir / "checkpoints").is_dir()
            raise GanflowError(
                f"output folder {str(run_dir)!r} exists and is not empty; choose a new --out"
                + (f", or continue it with --resume {run_dir}" if resumable else "")
            )
        _runfolder.check_writable_target(run_dir)  # before any long work
        trainer = _Trainer(cfg, run_dir, data, ctx)  # builds everything before writing
        trainer.start()
        ctx.barrier()  # every rank has checked the folder before rank 0 creates it
        # rank 0 creates the folder and holds its writer's lock; a write error (full
        # disk) ends the run with one line, the last checkpoint kept
        with _runfolder.run_lock(run_dir, ctx, fresh=True), _runfolder.write_errors(run_dir):
            if ctx.is_main:
                write_json_atomic(run_dir / "config.json", asdict(trainer.cfg))
            return trainer.run(progress=progress, stop_at=stop_at)


def _load_run(run_dir: str | Path, ctx: DistContext | None = None, *, resuming: bool = False,
              **overrides) -> _Trainer:
    """The trainer of a run folder at its latest checkpoint. ``resuming`` (training on)
    requires the run's world size; sampling and plotting read any run on one process."""
    run_dir = Path(run_dir)
    _runfolder.check_run_folder(run_dir)  # no symlinked subfolders: nothing outside it
    try:
        obj = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GanflowError(f"{str(run_dir)!r} is not a ganflow run folder: {exc}") from exc
    cfg = TrainConfig.from_dict({**obj, **{k: v for k, v in overrides.items() if v is not None}})
    trainer = _Trainer(cfg, run_dir, load_data(cfg.data), ctx)
    try:
        trainer.load_checkpoint(resuming=resuming)
    except _runfolder.NoCheckpointError:
        if not resuming:
            raise
        # killed after config.json, before its first checkpoint: nothing was trained yet,
        # so the run starts over from its config (as `train` would have)
        if trainer.ctx.is_main:
            _runfolder.note(f"{str(run_dir)!r} has no checkpoint yet (its run was stopped "
                            "before the first one): starting it over from config.json")
        trainer.start()
    trainer.ctx.broadcast_module(trainer.G)  # identical already; a cheap guarantee
    trainer.ctx.broadcast_module(trainer.D)
    return trainer


def resume(
    run_dir: str | Path, *, iterations: int | None = None, device: str | None = None,
    progress: bool = True, stop_at: int | None = None,
) -> TrainResult:
    r"""Continue a run from its latest checkpoint up to ``iterations`` (default: its own).

    Metrics rows after the checkpoint (from a crash) are dropped, so the file reads as
    if the run had never stopped. A run trained on N processes resumes on N (torchrun).
    The run folder's lock is taken first (a second writer gets a
    :class:`GanflowError` naming the holder's pid; a killed writer's lock is taken over);
    the newest checkpoint that loads is used (a damaged one is reported on stderr); a
    folder with config.json but no checkpoint yet starts over; a torn last metrics line is
    dropped; a write error (full disk) ends the run with a one-line GanflowError."""
    obj_device = device
    if obj_device is None:
        try:
            obj_device = json.loads((Path(run_dir) / "config.json").read_text())["device"]
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise GanflowError(f"{str(run_dir)!r} is not a ganflow run folder: {exc}") from exc
    # the writer's lock before reading: a second writer stops here
    with distributed_session(obj_device) as ctx, _runfolder.run_lock(run_dir, ctx):
        trainer = _load_run(run_dir, ctx, resuming=True, iterations=iterations, device=device)
        if trainer.iteration > trainer.cfg.iterations:
            raise GanflowError(
                f"run {str(run_dir)!r} is already at iteration {trainer.iteration}; "
                f"--iterations {trainer.cfg.iterations} would go back"
            )
        ctx.barrier()  # every rank has read the folder before rank 0 rewrites its files
        with _runfolder.write_errors(run_dir):
            if ctx.is_main:
                _runfolder.rewrite_metrics(Path(run_dir) / "metrics.jsonl", trainer.iteration)
                write_json_atomic(Path(run_dir) / "config.json", asdict(trainer.cfg))
            return trainer.run(progress=progress, stop_at=stop_at)


def sample_run(run_dir: str | Path, n: int, *, seed: int = 0,
               snapshot: int | None = None) -> torch.Tensor:
    """Draw ``n`` samples (n, d) from a run's latest generator (CPU, float32), or from
    the generator saved at iteration ``snapshot`` (``snapshots/G-<iteration>``).

    For a ``particles`` run: from its distilled generator if it has one, else ``n``
    distinct particles (a seeded random subset; at most N); ``snapshot`` then reads the
    particles saved at that evaluation (``snapshots/P-<iteration>``)."""
    if int(n) != n or n < 1:
        raise GanflowError(f"--n must be a positive integer, got {n!r}")
    trainer = _load_run(run_dir, device="cpu")
    if snapshot is not None:
        return _sample_snapshot(trainer, int(n), seed, snapshot)
    return trainer.draw(int(n), torch.Generator().manual_seed(seed),
                        use_generator=trainer.distilled)


def _sample_snapshot(trainer: _Trainer, n: int, seed: int, iteration: int) -> torch.Tensor:
    snaps = trainer.run_dir / "snapshots"
    kind = "P" if trainer.samples_are_particles else "G"
    path = snaps / f"{kind}-{iteration:08d}.safetensors"
    if not path.is_file():
        saved = sorted(int(p.stem.split("-")[1]) for p in snaps.glob(f"{kind}-*.safetensors"))
        raise GanflowError(
            f"--snapshot {iteration}: no snapshot at that iteration in {str(snaps)!r}; "
            f"saved iterations: {saved}")
    tensors = load_file(str(path))
    gen = torch.Generator().manual_seed(seed)
    if kind == "P":
        x = tensors["particles"]
        if n > x.shape[0]:
            raise GanflowError(
                f"snapshot {path.name} holds {x.shape[0]} particles; asked for {n} (--n)")
        return x[torch.randperm(x.shape[0], generator=gen)[:n]]
    trainer.G.load_state_dict(tensors)
    with torch.no_grad():
        return trainer.G(trainer.sample_latent(n, gen))


def plot_run(run_dir: str | Path) -> list[Path]:
    """(Re)draw the figures of a run (:func:`ganflow.run_plots.plot_run`)."""
    from .run_plots import plot_run as _plot

    return _plot(run_dir)
