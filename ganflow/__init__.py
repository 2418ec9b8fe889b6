r"""ganflow: GANs as gradient flows (Huang & Zhang, JMLR 2023).

Learn a data density by simulating the Jensen-Shannon gradient flow, ODE (2), whose
density solves the nonlinear Fokker-Planck equation (25); Algorithm 1 (a GAN) is its
particle solver. See THEORY.md for the equations cited in the docstrings.
"""

from ._errors import GanflowError, NewtonConvergenceError
from .divergences import CHI2, JSD, KL, NS, Divergence, get_divergence
from .grid import Grid
from .pde import FokkerPlanckSolution, solve_fokker_planck
from .targets import GaussianMixture, grid25, load_target, named_targets, ring8

__version__ = "0.1.0"

__all__ = [
    "CHI2",
    "Divergence",
    "FokkerPlanckSolution",
    "GanflowError",
    "GaussianMixture",
    "Grid",
    "JSD",
    "KL",
    "NS",
    "NewtonConvergenceError",
    "get_divergence",
    "grid25",
    "load_target",
    "named_targets",
    "ring8",
    "solve_fokker_planck",
]
