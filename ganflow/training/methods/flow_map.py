r"""``--method flow-map``: a generator regressed on persistent latent-particle pairs, so
that its law follows the flow (docs/theory.md section 8; the step is
:func:`ganflow.flow_map.flow_map_step`).

The pairs (z_i, x_i), x_i(0) = G_0(z_i), are part of every checkpoint; the samples are
G's. Every ``repair_every`` iterations the pairs are re-paired by minibatch optimal
transport (:func:`ganflow.flow_map.repair_pairs`): the particles' law is kept, and G
regresses on a map it can fit. Each evaluation also reports the pairs' own particles
(``particles_modes``, ``particles_hq``, ``particles_mode_kl`` on a fixed subsample; on
images ``particles_frechet_distance``, ``particles_class_coverage``,
``particles_class_kl``), the same of G at the pairs' latents (``pairs_modes``, ...,
``pairs_frechet_distance``: the fit's error where G is trained, apart from its
generalisation to fresh latents) and ``pair_rms``, the RMS |G(z_i) - x_i|: how far the
generator is from the flow's state.
"""

from __future__ import annotations

import torch

from ..._errors import GanflowError
from ...algorithm import StepInfo
from ...flow_map import FIT_LOSSES, flow_map_step, initial_pairs
from .base import _refuse_distil, register_method
from .particles import HoldsParticles, own_sample_metrics, subset_index


@register_method("flow-map")
class FlowMapMethod(HoldsParticles):
    """N pairs (z_i, x_i): calibrate D, move the x_i by its drift, regress G on the pairs."""

    # its generator stays on the flow only if D is calibrated and the fit accurate at
    # every step, and the drift at t = 0 needs a calibrated D as much as any later one
    defaults = {"d_steps": 20, "fit_steps": 10, "d_warmup": 500, "repair_every": 100,
                "fit_loss": "l1"}
    finite = ("d_loss", "g_loss", "drift_max")

    def __init__(self, session) -> None:
        super().__init__(session)
        self.latents: torch.Tensor | None = None
        self.particles: torch.Tensor | None = None

    @classmethod
    def check(cls, cfg) -> None:
        _refuse_distil(cfg)
        if cfg.fit_loss is not None and cfg.fit_loss not in FIT_LOSSES:
            raise GanflowError(f"unknown --fit-loss {cfg.fit_loss!r}: expected one of "
                               f"{list(FIT_LOSSES)}")
        cls.check_particle_count(cfg)
        if cfg.divergence == "chi2":
            raise GanflowError(
                "--method flow-map refuses --divergence chi2: its drift 2 e^(-f) grad f is "
                "unbounded where D -> 1 (on ring8 Algorithm 1 blew up with it in 3 of 3 "
                "seeds), and every particle is moved by it; use kl (the fastest stable "
                "flow), jsd or ns")

    def start(self) -> None:
        s = self.s
        self.latents, self.particles = initial_pairs(
            s.G, s.cfg.particles, s.cfg.latent_dim,
            torch.Generator().manual_seed(s.cfg.seed + 3), device=s.device)

    def step(self) -> StepInfo:
        s = self.s
        return flow_map_step(s.G, s.D, s.opt_g, s.opt_d, self.latents, self.particles,
                             s.sample_data, self.pick, s.step_cfg,
                             repair_every=s.cfg.repair_every, iteration=s.iteration,
                             seed=s.cfg.seed, fit_loss=s.cfg.fit_loss,
                             fit_nearest=s.cfg.fit_nearest, sample_latent=s.sample_latent,
                             drift_fn=self.drift_at)

    def replicated(self) -> tuple[torch.Tensor, ...]:
        return (self.latents, self.particles)

    @torch.no_grad()
    def eval_metrics(self) -> dict:
        s = self.s
        z, x = self.latents[:2500], self.particles[:2500]
        out = {"pair_rms": float((s.G(z) - x).pow(2).sum(-1).mean().sqrt())}
        if s.data.mixture is None and s.data.image_shape is None:
            return out  # no metrics of its own for the particles of other data
        n = min(s.cfg.eval_samples, self.particles.shape[0])
        idx = subset_index(self.particles.shape[0], n,
                           torch.Generator().manual_seed(s.cfg.seed + 1)).to(s.device)
        # the particles, and G at THEIR latents: particles -> pairs is the fit's error on
        # the pairs it is trained on, pairs -> G's samples (fresh latents) its
        # generalisation to latents it never saw
        out.update(own_sample_metrics(s, {"particles": self.particles[idx],
                                          "pairs": s.G(self.latents[idx])}))
        return out

    def summary_lines(self) -> list[str]:
        return [f"- {self.latents.shape[0]} latent-particle pairs; the generator is "
                "regressed on them (metrics are the generator's)"]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"particles": self.particles.detach().cpu().contiguous(),
                "latents": self.latents.detach().cpu().contiguous()}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.particles = tensors["particles"].to(self.s.device)
        self.latents = tensors["latents"].to(self.s.device)
