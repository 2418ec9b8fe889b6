r"""ganflow: GANs as gradient flows (Huang & Zhang, JMLR 2023).

Learn a data density by simulating the Jensen-Shannon gradient flow, ODE (2), whose
density solves the nonlinear Fokker-Planck equation (25); Algorithm 1 (a GAN) is its
particle solver. See docs/theory.md for the equations cited in the docstrings.
"""

from . import _interrupt

if _interrupt.is_command_line():
    # before the imports below (torch: seconds): a Ctrl-C now prints one line, not a
    # traceback; a library user's process is left alone
    _interrupt.install()

from ._errors import GanflowError, NewtonConvergenceError, TrainingDivergedError  # noqa: E402
from .algorithm import StepConfig, algorithm_step
from .data import Dataset, load_data
from .divergences import CHI2, JSD, KL, NS, Divergence, get_divergence
from .drift_chain import DriftChain
from .flow_map import flow_map_step, initial_pairs
from .generator_init import fit_generator_to_law
from .grid import Grid
from .metrics import evaluate_samples
from .particle_flow import distil_step, particle_step
from .particles import ParticleSolution, l1_gap_to_pde, particle_drift, simulate_particles
from .pde import FokkerPlanckSolution, solve_fokker_planck
from .targets import GaussianMixture, grid25, load_target, named_targets, ring8
from .tracking import TrackingResult, track_run
from .training import (
    Run,
    TrainConfig,
    TrainResult,
    load_run,
    plot_run,
    read_metrics,
    resume,
    sample_run,
    train,
)

__version__ = "0.1.0"

__all__ = [
    "CHI2",
    "Dataset",
    "Divergence",
    "DriftChain",
    "FokkerPlanckSolution",
    "GanflowError",
    "GaussianMixture",
    "Grid",
    "JSD",
    "KL",
    "NS",
    "NewtonConvergenceError",
    "ParticleSolution",
    "Run",
    "StepConfig",
    "TrainConfig",
    "TrackingResult",
    "TrainResult",
    "TrainingDivergedError",
    "algorithm_step",
    "distil_step",
    "evaluate_samples",
    "fit_generator_to_law",
    "flow_map_step",
    "get_divergence",
    "grid25",
    "initial_pairs",
    "l1_gap_to_pde",
    "load_data",
    "load_run",
    "load_target",
    "named_targets",
    "particle_drift",
    "particle_step",
    "plot_run",
    "read_metrics",
    "resume",
    "ring8",
    "sample_run",
    "simulate_particles",
    "solve_fokker_planck",
    "track_run",
    "train",
]
