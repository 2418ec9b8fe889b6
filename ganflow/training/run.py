r"""Runs as the user sees them: :func:`train` a new one, :func:`resume` one, and
:func:`load_run` one to sample, plot or inspect (:class:`Run`).

A run folder holds::

    config.json        every option, resolved (TrainConfig)
    metrics.jsonl      one JSON object per evaluation (ganflow.training.evaluate)
    checkpoints/       state-<it>.safetensors + state-<it>.json + latest.json (the commit)
    snapshots/         G-<it>.safetensors (the generator), P-<it> (particles) or C-<it> (a
                       flow-chain's length), per evaluation
    samples/           PNG figures (samples over the target, metric curves, image grids)
    tensorboard/       with --log tensorboard
    summary.md         the outcome in a few lines
    .lock              while a writer (train, --resume) runs: its pid and host
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from .._errors import GanflowError
from .._io import write_json_atomic
from ..data import Dataset, load_data
from ..run_plots import draw_run_figures as _draw_figures
from . import _runfolder
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .distributed import DistContext, distributed_session
from .loop import TrainResult, run_loop
from .methods.base import SNAPSHOT_PREFIXES
from .reading import read_metrics
from .session import Session

__all__ = ["Run", "load_run", "plot_run", "resume", "sample_run", "train"]


class Run:
    """A run folder at its newest loadable checkpoint (read-only: no lock is taken)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    path = property(lambda self: self.session.run_dir, doc="the run folder")
    config = property(lambda self: self.session.cfg, doc="the resolved TrainConfig")
    data = property(lambda self: self.session.data, doc="the training Dataset")
    iteration = property(lambda self: self.session.iteration)
    flow_time = property(lambda self: self.session.flow_time)
    seconds = property(lambda self: self.session.seconds, doc="wall time trained so far")
    G = property(lambda self: self.session.G, doc="the generator (torch.nn.Module)")
    D = property(lambda self: self.session.D, doc="the discriminator's logit f")
    particles = property(lambda self: getattr(self.session.method, "particles", None),
                         doc="a particle or flow-map run's particles (N, d), else None")
    latents = property(lambda self: getattr(self.session.method, "latents", None),
                       doc="a flow-map run's z_i (N, latent_dim), else None")

    @property
    def has_generator(self) -> bool:
        """Whether G is the model's sampler (a particle run's only once distilled)."""
        return self.session.method.has_generator

    def metrics(self) -> list[dict]:
        """The rows of metrics.jsonl."""
        return read_metrics(self.path)

    def snapshots(self) -> list[tuple[int, Path]]:
        """(iteration, path) of every snapshot, oldest first."""
        found = []
        for p in (self.path / "snapshots").glob(f"[{SNAPSHOT_PREFIXES}]-*.safetensors"):
            try:
                found.append((int(p.stem.split("-")[1]), p))
            except ValueError:
                continue
        return sorted(found)

    def sample_latent(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """n latent vectors z ~ N(0, I) on the run's device."""
        return self.session.sample_latent(n, gen or torch.Generator().manual_seed(0))

    def sample(self, n: int, *, seed: int = 0, snapshot: int | None = None,
               progress: bool = False) -> torch.Tensor:
        """``n`` samples (n, d), float32 on the CPU: from the generator (a particle run:
        its distilled generator, else ``n`` distinct particles), or from the one saved at
        iteration ``snapshot`` (``snapshots/G-<it>``, a particle run's ``P-<it>``, a flow-chain
        run's ``C-<it>``). ``progress``: a bar while a flow-chain run moves the samples
        through its recorded steps."""
        if int(n) != n or n < 1:
            raise GanflowError(f"--n must be a positive integer, got {n!r}")
        gen = torch.Generator().manual_seed(seed)
        method = self.session.method
        method.progress = progress
        try:
            if snapshot is None:
                return self.session.draw(int(n), gen, use_generator=self.has_generator).cpu()
            return self._sample_snapshot(int(n), gen, snapshot)
        finally:
            method.progress = False

    def _sample_snapshot(self, n: int, gen: torch.Generator, iteration: int) -> torch.Tensor:
        snaps = self.path / "snapshots"
        kind = self.session.method.snapshot_prefix
        path = snaps / f"{kind}-{iteration:08d}.safetensors"
        if not path.is_file():
            saved = [it for it, p in self.snapshots() if p.name.startswith(kind)]
            raise GanflowError(
                f"--snapshot {iteration}: no snapshot at that iteration in {str(snaps)!r}; "
                f"saved iterations: {saved}")
        tensors = load_file(str(path))
        if kind == "P":
            x = tensors["particles"]
            if n > x.shape[0]:
                raise GanflowError(
                    f"snapshot {path.name} holds {x.shape[0]} particles; asked for {n} (--n)")
            return x[torch.randperm(x.shape[0], generator=gen)[:n]]
        return self.session.method.snapshot_sampler(tensors)(n, gen).cpu()

    def plot(self) -> list[Path]:
        """(Re)draw the run's figures into samples/ (:func:`ganflow.run_plots.draw_run_figures`)."""
        return _draw_figures(self)


def run_options(run_dir: str | Path) -> dict:
    r"""The options a run folder trained with: its config.json as a dict of TrainConfig
    fields. Options added to ganflow after the run was written, and missing from its
    file, are filled with what the run did then (not with today's defaults): a flow-map
    run from before ``--repair-every`` and ``--fit-loss`` never re-paired and fitted by
    the MSE. A particles or flow-chain run's ``--fit-steps`` and ``--pairing``, which it
    ignored then and which are refused now, read as 1 and index."""
    run_dir = Path(run_dir)
    try:
        obj = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GanflowError(f"{str(run_dir)!r} is not a ganflow run folder: {exc}") from exc
    if not isinstance(obj, dict):
        raise GanflowError(f"{str(run_dir / 'config.json')!r} is not an object of options")
    if obj.get("method") == "flow-map":
        obj.setdefault("repair_every", 0)
        obj.setdefault("fit_loss", "mse")
    if obj.get("method") in ("particles", "flow-chain"):
        # these fit no generator: older ganflow took (and ignored) a fit's --fit-steps
        # and --pairing, which are refused now
        obj.update({k: v for k, v in (("fit_steps", 1), ("pairing", "index")) if k in obj})
    return obj


def _open(run_dir: str | Path, ctx: DistContext | None = None, *, resuming: bool = False,
          **overrides) -> Session:
    """The session of a run folder at its latest checkpoint. ``resuming`` (training on)
    requires the run's world size; reading works on one process for any run."""
    run_dir = Path(run_dir)
    _runfolder.check_run_folder(run_dir)  # no symlinked subfolders: nothing outside it
    obj = run_options(run_dir)
    cfg = TrainConfig.from_dict({**obj, **{k: v for k, v in overrides.items() if v is not None}})
    s = Session(cfg, run_dir, load_data(cfg.data), ctx)
    try:
        load_checkpoint(s, resuming=resuming)
    except _runfolder.NoCheckpointError:
        if not resuming:
            raise
        # killed after config.json, before its first checkpoint: nothing was trained yet,
        # so the run starts over from its config (as `train` would have)
        if s.ctx.is_main:
            _runfolder.note(f"{str(run_dir)!r} has no checkpoint yet (its run was stopped "
                            "before the first one): starting it over from config.json")
        s.start()
    s.ctx.broadcast_module(s.G)  # identical already; a cheap guarantee
    s.ctx.broadcast_module(s.D)
    return s


def load_run(run_dir: str | Path, *, device: str = "cpu") -> Run:
    """Open a run folder for reading (sampling, plotting, tracking) on ``device``."""
    return Run(_open(run_dir, device=device))


def _fresh_run_dir(cfg: TrainConfig, data: Dataset) -> Path:
    base = Path("runs") / f"{data.name}-{cfg.method}-s{cfg.seed}"
    path, k = base, 1
    while path.exists():
        path = Path(f"{base}-{k}")
        k += 1
    return path


def _end_of_run_figures(s: Session) -> None:
    Run(s).plot()


def _finish(s: Session, result: TrainResult, figures: bool) -> TrainResult:
    if figures and s.ctx.is_main and result.status != "stopped":
        try:
            _end_of_run_figures(s)
        except Exception as exc:  # a figure must never cost the run its results
            (s.run_dir / "samples").mkdir(exist_ok=True)
            (s.run_dir / "samples" / "plot-error.txt").write_text(repr(exc))
    return result


def train(
    config: TrainConfig | None = None, *, out: str | Path | None = None, progress: bool = True,
    stop_at: int | None = None, figures: bool = True,
) -> TrainResult:
    r"""Train a new run and return its :class:`TrainResult`.

    ``out`` must not exist or be an empty folder (nothing is ever overwritten); by default
    a fresh ``runs/<data>-<method>-s<seed>[-k]``. ``stop_at`` stops early (as Ctrl-C would,
    with a checkpoint) while keeping ``config.iterations`` as the run's horizon;
    ``figures`` draws samples/*.png at the end. Under ``torchrun`` (``WORLD_SIZE`` > 1)
    every process calls this and they train one run together
    (:mod:`ganflow.training.distributed`); rank 0 writes the folder.
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
                + (f", or continue it with --resume {run_dir}" if resumable else ""))
        _runfolder.check_writable_target(run_dir)  # before any long work
        s = Session(cfg, run_dir, data, ctx)  # builds everything before writing
        s.start()
        ctx.barrier()  # every rank has checked the folder before rank 0 creates it
        # rank 0 creates the folder and holds its writer's lock; a write error (full
        # disk) ends the run with one line, the last checkpoint kept
        with _runfolder.run_lock(run_dir, ctx, fresh=True), _runfolder.write_errors(run_dir):
            if ctx.is_main:
                write_json_atomic(run_dir / "config.json", asdict(s.cfg))
            return _finish(s, run_loop(s, progress=progress, stop_at=stop_at), figures)


def resume(
    run_dir: str | Path, *, iterations: int | None = None, device: str | None = None,
    progress: bool = True, stop_at: int | None = None, figures: bool = True,
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
        s = _open(run_dir, ctx, resuming=True, iterations=iterations, device=device)
        if s.iteration > s.cfg.iterations:
            raise GanflowError(
                f"run {str(run_dir)!r} is already at iteration {s.iteration}; "
                f"--iterations {s.cfg.iterations} would go back")
        ctx.barrier()  # every rank has read the folder before rank 0 rewrites its files
        with _runfolder.write_errors(run_dir):
            if ctx.is_main:
                _runfolder.rewrite_metrics(Path(run_dir) / "metrics.jsonl", s.iteration)
                write_json_atomic(Path(run_dir) / "config.json", asdict(s.cfg))
            return _finish(s, run_loop(s, progress=progress, stop_at=stop_at), figures)


def sample_run(run_dir: str | Path, n: int, *, seed: int = 0,
               snapshot: int | None = None, progress: bool = False) -> torch.Tensor:
    """Draw ``n`` samples (n, d) from a run (CPU, float32): :meth:`Run.sample`."""
    if int(n) != n or n < 1:
        raise GanflowError(f"--n must be a positive integer, got {n!r}")
    return load_run(run_dir).sample(n, seed=seed, snapshot=snapshot, progress=progress)


def plot_run(run_dir: str | Path) -> list[Path]:
    """(Re)draw the figures of a run folder: :meth:`Run.plot`."""
    return load_run(run_dir).plot()
