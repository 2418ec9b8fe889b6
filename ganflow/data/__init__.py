r"""Data: the training samples of :math:`\rho_d` (:mod:`.tables`: mixtures, sample-only
benchmarks, user tables; :mod:`.images`: image data sets) and :func:`load_data`, which
resolves any ``--data`` spec (:mod:`.load`)."""

from .load import data_names, load_data
from .tables import MIN_TABLE_ROWS, Dataset

__all__ = ["MIN_TABLE_ROWS", "Dataset", "data_names", "load_data"]
