"""Exceptions shared by every layer; each message names the value and what was expected."""

from __future__ import annotations


class GanflowError(ValueError):
    """Bad input: the message names the offending value and what was expected."""


class NewtonConvergenceError(RuntimeError):
    """The implicit Fokker-Planck step did not converge even after shrinking the time step."""


class TrainingDivergedError(RuntimeError):
    """A loss or a parameter became NaN/Inf; the message names the iteration and quantity."""
