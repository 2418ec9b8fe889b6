r"""Every option of a training run, declared once: :class:`TrainConfig`.

Each field carries its ``--help`` text in ``metadata["help"]``; ``ganflow train``
builds its options from these fields (``ganflow/cli/train.py``), so a new option is
one field here. Fields with ``metadata["cli"] = False`` are library-only. Validation
lives in :meth:`TrainConfig.__post_init__`; the per-iteration options are handed to
:class:`ganflow.algorithm.StepConfig` (which checks its own) by :meth:`step_config`.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from types import SimpleNamespace
from typing import Any

import torch

from .._errors import GanflowError
from ..algorithm import StepConfig, check_step_options
from ..data import Dataset
from ..networks import ACTIVATIONS
from .methods import get_method

__all__ = ["OPTIMIZERS", "TrainConfig", "parse_device"]

OPTIMIZERS = ("adam", "sgd")
LOGGERS = ("jsonl", "tensorboard")


def _opt(default: Any, help: str, *, cli: bool = True) -> Any:
    return field(default=default, metadata={"help": help, "cli": cli})


def flag(name: str) -> str:
    """How a bad value of field ``name`` is named in messages: its flag, or the field."""
    f = {f.name: f for f in fields(TrainConfig)}.get(name)
    return "--" + name.replace("_", "-") if f is None or f.metadata.get("cli", True) else name


@dataclass
class TrainConfig:
    r"""Every option of a run; the defaults are ``ganflow train``'s.

    The default method is flow-chain (a generator that is the flow map of its particles'
    flow, docs/theory.md section 8), which reached the ring8 and grid25 bars first and ended
    ahead on digits in the benchmarks (benchmarks/README.md). Options that are ``None``
    here take the method's defaults for the data (points or images), when a run is
    created (:meth:`resolved`, :meth:`Method.defaults_for
    <ganflow.training.methods.base.Method.defaults_for>`), and are stored resolved in
    config.json: on points flow-chain moves 4000 particles by the JSD drift of a D trained
    by one constant SGD step of 0.1 per iteration on batches of 1024, eps 1 decaying to
    0.1, for 3000 iterations; on images the KL drift of an Adam D with an R1 penalty of
    10, 2000 particles, eps decaying to 0.01. ``--method flow`` is the paper's Algorithm 1
    (JSD, eps 1, K 1, index pairing, Adam lr 1e-3 decaying to 1 % for both networks,
    batches of 512, 10 000 iterations). The comments on the fields give the reason for
    each choice; the runs behind them and the alternatives rejected are in
    docs/history.md and benchmarks/README.md.
    """

    data: str = _opt("ring8", "ring8, grid25, swissroll, moons, checkerboard, circles, "
                     "bimodal, normal:MEAN:STD, a mixture .json, a .npy/.csv table of shape "
                     "(n, d); images: digits, mnist, mnist:PATH (.npz/.npy/PNG folder).")
    method: str = _opt("flow-chain", "flow-chain (the default: the generator is G_0 "
                       "followed by every recorded step of its particles' flow), flow "
                       "(Algorithm 1), gan (saturating ln(1-D)), gan-ns "
                       "(non-saturating -ln D), particles (no generator: N particles moved "
                       "by D's drift), flow-map (a generator regressed on N latent-particle "
                       "pairs moved by D's drift: it follows the flow).")
    divergence: str | None = _opt(None, "flow's divergence: jsd, kl, ns, chi2; default "
                                  "jsd (flow-chain on images: kl).")
    eps: float = _opt(1.0, "flow time step of eq. (22) (faithful: the largest one).")
    # None = by method and data (Method.defaults_for): 1 and 1 for the paper's Algorithm 1
    # and the GANs; flow-map 20 and 10, since its generator stays on the flow only if D is
    # calibrated and the fit accurate at every step
    fit_steps: int | None = _opt(None, "K descent steps on the same z and targets "
                                 "(flow-map: on fresh batches of pairs); default 1 (the "
                                 "paper), flow-map 10; flow-chain and particles fit no "
                                 "generator.")
    pairing: str = _opt("index", "index (the paper's MSE), assignment (optimal re-pairing) "
                        "or energy (energy distance between the sets); generator methods "
                        "only.")
    d_steps: int | None = _opt(None, "discriminator steps per iteration (faithful: the "
                               "least); default 1, flow-map 20.")
    # the drift at t = 0 needs a calibrated D as much as any later one
    d_warmup: int | None = _opt(None, "discriminator steps before the first move; default "
                                "0, flow-map 500.")
    # on ring8 with SGD it stops the collapse and the runaway (bench_divergence.py)
    d_penalty: float | None = _opt(None, "gamma of an R1 gradient penalty (gamma/2) E_data "
                                   "|grad f|^2 on D; 0: off; default 0 (flow-chain on "
                                   "images: 10).")
    # the defaults by method and data, and the reasons for them: Method.defaults in
    # methods/base.py and each method's file
    batch_size: int | None = _opt(None, "m, samples per batch; default 512 (flow-chain on "
                                  "points: 1024).")
    lr_g: float = _opt(1e-3, "generator learning rate.")
    lr_d: float | None = _opt(None, "discriminator learning rate; default 1e-3 "
                              "(flow-chain on points: 0.1, SGD).")
    optimizer: str | None = _opt(None, "adam or sgd; default adam (flow-chain on points: "
                                 "sgd, for D).")
    beta1: float = _opt(0.5, "Adam's beta1.")
    # Algorithm 1's 0.01: ring8's modes are 0.02 wide, and only a decaying step lets
    # Adam's jitter fall below
    lr_decay: float | None = _opt(None, "final / initial learning rate (linear decay over "
                                  "the run); default 0.01 (flow-chain on points: 1).")
    lr_decay_iters: int = _opt(0, "iterations of the decays (0: the run's --iterations "
                               "when it is created).", cli=False)
    # for particles this anneals the moves, as a decaying lr anneals a generator's Adam
    # steps (Adam moves G by about lr whatever eps is)
    eps_decay: float | None = _opt(None, "final / initial eps (linear decay over the run, "
                                   "as --lr-decay); anneals particles; default 1 "
                                   "(flow-chain: 0.1 on points, 0.01 on images).")
    width: int | None = _opt(None, "hidden units per layer (default 128), or conv channels "
                             "for image data (default 32).")
    depth: int = _opt(3, "hidden layers (MLPs; not image data).")
    latent_dim: int | None = _opt(None, "dimension of z ~ N(0, I) (default 2 for d <= 2, "
                                  "16 for images, else d).")
    # a ReLU D has a piecewise-constant grad f: points moved by it (particles, flow-chain)
    # pile up at its kinks, which a smooth D avoids; but a smooth D drove the particles too
    # weakly to resolve ring8's narrow modes (benchmarks/README.md, flow-chain)
    activation: str = _opt("relu", "relu, leaky_relu, elu, silu, tanh (MLPs; silu: a "
                           "smooth drift, for tracking a smooth flow with points).")
    seed: int = _opt(0, "seed of initialisation and batches.")
    device: str = _opt("cpu", "cpu, cuda, cuda:1, ...")
    # 3000 for images: a digits run then takes minutes on 2 cores
    iterations: int | None = _opt(None, "iterations in all (default 10000; 3000 for "
                                  "images and for flow-chain; with --resume: continue up "
                                  "to this).")
    eval_every: int = _opt(1000, "evaluate and checkpoint every N iterations.")
    eval_samples: int = _opt(2500, "samples per evaluation.", cli=False)
    w2_samples: int = _opt(1000, "samples of the W2 estimate per evaluation.", cli=False)
    faithful: bool = _opt(False, "faithful ODE simulation: CFL step control, calibrated "
                          "D, accurate fit.")
    cfl: float = _opt(0.5, "faithful: largest target move / data length scale.")
    calib_tol: float = _opt(1e-3, "faithful: D is calibrated when a step improves its "
                            "held-out loss by less.")
    calib_max_steps: int = _opt(20, "faithful: cap on D steps.")
    fit_tol: float = _opt(0.1, "faithful: fit until residual < tol x displacement.")
    fit_max_steps: int = _opt(20, "faithful: cap on fit steps.")
    # a quantile, so a few fast points cannot freeze flow time
    step_quantile: float = _opt(0.9, "faithful: the CFL step is set by this quantile of "
                                "|drift| (1: the max); faster points are clipped.")
    # gauss-newton fits the batch but, once G sits on narrow modes, no better on fresh z
    # and at several times the cost (algorithm.py)
    fit_solver: str = _opt("optimizer", "faithful: optimizer (--optimizer steps) or "
                           "gauss-newton (scale-aware least squares).")
    init: str = _opt("", "start law: any --data spec of the data's dimension "
                     "(normal:MEAN:STD, a mixture .json, a .npy); the generator is fitted "
                     "to it before iteration 0 (default: the untrained generator's law).")
    particles: int | None = _opt(None, "particles / flow-map / flow-chain: how many "
                                 "particles / latent-particle pairs (N); default 10000 "
                                 "(flow-chain: 4000 on points, 2000 on images).")
    # the flow map X_t o G_0 sends neighbouring latents to different modes once the modes
    # are sharp, which a continuous G cannot fit; re-pairing keeps the particles' law
    repair_every: int | None = _opt(None, "flow-map: re-pair latents and particles by "
                                    "minibatch optimal transport every this many "
                                    "iterations (0: never, G then regresses on the flow "
                                    "map itself); default 100.")
    fit_loss: str | None = _opt(None, "flow-map: the regression of G on the pairs: l1 "
                                "(|G(z) - x|, a median: G lands on a mode) or mse "
                                "(|G(z) - x|^2, a mean); default l1.")
    # the regression is not a player of the game: D's optimizer (--optimizer) is what the
    # divergence protocol varies, and a constant SGD step never settles an L1 fit
    fit_optimizer: str | None = _opt(None, "flow-map: the optimizer of G's regression on "
                                     "the pairs, adam or sgd, at --lr-g (default: "
                                     "--optimizer).")
    # the pairs constrain G at N latents only; between them a continuous G can put
    # samples where no particle is (between modes, blends of images)
    fit_nearest: float = _opt(0.0, "flow-map: weight of a second fit term that regresses G "
                              "at FRESH latents on the nearest particle (0: off).")
    # one D state is kept per recorded step: memory and sampling time grow with the
    # iterations; > 1 keeps one in that many, each moving the points for its window
    chain_every: int = _opt(1, "flow-chain: record D's state every this many iterations "
                            "(1: the exact flow map of the particles; more: less memory, "
                            "the points moved by a D up to that many - 1 iterations old).")
    particle_init: str = _opt("", "particles: start law: 'generator' (the untrained "
                              "generator's law), or any --data spec of the data's dimension "
                              "(default N(0, I), or the --init law).")
    distil: bool = _opt(False, "particles: afterwards fit a generator to the particles "
                        "set-wise (a sampler).")
    distil_iterations: int = _opt(2000, "particles: steps of the distillation fit.")
    log: str = _opt("jsonl", "where metrics go besides metrics.jsonl (always written): "
                    "jsonl (nowhere else) or tensorboard (<run>/tensorboard; needs "
                    "pip install 'ganflow[tensorboard]').")

    def __post_init__(self) -> None:
        method = get_method(self.method)  # raises on an unknown name, listing the known ones
        # the checks below read every option: one not set yet (None) is checked as the
        # value it takes on point data, and every value again once resolved
        options = asdict(self)
        cfg = SimpleNamespace(**{**options, **{k: v for k, v in method.defaults_for(
            image=False).items() if options[k] is None}})
        _validate(cfg)

    def resolved(self, data: Dataset) -> TrainConfig:
        """This config with the data- and method-dependent defaults (``None``) filled in."""
        image = data.image_shape is not None
        auto = {**get_method(self.method).defaults_for(image),
                "latent_dim": 16 if image else (2 if data.dim <= 2 else data.dim)}
        fill = {k: v for k, v in auto.items() if getattr(self, k) is None}
        if self.lr_decay_iters == 0:
            fill["lr_decay_iters"] = fill.get("iterations", self.iterations)
        return replace(self, **fill) if fill else self

    def step_config(self, length_scale: float) -> StepConfig:
        """The per-iteration options (:class:`StepConfig`) of this resolved config."""
        keys = {f.name for f in fields(StepConfig)} - {"length_scale", "method"}
        return StepConfig(length_scale=length_scale,
                          method=get_method(self.method).step_method or self.method,
                          **{k: getattr(self, k) for k in keys})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict) -> TrainConfig:
        """From a config.json (or any mapping of field names); unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = set(obj) - known
        if unknown:
            raise GanflowError(
                f"unknown config keys {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**obj)

    @classmethod
    def options(cls) -> list[tuple[str, Any, str]]:
        """(field name, default, help) of every ``ganflow train`` option, in order."""
        return [(f.name, f.default if f.default is not MISSING else None, f.metadata["help"])
                for f in fields(cls) if f.metadata.get("cli", True)]


def _validate(self) -> None:
    """Refuse bad values: ``self`` is a config (or a view of one) with every option set."""
    for name, allowed in (("optimizer", OPTIMIZERS), ("activation", sorted(ACTIVATIONS)),
                          ("log", LOGGERS), ("fit_optimizer", (None, *OPTIMIZERS))):
        if getattr(self, name) not in allowed:
            raise GanflowError(f"unknown {flag(name)} {getattr(self, name)!r}: expected "
                               f"one of {list(allowed)}")
    check_step_options(self, flag)  # pairing, divergence, fit solver, faithful knobs
    for name in ("lr_g", "lr_d"):
        _check_positive(self, name)
    for name in ("lr_decay", "eps_decay"):
        v = getattr(self, name)
        if not (isinstance(v, int | float) and 0 < v <= 1):
            raise GanflowError(f"{flag(name)} must be in (0, 1], got {v!r}")
    if not (0 <= self.beta1 < 1):
        raise GanflowError(f"--beta1 must be in [0, 1), got {self.beta1!r}")
    if self.latent_dim is not None:  # the one option resolved from the data's dimension
        _check_int(self, "latent_dim", 1)
    for name in ("width", "iterations", "fit_steps", "d_steps", "batch_size", "eval_every",
                 "calib_max_steps", "fit_max_steps", "particles", "distil_iterations",
                 "chain_every"):
        _check_int(self, name, 1)
    for name, low in (("eval_samples", 2), ("w2_samples", 2), ("depth", 0),
                      ("lr_decay_iters", 0), ("d_warmup", 0), ("repair_every", 0)):
        _check_int(self, name, low)
    if not (isinstance(self.fit_nearest, int | float) and 0 <= self.fit_nearest < math.inf):
        raise GanflowError(f"--fit-nearest must be a finite number >= 0, got "
                           f"{self.fit_nearest!r}")
    if self.fit_nearest > 0 and self.method != "flow-map":
        raise GanflowError(f"--fit-nearest is a term of flow-map's regression; --method "
                           f"{self.method!r} has none (use --method flow-map)")
    if self.chain_every != 1 and self.method != "flow-chain":
        raise GanflowError(f"--chain-every thins flow-chain's record of D; --method "
                           f"{self.method!r} keeps none (use --method flow-chain)")
    if self.log == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise GanflowError("--log tensorboard needs the tensorboard package: pip install "
                           "'ganflow[tensorboard]' (or use --log jsonl)")
    get_method(self.method).check(self)
    parse_device(self.device)


def _check_positive(cfg: TrainConfig, name: str) -> None:
    v = getattr(cfg, name)
    if not (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            and v > 0):
        raise GanflowError(f"{flag(name)} must be a positive finite number, got {v!r}")


def _check_int(cfg: TrainConfig, name: str, low: int) -> None:
    v = getattr(cfg, name)
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise GanflowError(f"{flag(name)} must be {what}, got {v!r}")


def parse_device(text: str) -> torch.device:
    """``--device`` as a torch.device; refuses unknown names and CUDA where there is none."""
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise GanflowError(f"unknown --device {text!r}: expected cpu, cuda, cuda:N, mps"
                           ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GanflowError(f"--device {text!r} asked for, but CUDA is not available here; "
                           "use --device cpu")
    return dev
