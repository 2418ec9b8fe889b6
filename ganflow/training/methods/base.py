r"""The protocol a training method implements, and the registry ``--method`` reads.

A method is one class: what one iteration does (:meth:`Method.step`), what the model's
samples are (:meth:`Method.draw`), and which tensors beyond the two networks, their
optimizers and the batch stream a checkpoint must hold (:meth:`Method.state_tensors`).
The loop (:mod:`ganflow.training.loop`) only calls these, so a new method is a new file
in this folder with a ``@register_method("name")`` class; nothing else changes.

A method works on a :class:`ganflow.training.session.Session` (``self.s``): the resolved
config ``cfg``, the data, the device, ``G``, ``D``, ``opt_g``, ``opt_d``, the current
:class:`ganflow.algorithm.StepConfig` ``step_cfg`` (eps may follow a schedule), and the
seeded batch draws ``sample_data(m)``, ``sample_latent(m)`` and ``pick(n, m)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..._errors import GanflowError
from ...algorithm import StepInfo

if TYPE_CHECKING:  # the session imports this module; the methods only use its attributes
    from ..session import Session

__all__ = ["SNAPSHOT_PREFIXES", "Method", "get_method", "method_names", "register_method"]

_REGISTRY: dict[str, type[Method]] = {}

# every method's Method.snapshot_prefix: G (generator weights), P (particles), C (a
# flow-chain's length)
SNAPSHOT_PREFIXES = "GPC"


def register_method(*names: str):
    """Class decorator: make the class available as ``--method NAME`` for each name."""
    def deco(cls: type[Method]) -> type[Method]:
        for name in names:
            _REGISTRY[name] = cls
        return cls
    return deco


def method_names() -> list[str]:
    return list(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """The class registered as ``name``; a clear error listing the others if none is."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GanflowError(f"unknown --method {name!r}: expected one of "
                           f"{method_names()}") from None


def _refuse_distil(cfg) -> None:
    """--distil acts on the particle method's final particles alone."""
    if cfg.distil:
        raise GanflowError(f"--distil fits a generator to particles: it needs --method "
                           f"particles, not {cfg.method!r}")


def _refuse_flow_map_options(cfg) -> None:
    """--repair-every, --fit-loss and --fit-optimizer act on flow-map's pairs alone."""
    if cfg.repair_every:
        raise GanflowError(f"--repair-every re-pairs flow-map's latent-particle pairs: it "
                           f"needs --method flow-map, not {cfg.method!r}")
    if cfg.fit_loss not in (None, "mse"):
        raise GanflowError(f"--fit-loss {cfg.fit_loss} is flow-map's regression on its pairs: "
                           f"it needs --method flow-map, not {cfg.method!r}")
    if cfg.fit_optimizer is not None:
        raise GanflowError(f"--fit-optimizer {cfg.fit_optimizer} chooses flow-map's regression "
                           f"solver: it needs --method flow-map, not {cfg.method!r} (whose "
                           f"generator steps take --optimizer)")


def _refuse_generator_fit_options(cfg) -> None:
    """--fit-steps and --pairing shape the fit of a generator to its targets, which a
    method that moves points (and never fits G) does not have."""
    if cfg.fit_steps not in (None, 1):
        raise GanflowError(f"--fit-steps {cfg.fit_steps} sets the generator's fit steps; "
                           f"--method {cfg.method} fits no generator (use --method flow, "
                           f"or flow-map for fit steps on latent-particle pairs)")
    if cfg.pairing != "index":
        raise GanflowError(f"--pairing {cfg.pairing} pairs a generator's samples with its "
                           f"targets; --method {cfg.method} fits no generator (use "
                           f"--method flow)")


class Method:
    """Base class: a generator method (samples are G(z); nothing beyond the networks)."""

    # option defaults of this method for the config's None fields (TrainConfig.resolved,
    # through defaults_for): a subclass's ``defaults`` update its bases', and on image
    # data the ``image_defaults`` of the classes update those. These are Algorithm 1's
    # and the GANs': Adam (lr 1e-3 decaying linearly to 1 %) for both networks, batches
    # of 512 (a larger batch estimates the mode weights, which the flow must balance,
    # better than 256), one D step per iteration and no warm-up (the paper's), eps
    # constant; 10 000 iterations (3000 on images: a digits run then takes minutes on 2
    # cores); 128-unit MLPs (32-channel CNNs on images)
    defaults: ClassVar[dict[str, Any]] = {
        "divergence": "jsd", "optimizer": "adam", "lr_d": 1e-3, "lr_decay": 0.01,
        "eps_decay": 1.0, "batch_size": 512, "d_penalty": 0.0, "particles": 10000,
        "d_steps": 1, "fit_steps": 1, "d_warmup": 0, "repair_every": 0, "fit_loss": "mse",
        "width": 128, "iterations": 10000}
    image_defaults: ClassVar[dict[str, Any]] = {"width": 32, "iterations": 3000}
    # StepInfo fields that must be finite after a step (else the run stops, diverged)
    finite: ClassVar[tuple[str, ...]] = ("d_loss", "g_loss")
    # StepInfo fields averaged into the metrics rows
    logged: ClassVar[tuple[str, ...]] = ("d_loss", "g_loss", "drift_rms", "drift_max",
                                         "fit_ratio")
    # the StepConfig.method the step runs with: the flow's D, drift and step control by
    # default (None: the --method name itself, for the methods of algorithm_step)
    step_method: ClassVar[str | None] = "flow"
    # whether the samples are the method's particles (no generator)
    samples_are_particles: ClassVar[bool] = False
    # whether it runs under torchrun (every rank's state is its own)
    distributed: ClassVar[bool] = True
    # the file name prefix of its snapshots: snapshots/<prefix>-<iteration>.safetensors
    snapshot_prefix: ClassVar[str] = "G"

    def __init__(self, session: Session) -> None:
        self.s = session
        # show a bar while drawing samples (set by Run.sample for long draws)
        self.progress = False

    @classmethod
    def defaults_for(cls, image: bool) -> dict[str, Any]:
        """This method's option defaults, on image data if ``image``, else on points."""
        chain = [vars(k) for k in reversed(cls.__mro__)]
        out: dict[str, Any] = {}
        for key in ("defaults", "image_defaults") if image else ("defaults",):
            for attrs in chain:
                out.update(attrs.get(key, {}))
        return out

    @classmethod
    def check(cls, cfg) -> None:
        """Refuse options this method cannot honour (called by TrainConfig)."""
        _refuse_distil(cfg)
        _refuse_flow_map_options(cfg)

    # ------------------------------------------------------------ a new run
    def start(self) -> None:
        """Set up iteration 0's state (after G was fitted to ``--init``, if given)."""

    def fake_batch(self, m: int) -> torch.Tensor:
        """A batch of the model's samples for D (the warm-up's fakes), detached."""
        with torch.no_grad():
            return self.s.G(self.s.sample_latent(m))

    # ------------------------------------------------------------ training
    def step(self) -> StepInfo:
        raise NotImplementedError

    def finish(self, interrupted: threading.Event, *, progress: bool) -> str:
        """Work after the last iteration (e.g. a distillation); returns the run's status."""
        return "finished"

    # ------------------------------------------------------------ samples
    def max_draw(self) -> int | None:
        """The most samples :meth:`draw` can give (None: any number)."""
        return None

    @torch.no_grad()
    def draw(self, n: int, gen: torch.Generator, *, use_generator: bool = False) -> torch.Tensor:
        """n samples of the model (n, d) on the device, fixed by ``gen``."""
        return self.s.G(self.s.sample_latent(n, gen))

    @property
    def has_generator(self) -> bool:
        """Whether G is a trained sampler of the model (a particle run's only once distilled)."""
        return True

    def eval_metrics(self) -> dict:
        """Metrics of the method's own state, added to every evaluation row."""
        return {}

    def snapshot(self) -> tuple[str, dict[str, torch.Tensor]]:
        """(prefix, tensors) saved at every evaluation as snapshots/<prefix>-<it>.safetensors."""
        return self.snapshot_prefix, {k: v.detach().cpu().contiguous()
                                      for k, v in self.s.G.state_dict().items()}

    def snapshot_sampler(self, tensors: dict[str, torch.Tensor]
                         ) -> Callable[[int, torch.Generator], torch.Tensor]:
        """``sample(n, gen)``: n samples of the model saved as ``tensors`` by
        :meth:`snapshot` (here G's weights, loaded into G), on the device."""
        s = self.s
        s.G.load_state_dict(tensors)

        @torch.no_grad()
        def sample(n: int, gen: torch.Generator) -> torch.Tensor:
            return s.G(s.sample_latent(n, gen))
        return sample

    def summary_lines(self) -> list[str]:
        return []

    # ------------------------------------------------------------ checkpoints
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors beyond G, D, the optimizers and the batch stream."""
        return {}

    def state_meta(self) -> dict:
        """JSON-able state beyond the tensors (stored in state-<it>.json)."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore :meth:`state_tensors` and :meth:`state_meta` from a checkpoint."""

    def check_finite(self) -> str | None:
        """What is NaN/Inf in the method's state (None: all finite); checked before saving."""
        return None

    def replicated(self) -> tuple[torch.Tensor, ...]:
        """State that every rank holds a copy of (checked equal at every checkpoint)."""
        return ()
