r"""Data sets for training: the samples of :math:`\rho_d` (docs/theory.md section 1);
this module holds :class:`Dataset`, the sample-only benchmarks and user tables
(:func:`ganflow.data.load_data` is the entry point).

Algorithm 1 only ever *samples* :math:`\rho_d` (step 1 of section 5), so a data set is
anything that can draw ``n`` points of shape (n, d) reproducibly from a
``torch.Generator``. Three kinds are accepted by :func:`load_data`:

* Gaussian mixtures (everything :func:`ganflow.targets.load_target` accepts: ``ring8``,
  ``grid25``, ``bimodal``, ``normal:MEAN:STD``, a JSON file). These carry their exact
  density in :attr:`Dataset.mixture`, which the mode metrics need.
* Sample-only 2-D benchmarks: ``swissroll``, ``moons``, ``checkerboard``, ``circles``.
* A user table: a ``.npy`` or ``.csv`` file of shape (n, d), sampled with replacement.
* Images (:mod:`ganflow.data.images`): ``digits``, ``mnist``, ``mnist:PATH``, a ``.npz`` /
  ``.pkl.gz`` file or a folder of PNGs. Samples are flattened images (n, C*H*W) in
  [-1, 1]; :attr:`Dataset.image_shape` is (C, H, W).

Every data set has a :attr:`Dataset.length_scale`: the width of its finest feature,
used by the faithful trainer's CFL-like step control (targets move at most a fraction
of it per step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._errors import GanflowError
from ..targets import GaussianMixture

__all__ = ["MIN_TABLE_ROWS", "SAMPLE_ONLY", "Dataset", "mixture_dataset", "table_dataset"]

# A table with fewer rows cannot be told apart from its own resampling noise; 2 rows is
# also the least for a length scale (a nearest-neighbour distance).
MIN_TABLE_ROWS = 10

Sampler = Callable[[int, torch.Generator | None], torch.Tensor]


@dataclass
class Dataset:
    r"""Samples of :math:`\rho_d`.

    Attributes:
        name: a label for run folders and plots.
        dim: d, the dimension of a sample.
        length_scale: width of the finest feature (mixture: smallest std; table: median
            nearest-neighbour distance), in data units.
        mixture: the exact density when known (a Gaussian mixture), else ``None``.
        image_shape: (C, H, W) when a sample is a flattened image (then d = C*H*W and
            values lie in [-1, 1]), else ``None``.
    """

    name: str
    dim: int
    length_scale: float
    sampler: Sampler = field(repr=False)
    mixture: GaussianMixture | None = None
    image_shape: tuple[int, int, int] | None = None

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples as a float32 CPU tensor of shape (n, d).

        Deterministic given the state of ``generator`` (sampling happens on the CPU so
        the numbers do not depend on the training device)."""
        if int(n) != n or n < 0:
            raise GanflowError(f"number of samples must be a non-negative integer, got {n!r}")
        x = self.sampler(int(n), generator)
        return x.to(torch.float32)


# ------------------------------------------------------------------ 2-D benchmarks
def _uniform(n: int, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64)


def _normal(n: int, d: int, g: torch.Generator | None) -> torch.Tensor:
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def _swissroll(n: int, g: torch.Generator | None, noise: float = 0.05) -> torch.Tensor:
    # The classic roll t (cos t, sin t), t in [1.5 pi, 4.5 pi], scaled to about [-2, 2]^2.
    t = 1.5 * math.pi * (1 + 2 * _uniform(n, g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 7.0
    return x + noise * _normal(n, 2, g)


def _moons(n: int, g: torch.Generator | None, noise: float = 0.05) -> torch.Tensor:
    # Two interleaved half circles (as scikit-learn's make_moons), centred at the origin.
    upper = _uniform(n, g) < 0.5
    a = math.pi * _uniform(n, g)
    x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
    y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.5
    return pts + noise * _normal(n, 2, g)


def _circles(n: int, g: torch.Generator | None, noise: float = 0.03) -> torch.Tensor:
    # Two concentric circles of radii 2 and 1, equal mass.
    r = torch.where(_uniform(n, g) < 0.5, 2.0, 1.0)
    a = 2 * math.pi * _uniform(n, g)
    return torch.stack([r * torch.cos(a), r * torch.sin(a)], 1) + noise * _normal(n, 2, g)


def _checkerboard(n: int, g: torch.Generator | None) -> torch.Tensor:
    # Uniform on the 8 black cells of a 4x4 board on [-2, 2]^2 (cells where i + j is even).
    cell = torch.randint(0, 8, (n,), generator=g)
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    return torch.stack([col + u[:, 0], row + u[:, 1]], 1) - 2.0


# name -> (sampler, length scale): the noise std, or (checkerboard) a tenth of a cell,
# the scale on which a sample can be visibly off the pattern.
SAMPLE_ONLY: dict[str, tuple[Sampler, float]] = {
    "swissroll": (_swissroll, 0.05),
    "moons": (_moons, 0.05),
    "circles": (_circles, 0.03),
    "checkerboard": (_checkerboard, 0.1),
}


# ------------------------------------------------------------------ user tables
def _read_table(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if not path.exists():
        raise GanflowError(f"data file {str(path)!r} does not exist")
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            # A header line (column names) is skipped when it does not parse as numbers.
            try:
                arr = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
            except ValueError:
                arr = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2, skiprows=1)
    except (OSError, ValueError, EOFError) as exc:
        raise GanflowError(
            f"cannot read data file {str(path)!r} as a numeric {suffix} table of shape (n, d): "
            f"{exc}"
        ) from exc
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise GanflowError(
            f"data file {str(path)!r} must hold real numbers, got dtype {arr.dtype}"
        )
    return np.asarray(arr, dtype=np.float64)


def table_dataset(path: Path) -> Dataset:
    arr = _read_table(path)
    if arr.ndim == 1:
        arr = arr[:, None]  # a column of numbers is n samples in 1-D
    if arr.ndim != 2:
        raise GanflowError(
            f"data file {str(path)!r} must be a table of shape (n, d), got shape {arr.shape}"
        )
    n, d = arr.shape
    if d == 0:
        raise GanflowError(f"data file {str(path)!r} has no columns (shape {arr.shape})")
    if n < MIN_TABLE_ROWS:
        raise GanflowError(
            f"data file {str(path)!r} has {n} rows; at least {MIN_TABLE_ROWS} are needed"
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise GanflowError(
            f"data file {str(path)!r} contains {int(bad.sum())} NaN/Inf values "
            f"(first at row {r}, column {c}); expected finite numbers"
        )
    table = torch.from_numpy(arr)

    def sampler(k: int, g: torch.Generator | None) -> torch.Tensor:
        return table[torch.randint(0, n, (k,), generator=g)]

    return Dataset(path.stem, d, _nn_length_scale(arr), sampler)


def _nn_length_scale(arr: np.ndarray, max_rows: int = 2000) -> float:
    """Median nearest-neighbour distance (on at most ``max_rows`` rows), floored so that a
    table of repeated points still has a positive scale."""
    from scipy.spatial import cKDTree

    sub = arr[:: max(1, len(arr) // max_rows)]
    dist, _ = cKDTree(sub).query(sub, k=2)
    scale = float(np.median(dist[:, 1]))
    spread = float(np.mean(arr.std(0)))
    return max(scale, 1e-3 * spread, 1e-12)


def mixture_dataset(mixture: GaussianMixture) -> Dataset:
    def sampler(n: int, g: torch.Generator | None) -> torch.Tensor:
        return mixture.sample(n, generator=g, dtype=torch.float64)

    return Dataset(mixture.name, mixture.dim, mixture.length_scale, sampler, mixture)
