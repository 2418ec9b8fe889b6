"""The ``ganflow`` command line: one Typer app; each module registers its commands."""

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
        app()
    except CtrlC:
        typer.echo(f"error: {MESSAGE}", err=True)
        raise SystemExit(EXIT_CODE) from None

