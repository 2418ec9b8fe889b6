"""The ``ganflow`` command line: one Typer app; each module registers its commands."""

import sys
import traceback

import typer

from ._common import app
from .analysis import eval_, track
from .ground_truth import particles, pde
from .runs import plot, sample, train

# in the order `ganflow --help` lists them: ground truth, training, reading results
for _name, _command in (("pde", pde), ("particles", particles), ("train", train),
                        ("sample", sample), ("plot", plot), ("eval", eval_),
                        ("track", track)):
    app.command(_name)(_command)

__all__ = ["app", "main"]


def main() -> None:
    from .._interrupt import EXIT_CODE, MESSAGE, CtrlC, install

    install()  # already done by `import ganflow` for python -m ganflow / the script
    try:
        try:
            app()
        except CtrlC:
            typer.echo(f"error: {MESSAGE}", err=True)
            raise SystemExit(EXIT_CODE) from None
    except SystemExit as exc:
        # a torchrun rank must not run interpreter finalization (exit_process says why);
        # exit_process re-raises in a process that never joined a process group
        _exit(exc.code)
    except Exception:  # a bug: the traceback and status 1, as Python itself would
        traceback.print_exc()
        _exit(1)


def _exit(code: int | str | None) -> None:
    distributed = sys.modules.get("ganflow.training.distributed")
    if distributed is None:
        raise SystemExit(code)
    distributed.exit_process(code)

