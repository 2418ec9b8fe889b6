r"""Training runs: options (:class:`TrainConfig`), methods (one file each in
``methods/``), the loop, checkpoints, logging, and the run folder (:class:`Run`)."""

from .._errors import TrainingDivergedError
from .config import TrainConfig
from .loop import TrainResult
from .methods import Method, get_method, method_names, register_method
from .reading import read_metrics
from .run import Run, load_run, plot_run, resume, run_options, sample_run, train

__all__ = [
    "Method",
    "Run",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "get_method",
    "load_run",
    "method_names",
    "plot_run",
    "read_metrics",
    "register_method",
    "resume",
    "run_options",
    "sample_run",
    "train",
]
