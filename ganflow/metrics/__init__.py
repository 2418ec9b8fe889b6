r"""Metrics of samples against a target: mode metrics, energy distance and W2
(:mod:`.samples`), density metrics on a grid or by KDE (:mod:`.density`), image features
of ganflow's own classifier (:mod:`.features`), and :func:`evaluate_samples`, which picks
the right ones for a data set (:mod:`.evaluate`). Every function takes tensors, arrays or
lists of shape (n, d) (one check: ``_coerce.as_samples``) and returns numbers or a dict
of numbers."""

from .evaluate import evaluate_samples, format_evaluation
from .samples import (
    HQ_STDS,
    QUALITY_BAR,
    energy_distance,
    first_at_quality_bar,
    mode_metrics,
    mode_widths,
    w2,
)

__all__ = [
    "HQ_STDS",
    "QUALITY_BAR",
    "energy_distance",
    "evaluate_samples",
    "first_at_quality_bar",
    "format_evaluation",
    "mode_metrics",
    "mode_widths",
    "w2",
]
