r"""``--method flow-chain``: the generator is G_0 followed by every Euler step of ODE (2)
that the particles took (:class:`ganflow.drift_chain.DriftChain`, docs/theory.md
section 8: Algorithm 1's recursion with the fit replaced by composition).

N particles x_i = G_0(z_i) are moved as ``--method particles`` moves them (calibrate D
against them, eq. (21); move each by eps times D's drift, eq. (20) / section 7), and every
step's discriminator and eps are appended to the chain. G itself is never trained: it is
the start G_0 (the untrained generator, or the one fitted to ``--init``). The samples are
G_t(z) = X_t(G_0(z)) at fresh latents, X_t the composition of the recorded steps, so the
particles are G_t at their own latents and every other latent follows the same flow.

Each evaluation also reports the particles' own metrics (``particles_modes``, ...; on
images ``particles_frechet_distance``, ...) on a fixed subsample: how far the fresh samples
are from the particles that trained D. A snapshot ``snapshots/C-<iteration>`` records the
chain's length at that evaluation; it is sampled from the run's newest checkpoint, whose
chain holds every earlier step. The recorded discriminators live in the run folder's
``chain/`` (segment files, each written once), the step table in the checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..._errors import GanflowError
from ..._io import write_safetensors_atomic
from ...algorithm import StepInfo
from ...drift_chain import DriftChain
from ...particle_flow import particle_step
from .base import (
    _refuse_distil,
    _refuse_flow_map_options,
    _refuse_generator_fit_options,
    register_method,
)
from .particles import HoldsParticles, own_sample_metrics, subset_index

_SEGMENT = re.compile(r"D-(\d{8,})-(\d{8,})\.safetensors")
# draws kept moving with the chain: an evaluation's metrics draw and, on images, its grid
# of 64; one alone would be pushed out by the other, and re-moved from step 0 each time
_KEPT_DRAWS = 2


@register_method("flow-chain")
class FlowChainMethod(HoldsParticles):
    """N particles moved by the calibrated D's drift; the samples are fresh draws of G_0
    moved by the same recorded steps."""

    # the configuration that reached the ring8 and grid25 bars first (benchmarks/README.md,
    # flow-chain): one SGD step of D per iteration at a constant 0.1, D's batches of 1024,
    # 4000 particles (the drift at the particles is most of an iteration), eps decaying
    # from 1 to 0.1; 3000 iterations, since memory and sampling grow with the chain.
    # Tracking the PDE needs instead a calibrated D and a constant step (README, tracking)
    defaults = {"optimizer": "sgd", "lr_d": 0.1, "lr_decay": 1.0, "batch_size": 1024,
                "particles": 4000, "eps_decay": 0.1, "d_steps": 1, "d_warmup": 0,
                "iterations": 3000}
    # images: the KL flow (the JSD's drift vanishes where D is sure, as early on images),
    # Adam for D with an R1 penalty of 10 (a smoother f, whose drift also moves the fresh
    # samples between the particles well), 2000 particles, eps decaying to 0.01: ahead
    # of every other method on digits at equal wall time
    image_defaults = {"divergence": "kl", "optimizer": "adam", "lr_d": 1e-3,
                      "lr_decay": 0.01, "batch_size": 512, "particles": 2000,
                      "eps_decay": 0.01, "d_penalty": 10.0}
    finite = ("d_loss", "drift_max")
    logged = ("d_loss", "drift_rms", "drift_max")  # no generator is fitted
    snapshot_prefix = "C"

    def __init__(self, session) -> None:
        super().__init__(session)
        self.particles: torch.Tensor | None = None
        self._draws: dict[tuple, tuple[int, torch.Tensor]] = {}
        self._saved = 0  # states [0, _saved) are in chain/ segment files
        s = session
        self.chain = DriftChain(s.D, divergence=s.cfg.divergence, every=s.cfg.chain_every)

    @classmethod
    def check(cls, cfg) -> None:
        _refuse_distil(cfg)
        _refuse_flow_map_options(cfg)
        _refuse_generator_fit_options(cfg)
        cls.check_particle_count(cfg)
        if cfg.divergence == "chi2":
            raise GanflowError(
                "--method flow-chain refuses --divergence chi2: its drift 2 e^(-f) grad f is "
                "unbounded where D -> 1, and every particle and every sample is moved by it "
                "(flow-map refuses it for the same reason); use kl (the fastest stable "
                "flow), jsd or ns")

    def start(self) -> None:
        s = self.s
        gen = torch.Generator().manual_seed(s.cfg.seed + 3)  # flow-map's pairs' stream
        z = torch.randn(s.cfg.particles, s.cfg.latent_dim, generator=gen).to(s.device)
        with torch.no_grad():
            self.particles = torch.cat([s.G(c) for c in z.split(8192)])

    def step(self) -> StepInfo:
        s = self.s
        info = particle_step(s.D, s.opt_d, self.particles, s.sample_data, self.pick,
                             s.step_cfg, drift_fn=self.drift_at)
        cfg = s.step_cfg
        limit = cfg.cfl * cfg.length_scale if cfg.faithful else float("inf")
        self.chain.record(s.D, info.flow_time, limit=limit)
        return info

    # ------------------------------------------------------------ samples
    @torch.no_grad()
    def draw(self, n: int, gen: torch.Generator, *, use_generator: bool = False) -> torch.Tensor:
        # a draw repeated from the same generator state (every evaluation's) continues
        # from where the last one stopped: the chain is append-only, so moving the cached
        # points by the new steps is the same computation as moving them from step 0, at
        # the cost of the new steps alone instead of all of them at every evaluation
        key = (n, bytes(gen.get_state().numpy()))
        done, x = self._draws.pop(key, (0, None))
        if x is None:
            x = self.s.G(self.s.sample_latent(n, gen))
        else:
            self.s.sample_latent(n, gen)  # leaves gen where a fresh draw would
        x = self.chain.apply(x, start=done, progress=self.progress)
        self._draws[key] = (len(self.chain), x)  # the most recent last
        while len(self._draws) > _KEPT_DRAWS:
            del self._draws[next(iter(self._draws))]  # the least recently used
        return x.clone()  # a caller's in-place change must not reach the cache

    def eval_metrics(self) -> dict:
        s = self.s
        n = min(s.cfg.eval_samples, self.particles.shape[0])
        idx = subset_index(self.particles.shape[0], n,
                           torch.Generator().manual_seed(s.cfg.seed + 1)).to(s.device)
        return {"chain_steps": len(self.chain),
                **own_sample_metrics(s, {"particles": self.particles[idx]})}

    def snapshot(self) -> tuple[str, dict[str, torch.Tensor]]:
        return self.snapshot_prefix, {"steps": torch.tensor([len(self.chain)])}

    def snapshot_sampler(self, tensors: dict[str, torch.Tensor]
                         ) -> Callable[[int, torch.Generator], torch.Tensor]:
        steps = int(tensors["steps"][0])
        if steps > len(self.chain):
            raise GanflowError(
                f"the snapshot is of step {steps}; the run's newest checkpoint holds a chain "
                f"of {len(self.chain)} steps")
        s = self.s

        @torch.no_grad()
        def sample(n: int, gen: torch.Generator) -> torch.Tensor:
            return self.chain.apply(s.G(s.sample_latent(n, gen)), steps=steps,
                                    progress=self.progress)
        return sample

    def summary_lines(self) -> list[str]:
        c = self.chain
        return [f"- {self.particles.shape[0]} particles; the generator is G_0 followed by "
                f"the {len(c)} recorded steps of their flow ({len(c.states)} discriminator "
                f"states of {c.state_size} floats)"]

    # ------------------------------------------------------------ checkpoints
    # The recorded discriminators are append-only and grow with the run: they are kept in
    # the run folder's chain/ as segments D-<first>-<end>.safetensors (states [first,
    # end)), each written once, so that a checkpoint holds only the particles and the
    # (small) step table instead of rewriting every state at every evaluation.
    def _segments(self) -> dict[int, tuple[int, Path]]:
        """first -> (end, path) of the segment files in chain/."""
        found = {}
        folder = self.s.run_dir / "chain"
        for p in folder.glob("D-*-*.safetensors") if folder.is_dir() else ():
            m = _SEGMENT.fullmatch(p.name)
            if m:
                found[int(m[1])] = (int(m[2]), p)
        return found

    def state_tensors(self) -> dict[str, torch.Tensor]:
        n = len(self.chain.states)
        if n > self._saved:
            folder = self.s.run_dir / "chain"
            folder.mkdir(exist_ok=True)
            # segments from a state beyond this one (a run killed after writing one, before
            # its checkpoint) are stale: the states they hold were recorded again since
            for first, (_, path) in self._segments().items():
                if first >= self._saved:
                    path.unlink(missing_ok=True)
            write_safetensors_atomic(
                folder / f"D-{self._saved:08d}-{n:08d}.safetensors",
                {"states": self.chain.states_between(self._saved, n)})
            self._saved = n
        out = {"particles": self.particles.detach().cpu().contiguous(),
               "chain_steps": self.chain.steps_tensor()}
        # the evaluations' cached draws, so that a resumed run continues them instead of
        # moving their samples through every step again (minutes for a long chain)
        for i, ((_n, gen_state), (done, x)) in enumerate(self._draws.items()):
            out.update({f"eval_draw_{i}": x.detach().cpu().contiguous(),
                        f"eval_draw_gen_{i}": torch.frombuffer(bytearray(gen_state),
                                                               dtype=torch.uint8),
                        f"eval_draw_steps_{i}": torch.tensor([done])})
        return out

    def state_meta(self) -> dict:
        return {"chain_states": len(self.chain.states)}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.particles = tensors["particles"].to(self.s.device)
        n = int(meta["chain_states"])
        segments, parts, first = self._segments(), [], 0
        while first < n:  # the segments from state 0 up to the checkpoint's n, in order
            if first not in segments or segments[first][0] > n:
                raise GanflowError(
                    f"{str(self.s.run_dir / 'chain')!r} lacks the discriminator states "
                    f"{first}-{n} of the checkpoint (segment D-{first:08d}-*.safetensors): "
                    "the run folder is incomplete")
            end, path = segments[first]
            parts.append(load_file(str(path))["states"])
            first = end
        states = torch.cat(parts) if parts else torch.zeros(0, self.chain.state_size)
        self.chain.restore(states, tensors["chain_steps"])
        self._saved = n
        self._draws = {}
        # continued, as in the run that never stopped (a checkpoint of an older ganflow
        # holds one draw, unnumbered)
        suffixes = [""] if "eval_draw" in tensors else []
        suffixes += [f"_{i}" for i in range(_KEPT_DRAWS) if f"eval_draw_{i}" in tensors]
        for sfx in suffixes:
            done, x = int(tensors[f"eval_draw_steps{sfx}"][0]), tensors[f"eval_draw{sfx}"]
            if done <= len(self.chain):
                key = (x.shape[0], bytes(tensors[f"eval_draw_gen{sfx}"].numpy()))
                self._draws[key] = (done, x.to(self.s.device))
