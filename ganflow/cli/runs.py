"""Training commands: ``train`` (its options generated from
:class:`ganflow.training.TrainConfig`), ``sample`` and ``plot``."""

# No "from __future__ import annotations": typer reads the Annotated options at
# definition time.
import inspect
import io
import json
import os
import typing
from pathlib import Path
from typing import Annotated

import tomllib
import typer

from .._errors import GanflowError
from ._common import exit_on_error, fail

# the options of `train` that apply to a resume; every other one is the run's own, read
# from its config.json, and given beside --resume it would be silently ignored
_RESUME_OPTIONS = ("resume", "out", "iterations", "device", "threads", "progress")

# options of the command itself, after TrainConfig's own
_COMMAND_OPTIONS = [
    ("config", Path | None, None, "--config", "take the options from this file: a run's "
     "config.json, or a JSON/TOML file of options; flags given beside it override it."),
    ("threads", int, 1, "--threads", "CPU threads for torch (small networks run fastest "
     "on 1)."),
    ("out", Path | None, None, "--out", "new run folder (default: runs/<data>-<method>-"
     "s<seed>)."),
    ("resume", Path | None, None, "--resume", "continue this run folder (other options but "
     "--iterations and --device are taken from it)."),
    ("progress", bool, True, "--progress/--no-progress", "show a progress bar."),
]


def _given(ctx: typer.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src.name in ("COMMANDLINE", "ENVIRONMENT")


def _refuse_options_beside_resume(ctx: typer.Context) -> None:
    extra = [p.opts[0] for p in ctx.command.params
             if p.name not in _RESUME_OPTIONS and p.opts and _given(ctx, p.name)]
    if extra:
        raise GanflowError(
            f"--resume continues a run with the options of its config.json; {', '.join(extra)} "
            "would be ignored: remove them (only --iterations, --device, --threads and "
            "--progress apply to a resume), or train a new run with --out")


def _read_config_file(path: Path) -> dict:
    """Options from a run's config.json, a JSON object or a TOML table of options."""
    from ..training import run_options

    if path.name == "config.json" and (path.parent / "metrics.jsonl").is_file():
        # a run folder's: read as the run trained, even by an older ganflow
        return run_options(path.parent)
    try:
        text = path.read_text()
        obj = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:  # JSONDecodeError and TOMLDecodeError included
        raise GanflowError(f"--config {str(path)!r} cannot be read as "
                           f"{'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: "
                           f"{exc}") from None
    if not isinstance(obj, dict):
        raise GanflowError(f"--config {str(path)!r} must hold an object of options, got "
                           f"{type(obj).__name__}")
    return obj


def _config_from(ctx: typer.Context, options: dict):
    """The run's TrainConfig: --config's options, overridden by the flags given."""
    from ..training import TrainConfig

    given = {k: v for k, v in options.items() if _given(ctx, k)}
    if options["config"] is None:
        return TrainConfig.from_dict({k: options[k] for k, _, _ in TrainConfig.options()})
    base = _read_config_file(options["config"])
    if "iterations" in given and base.get("lr_decay_iters") == base.get("iterations"):
        base.pop("lr_decay_iters", None)  # the decays follow the new horizon
    fields = {k for k, _, _ in TrainConfig.options()}
    return TrainConfig.from_dict({**base, **{k: v for k, v in given.items() if k in fields}})


def _report(result) -> None:
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports for all
    m = result.metrics
    shown = ", ".join(f"{k} {m[k]:.4g}" if isinstance(m[k], float) else f"{k} {m[k]}"
                      for k in ("modes", "hq", "mode_kl", "frechet_distance", "class_coverage",
                                "energy", "w2") if k in m)
    typer.echo(f"{result.status} at iteration {result.iteration} (flow time "
               f"{result.flow_time:.4g}, {result.seconds:.1f} s): {shown}")
    typer.echo(f"run folder: {result.run_dir}")
    if result.status == "interrupted":
        typer.echo(f"checkpoint saved; continue with: ganflow train --resume "
                   f"{result.run_dir}", err=True)
        raise typer.Exit(130)


def _train(ctx: typer.Context, **options) -> None:
    """Train a generator: by default flow-chain (G_0 moved by the recorded steps of its
    particles' flow), or Algorithm 1 (--method flow), a GAN baseline, particles, flow-map."""
    import torch

    from .. import training

    torch.set_num_threads(max(1, options["threads"]))
    with exit_on_error():
        if options["resume"] is not None:
            if options["out"] is not None:
                raise GanflowError("give --resume RUN or --out DIR, not both")
            _refuse_options_beside_resume(ctx)
            result = training.resume(
                options["resume"], iterations=options["iterations"],
                device=options["device"] if _given(ctx, "device") else None,
                progress=options["progress"])
        else:
            cfg = _config_from(ctx, options)
            if cfg.method in ("gan", "gan-ns") and _given(ctx, "divergence"):
                # the baselines' generator losses ignore it; only `ganflow track` reads it
                typer.echo(f"warning: --divergence {cfg.divergence} does not change --method "
                           f"{cfg.method} training (its generator loss is fixed); it only "
                           "names the flow `ganflow track` compares the run with", err=True)
            result = training.train(cfg, out=options["out"], progress=options["progress"])
    _report(result)


def _train_command():
    """``_train`` with one Typer option per TrainConfig field (and the command's own)."""
    from ..training import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=typer.Context)]
    for name, default, help_text in TrainConfig.options():
        tp = hints[name]
        flag = "--" + name.replace("_", "-")
        decl = f"{flag}/--no-{flag[2:]}" if tp is bool else flag
        params.append(inspect.Parameter(
            name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
            annotation=Annotated[tp, typer.Option(decl, help=help_text)]))
    for name, tp, default, decl, help_text in _COMMAND_OPTIONS:
        params.append(inspect.Parameter(
            name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
            annotation=Annotated[tp, typer.Option(decl, help=help_text)]))

    def train(ctx: typer.Context, **options) -> None:
        _train(ctx, **options)

    train.__doc__ = _train.__doc__
    train.__signature__ = inspect.Signature(params)
    train.__annotations__ = {}
    return train


train = _train_command()


def _check_output_file(out: Path, force: bool) -> None:
    """Before any work: ``out`` is a file we may write (an existing one only with
    ``--force``), in a writable folder."""
    if out.is_dir():
        raise GanflowError(f"--out {str(out)!r} is a folder; give a .npy file name")
    if (out.exists() or out.is_symlink()) and not force:
        raise GanflowError(f"--out {str(out)!r} exists; add --force to overwrite it")
    probe = out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise GanflowError(f"cannot write --out {str(out)!r}: {str(probe)!r} is not a "
                           "writable folder")


def sample(
    run: Annotated[Path, typer.Argument(help="a run folder of ganflow train.")],
    n: Annotated[int, typer.Option("--n", help="number of samples.")] = 1000,
    out: Annotated[Path, typer.Option("--out", help="output .npy file (shape (n, d)).")] = Path(
        "samples.npy"),
    seed: Annotated[int, typer.Option("--seed", help="seed of the latent draw.")] = 0,
    snapshot: Annotated[int | None, typer.Option(
        "--snapshot", help="draw from the generator saved at this evaluation's iteration "
        "(snapshots/G-*, P-*, C-*; default: the latest checkpoint).")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite --out if it exists.")] = False,
    progress: Annotated[bool, typer.Option(
        "--progress/--no-progress", help="a bar while a flow-chain run moves the samples "
        "through its recorded steps (minutes for a long chain).")] = True,
) -> None:
    """Draw samples from a trained run's generator (or its particles) into a .npy file."""
    import numpy as np

    from .._io import write_bytes_atomic
    from ..training import sample_run

    with exit_on_error():
        if out.suffix.lower() != ".npy":
            raise GanflowError(f"--out must end in .npy, got {str(out)!r}")
        _check_output_file(out, force)  # before loading the run
        x = sample_run(run, n, seed=seed, snapshot=snapshot, progress=progress).numpy()
    buf = io.BytesIO()
    np.save(buf, x)
    try:
        write_bytes_atomic(out, buf.getvalue())  # nothing half-written on a full disk
    except OSError as exc:
        fail(f"cannot write {str(out)!r}: {exc.strerror or exc}", 1)
    typer.echo(f"wrote {out} (shape {x.shape})")


def plot(
    run: Annotated[Path, typer.Argument(help="a run folder of ganflow train.")],
) -> None:
    """Redraw a run's figures (samples over the target, metric curves) into samples/."""
    from ..training import plot_run

    with exit_on_error():
        paths = plot_run(run)
    for p in paths:
        typer.echo(f"wrote {p}")
