r"""``--method particles``: no generator; N particles moved by D's drift (ODE (2)).

One iteration is :func:`ganflow.particle_flow.particle_step`: calibrate D on data
against a random batch of the particles (eq. (21)), then move every particle by eps times
the drift (eq. (20) / section 7). Evaluation uses a fixed-seed subsample of
``eval_samples`` of them; the snapshots ``snapshots/P-<iteration>.safetensors`` hold the
first ``min(N, 20000)`` (the particles are exchangeable, so these are a uniform
subsample: enough for ``ganflow track``'s KDE). With ``--distil`` a generator is fitted
set-wise to the final particles (``distil.json``), so the run still gives a sampler.
"""

from __future__ import annotations

import math
import threading
import time

import torch

from ..._errors import GanflowError, TrainingDivergedError
from ..._io import write_json_atomic
from ...algorithm import StepInfo, discriminator_drift
from ...data import load_data
from ...metrics import mode_metrics
from ...particle_flow import distil_step, particle_step
from ..evaluate import image_sample_metrics
from .base import Method, _refuse_flow_map_options, _refuse_generator_fit_options, register_method

# particles kept per snapshot: enough for `ganflow track`'s KDE (n = 5000 by default)
# without writing N x d floats at every evaluation
SNAPSHOT_PARTICLES = 20000


def subset_index(n_total: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """n distinct indices in [0, n_total) (n <= n_total), chosen by ``gen`` (on the CPU)."""
    return torch.randperm(n_total, generator=gen)[:n]


@torch.no_grad()
def own_sample_metrics(s, samples: dict[str, torch.Tensor]) -> dict:
    """The sample metrics of the data (modes, HQ, mode KL of a mixture; Frechet distance
    and classes of images) of each of ``samples`` (prefix -> (n, d)), keyed
    ``<prefix>_<metric>``; empty for data that has neither."""
    out: dict = {}
    for prefix, sub in samples.items():
        sub = sub.double().cpu()
        own: dict = {}
        if s.data.mixture is not None:
            own.update(mode_metrics(sub, s.data.mixture))
        if s.data.image_shape is not None:
            own.update({k: v for k, v in image_sample_metrics(s, sub).items()
                        if k != "frechet_distance_floor"})
        out.update({f"{prefix}_{k}": v for k, v in own.items()})
    return out


def particle_subset(particles: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n distinct rows of ``particles`` (n <= N), chosen by ``gen``."""
    return particles[subset_index(particles.shape[0], n, gen).to(particles.device)]


class HoldsParticles(Method):
    """What the methods that keep N particles as state share: at least two of them, D's
    fake batches and the fit batches drawn from them, and a NaN check before saving."""

    particles: torch.Tensor | None

    @staticmethod
    def check_particle_count(cfg) -> None:
        if cfg.particles < 2:
            raise GanflowError(f"--particles must be at least 2, got {cfg.particles!r}")

    def pick(self, m: int) -> torch.Tensor:
        """m particle indices, with replacement, from the training batch stream."""
        return self.s.pick(self.particles.shape[0], m)

    def fake_batch(self, m: int) -> torch.Tensor:
        return self.particles[self.pick(m)]

    def drift_at(self, particles: torch.Tensor) -> torch.Tensor:
        r"""D's drift (eq. (20) / section 7) at every particle. Under torchrun every rank
        holds the same particles and the same D (its gradients are averaged): each
        computes the drift at its share of the rows and gathers the others', so every
        rank makes the same move at 1 / world_size of the cost."""
        s = self.s
        return s.ctx.map_rows(
            lambda rows: discriminator_drift(s.D, rows, divergence=s.cfg.divergence),
            particles)

    def check_finite(self) -> str | None:
        return None if torch.isfinite(self.particles).all() else "particles"

    def replicated(self) -> tuple[torch.Tensor, ...]:
        return (self.particles,)


@register_method("particles")
class ParticleMethod(HoldsParticles):
    """N particles, part of every checkpoint, moved by the calibrated D's drift."""

    samples_are_particles = True
    snapshot_prefix = "P"
    finite = ("d_loss", "drift_max")
    logged = ("d_loss", "drift_rms", "drift_max")  # no generator is fitted

    def __init__(self, session) -> None:
        super().__init__(session)
        self.particles: torch.Tensor | None = None
        self.distilled = False

    @classmethod
    def check(cls, cfg) -> None:
        _refuse_flow_map_options(cfg)
        _refuse_generator_fit_options(cfg)
        cls.check_particle_count(cfg)

    def start(self) -> None:
        self.particles = self._initial_particles().to(self.s.device)

    def _initial_particles(self) -> torch.Tensor:
        s, cfg = self.s, self.s.cfg
        # its own seed stream: the training batches are the same with or without particles
        gen = torch.Generator().manual_seed(cfg.seed + 3)
        if not cfg.particle_init and cfg.init:
            return s.init_law().sample(cfg.particles, gen).float()
        if not cfg.particle_init:
            return torch.randn(cfg.particles, s.data.dim, generator=gen)
        if cfg.particle_init == "generator":
            # the law of the untrained generator of the same seed: the start of the
            # generator methods, so particle and generator runs begin identically
            z = torch.randn(cfg.particles, cfg.latent_dim, generator=gen).to(s.device)
            with torch.no_grad():
                return s.G(z).cpu()
        start = load_data(cfg.particle_init)
        if start.dim != s.data.dim:
            raise GanflowError(
                f"--particle-init {cfg.particle_init!r} is {start.dim}-dimensional; the data "
                f"{s.data.name!r} is {s.data.dim}-dimensional")
        return start.sample(cfg.particles, gen)

    def step(self) -> StepInfo:
        self.distilled = False  # the particles move on from any distilled G
        s = self.s
        return particle_step(s.D, s.opt_d, self.particles, s.sample_data, self.pick,
                             s.step_cfg, drift_fn=self.drift_at)

    # ------------------------------------------------------------ samples
    def max_draw(self) -> int | None:
        return self.particles.shape[0]

    @torch.no_grad()
    def draw(self, n: int, gen: torch.Generator, *, use_generator: bool = False) -> torch.Tensor:
        if use_generator:
            return super().draw(n, gen)
        total = self.particles.shape[0]
        if n > total:
            raise GanflowError(
                f"the run has {total} particles; asked for {n} distinct ones (ask for at "
                "most that many, or train with --distil for a generator)")
        return particle_subset(self.particles, n, gen)

    @property
    def has_generator(self) -> bool:
        return self.distilled

    def snapshot(self) -> tuple[str, dict[str, torch.Tensor]]:
        kept = self.particles[:SNAPSHOT_PARTICLES].detach().cpu().contiguous()
        return self.snapshot_prefix, {"particles": kept}

    def summary_lines(self) -> list[str]:
        s = self.s
        lines = [f"- {self.particles.shape[0]} particles (no generator), started from "
                 f"{s.cfg.particle_init or 'N(0, I)'}; metrics on a subsample of "
                 f"{min(s.cfg.eval_samples, self.particles.shape[0])}"]
        distil = s.run_dir / "distil.json"
        if self.distilled and distil.exists():
            import json

            gm = json.loads(distil.read_text())["generator"]
            lines.append("- distilled generator (set-wise fit, distil.json): " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in gm.items()))
        return lines

    # ------------------------------------------------------------ checkpoints
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"particles": self.particles.detach().cpu().contiguous()}

    def state_meta(self) -> dict:
        return {"distilled": self.distilled}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.particles = tensors["particles"].to(self.s.device)
        self.distilled = bool(meta.get("distilled", False))

    # ------------------------------------------------------------ distillation
    def finish(self, interrupted: threading.Event, *, progress: bool) -> str:
        """With ``--distil``: fit G set-wise to the final particles (``distil_iterations``
        steps); writes ``distil.json`` with the generator's metrics next to the particles'."""
        if not self.s.cfg.distil:
            return "finished"
        from tqdm.auto import tqdm

        s, cfg = self.s, self.s.cfg
        # own seed streams: distilling never changes the particles' training stream
        zgen = torch.Generator().manual_seed(cfg.seed + 4)

        def pick(m: int) -> torch.Tensor:
            return torch.randint(0, self.particles.shape[0], (m,), generator=zgen).to(
                s.device)

        losses: list[float] = []
        t0 = time.perf_counter()
        for k in tqdm(range(cfg.distil_iterations), disable=not progress,
                      dynamic_ncols=True, desc="distil"):
            if interrupted.is_set():
                return "interrupted"  # the particles' checkpoint stands; G is not distilled
            # the same linear learning-rate decay as training, over the distillation
            scale = 1.0 - (1.0 - cfg.lr_decay) * k / cfg.distil_iterations
            for group in s.opt_g.param_groups:
                group["lr"] = cfg.lr_g * scale
            loss = distil_step(s.G, s.opt_g, self.particles,
                               s.sample_latent(cfg.batch_size, zgen), pick)
            if not math.isfinite(loss):
                raise TrainingDivergedError(
                    f"distillation loss is {loss} at distillation step {k + 1}")
            losses.append(loss)
        self.distilled = True
        s.save_checkpoint()
        row = {"iteration": s.iteration, "distil_iterations": cfg.distil_iterations,
               "seconds": round(time.perf_counter() - t0, 3),
               "fit_mse": sum(losses[-50:]) / len(losses[-50:]),
               "generator": s.sample_metrics(use_generator=True),
               "particles": s.sample_metrics()}
        write_json_atomic(s.run_dir / "distil.json", row)
        return "finished"
