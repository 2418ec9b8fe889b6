"""The one input check of the metrics: samples as a float64 (n, d) NumPy array."""

from __future__ import annotations

import numpy as np
import torch

from .._errors import GanflowError


def as_samples(x, name: str, *, dim: int | None = None, min_rows: int = 1,
               finite: bool = True) -> np.ndarray:
    """``x`` (a tensor, array or nested list) as a float64 array of shape (n, d), with
    n >= ``min_rows`` and d = ``dim`` if given; NaN/Inf refused when ``finite``. Every
    message names ``name``, the shape received and what was expected."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, d)"
        raise GanflowError(f"{name} must have shape {want}, got shape {arr.shape}")
    if len(arr) < min_rows:
        raise GanflowError(f"{name} must hold at least {min_rows} sample(s), got {len(arr)}")
    if finite and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(1).sum())
        raise GanflowError(f"{name} contains {bad} row(s) with NaN or Inf; expected finite "
                           "values")
    return arr
