"""What every command shares: the Typer app, the one error handler, output checks."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from .._errors import GanflowError, NewtonConvergenceError, TrainingDivergedError
from .._io import check_writable, write_json_atomic

app = typer.Typer(
    name="ganflow",
    help="GANs as gradient flows: Fokker-Planck ground truth, particle flows, Algorithm 1.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"ganflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="print the version and exit.")] = False,
) -> None:
    """GANs as gradient flows: Fokker-Planck ground truth, particle flows, Algorithm 1."""


TargetOpt = Annotated[
    str,
    typer.Option(
        "--target",
        help="rho_d: ring8, grid25, bimodal, barrier, four2d, normal:MEAN:STD, or a "
        "JSON file {weights, means, stds}.",
    ),
]
InitOpt = Annotated[str, typer.Option("--init", help="rho_0, in the same forms as --target.")]
DivOpt = Annotated[
    str, typer.Option("--divergence", help="the flow: jsd (the paper), kl, ns, chi2.")
]
BoxOpt = Annotated[
    float | None,
    typer.Option("--box", help="half-width L of the box [-L, L]^d (default: means +- 6 std)."),
]
CellsOpt = Annotated[int, typer.Option("--cells", help="cells per dimension.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="write results as JSON here.")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="write a PNG figure here.")]




def fail(exc: BaseException | str, code: int = 2):
    """Print ``error: <message>`` and exit with ``code``."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


@contextmanager
def exit_on_error():
    """The one error handler of the commands: bad input exits 2, a failed Newton solve
    or a diverged training run exits 1, each with one ``error: <message>`` line."""
    try:
        yield
    except GanflowError as exc:
        fail(exc)
    except NewtonConvergenceError as exc:
        fail(exc, 1)
    except TrainingDivergedError as exc:
        fail(f"{exc}; the last good checkpoint is kept in its run folder", 1)


def check_outputs(json_out: Path | None = None, plot: Path | None = None) -> None:
    """Refuse an output that cannot be written BEFORE any work (a solve, an evaluation)."""
    if json_out is not None:
        check_writable(json_out, "--json")
    if plot is not None:
        from matplotlib.backend_bases import FigureCanvasBase

        kinds = FigureCanvasBase.get_supported_filetypes()
        ext = plot.suffix.lower().lstrip(".")
        if ext not in kinds:
            raise GanflowError(
                f"--plot {str(plot)!r}: expected an image file ending in one of "
                f"{', '.join('.' + k for k in sorted(kinds))}; got "
                f"{'.' + ext if ext else 'no extension'}"
            )
        check_writable(plot, "--plot")


def write_json(path: Path, obj) -> None:
    """Write --json (checked writable up front; a full disk can still fail: one line)."""
    try:
        write_json_atomic(path, obj)
    except OSError as exc:
        fail(f"cannot write --json {str(path)!r}: {exc.strerror or exc}", 1)


def check_device(text: str) -> None:
    """A clean error for a device torch does not know or this machine does not have."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise GanflowError(
            f"unknown --device {text!r}: expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GanflowError(f"--device {text!r} asked for, but CUDA is not available here; "
                               "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GanflowError(f"--device {text!r}: this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise GanflowError(f"--device {text!r} asked for, but MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise GanflowError(f"unknown --device {text!r}: expected cpu, cuda, cuda:N or mps")




def fmt(x: float) -> str:
    return f"{x:.3e}" if math.isfinite(x) else str(x)
