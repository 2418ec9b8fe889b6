r"""Training methods, one file each, registered by name for ``--method``
(:mod:`ganflow.training.methods.base` says what a method implements)."""

from . import flow_chain, flow_map, generator, particles  # noqa: F401  (registers the methods)
from .base import Method, get_method, method_names, register_method

__all__ = ["Method", "get_method", "method_names", "register_method"]
