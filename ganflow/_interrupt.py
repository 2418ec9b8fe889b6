"""Ctrl-C in the command line outside the training loop: one line, no traceback.

``python -m ganflow`` and the ``ganflow`` script install :func:`install` before the heavy
imports (torch takes seconds to import on a busy machine, and a Ctrl-C there would
print a traceback into torch's import machinery). The SIGINT handler raises :class:`CtrlC`, which
is deliberately not a :class:`KeyboardInterrupt`: click would turn that into a bare
"Aborted!" with exit status 1. ``finally`` blocks still run, so the atomic writes of
ganflow._io remove their temp files. The training loop installs its own handler
(ganflow.training.distributed.interrupt_flag: stop between iterations, with a checkpoint) and
restores this one afterwards.
"""

from __future__ import annotations

import signal
import sys
import threading

MESSAGE = "interrupted (Ctrl-C); stopped (no file is left half-written)"
EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


class CtrlC(BaseException):  # noqa: N818 - named after the key, as KeyboardInterrupt is
    """Raised by the command line's SIGINT handler (see the module docstring)."""


def _handler(signum, frame) -> None:
    raise CtrlC


def _excepthook(exc_type, exc, tb, _default=sys.excepthook) -> None:
    if issubclass(exc_type, (CtrlC, KeyboardInterrupt)):
        sys.stderr.write(f"error: {MESSAGE}\n")
    else:
        _default(exc_type, exc, tb)


def install() -> None:
    """Ctrl-C prints one line and exits non-zero (from here on, in this process)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)
    sys.excepthook = _excepthook


def is_command_line() -> bool:
    """Is this process ``python -m ganflow ...`` or the ``ganflow`` script? (During the
    package import of ``python -m``, ``sys.argv[0]`` is ``"-m"``.)"""
    arg0 = sys.argv[0] if sys.argv else ""
    name = arg0.replace("\\", "/").rsplit("/", 1)[-1].lower()
    return arg0 == "-m" or name in ("ganflow", "ganflow.exe", "ganflow-script.py")
