r"""A uniform cell-centred grid on the box [-L, L]^d (d = 1 or 2) and densities on it."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ._errors import GanflowError
from .targets import GaussianMixture

__all__ = ["Grid"]

# ln rho_d is floored here (rho_d >= 1e-200) so that v = u / rho_d never overflows in
# the far tails of a narrow mixture; the mass this adds is < 1e-200 * box volume.
LOG_DENSITY_FLOOR = -460.0


@dataclass(frozen=True)
class Grid:
    """``cells`` cells per dimension on [-half_width, half_width]^dim, cell-centred values."""

    dim: int
    half_width: float
    cells: int
    centres: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dim not in (1, 2):
            raise GanflowError(f"the grid solver supports dimension 1 or 2, got dim={self.dim}")
        if not (math.isfinite(self.half_width) and self.half_width > 0):
            raise GanflowError(f"box half-width L must be positive, got {self.half_width!r}")
        if int(self.cells) != self.cells or self.cells < 4:
            raise GanflowError(
                f"cells per dimension (--cells) must be an integer >= 4, got {self.cells!r}")
        h = 2 * self.half_width / self.cells
        object.__setattr__(self, "centres", -self.half_width + h * (np.arange(self.cells) + 0.5))

    @property
    def h(self) -> float:
        return 2 * self.half_width / self.cells

    @property
    def cell_volume(self) -> float:
        return self.h**self.dim

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.cells,) * self.dim

    @property
    def size(self) -> int:
        return self.cells**self.dim

    def points(self) -> np.ndarray:
        """Cell centres, shape (size, dim), in C order (x index slowest)."""
        mesh = np.meshgrid(*([self.centres] * self.dim), indexing="ij")
        return np.stack([m.reshape(-1) for m in mesh], axis=1)

    def faces(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Interior faces: (left cell, right cell, face midpoint of shape (F, dim)).

        "left/right" are the neighbours along the face's axis; walls have no faces
        (zero flux), so mass is conserved by construction.
        """
        idx = np.arange(self.size).reshape(self.shape)
        pts = self.points().reshape(*self.shape, self.dim)
        lefts, rights, mids = [], [], []
        for axis in range(self.dim):
            lo = [slice(None)] * self.dim
            hi = [slice(None)] * self.dim
            lo[axis] = slice(0, -1)
            hi[axis] = slice(1, None)
            lefts.append(idx[tuple(lo)].reshape(-1))
            rights.append(idx[tuple(hi)].reshape(-1))
            mids.append(0.5 * (pts[tuple(lo)] + pts[tuple(hi)]).reshape(-1, self.dim))
        return np.concatenate(lefts), np.concatenate(rights), np.concatenate(mids)

    # ---------------------------------------------------------------- densities
    def log_density(self, mixture: GaussianMixture, points: np.ndarray | None = None):
        """ln of the mixture renormalised on the grid (sum u h^d = 1), floored.

        Returns (log values at ``points`` (default: cell centres), log normaliser over cells).
        """
        centres = self.points()
        log_c = mixture.log_prob(centres)
        log_z = float(torch.logsumexp(torch.from_numpy(log_c), 0)) + math.log(self.cell_volume)
        vals = log_c if points is None else mixture.log_prob(points)
        return np.maximum(vals - log_z, LOG_DENSITY_FLOOR), log_z

    def density(self, mixture: GaussianMixture) -> np.ndarray:
        """Cell-centre values of the mixture, renormalised so that sum u h^d = 1 (flat)."""
        return np.exp(self.log_density(mixture)[0])

    def check_target(self, mixture: GaussianMixture, role: str, min_mass: float) -> None:
        """Raise if ``mixture`` does not fit the box; warn if cells cannot resolve it."""
        if mixture.dim != self.dim:
            raise GanflowError(
                f"the {role} has dimension {mixture.dim} but the grid has dimension {self.dim}"
            )
        mass = mixture.mass_in_box(self.half_width)
        if mass < min_mass:
            raise GanflowError(
                f"box [-{self.half_width:g}, {self.half_width:g}]^{self.dim} holds only "
                f"{mass:.6g} of the {role}'s mass (expected at least {min_mass:g}); "
                f"use a box half-width of at least {mixture.extent():.3g}"
            )
        if self.h > mixture.length_scale:
            warnings.warn(
                f"cell width h={self.h:.3g} exceeds the {role}'s smallest std "
                f"{mixture.length_scale:.3g}: the grid does not resolve it",
                stacklevel=3,
            )

    def as_density(self, values, role: str = "init") -> np.ndarray:
        """Validate user cell values (shape ``self.shape``) and renormalise to mass 1."""
        u = np.asarray(values, dtype=np.float64)
        if u.shape != self.shape and u.shape != (self.size,):
            raise GanflowError(
                f"{role} values must have shape {self.shape} (the grid), got {u.shape}"
            )
        u = u.reshape(-1)
        if not np.isfinite(u).all():
            raise GanflowError(
                f"{role} values must be finite; got {int((~np.isfinite(u)).sum())} NaN/Inf cells"
            )
        if (u < 0).any():
            raise GanflowError(f"{role} must be non-negative; minimum value {u.min():.3g}")
        total = u.sum() * self.cell_volume
        if not total > 0:
            raise GanflowError(f"{role} has zero mass on the box; it is not a density")
        return u / total
