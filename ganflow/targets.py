r"""Distributions with an exact log-density, its gradient and a sampler.

The data density :math:`\rho_d` and the initial density :math:`\rho_0` of docs/theory.md
are isotropic Gaussian mixtures in any dimension,

    rho(x) = sum_k w_k N(x; mu_k, sigma_k^2 I),

which satisfy the paper's assumptions (section 4: positive everywhere, finite Fisher
information). Named benchmarks: ``ring8`` (8 modes on the circle of
radius 2, std 0.02) and ``grid25`` (25 modes on {-4,-2,0,2,4}^2, std 0.05).

A user writes a mixture as JSON: ``{"weights": [...], "means": [[...], ...], "stds": [...]}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ._errors import GanflowError

__all__ = ["GaussianMixture", "ring8", "grid25", "load_target", "named_targets"]

# Weights are accepted when they sum to 1 within this; a user typing 1/3 three times
# as 0.333 gets 0.999, which is an honest mistake, not a different distribution.
_WEIGHT_SUM_TOL = 1e-6


def _as_float64_tensor(values, what: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(np.asarray(values, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise GanflowError(f"{what} must be numbers, got {values!r}") from exc
    if not torch.isfinite(t).all():
        raise GanflowError(f"{what} must be finite, got {values!r}")
    return t


class GaussianMixture:
    r"""Isotropic Gaussian mixture :math:`\sum_k w_k N(\mu_k, \sigma_k^2 I)` in R^d.

    Args:
        weights: shape (K,), non-negative, summing to 1.
        means: shape (K, d).
        stds: shape (K,), positive (one isotropic std per component).
        name: a label used in plots and run folders.

    All methods accept a ``torch.Tensor`` of shape (..., d) (any dtype/device; the
    computation follows the input) or a ``numpy.ndarray`` (returned as numpy).
    """

    def __init__(self, weights, means, stds, *, name: str | None = None) -> None:
        w = _as_float64_tensor(weights, "weights").reshape(-1)
        mu = _as_float64_tensor(means, "means")
        s = _as_float64_tensor(stds, "stds").reshape(-1)
        if mu.ndim == 1:  # a list of scalars is a 1-D mixture
            mu = mu.reshape(-1, 1)
        if mu.ndim != 2:
            raise GanflowError(f"means must have shape (K, d), got shape {tuple(mu.shape)}")
        k = mu.shape[0]
        if w.numel() != k or s.numel() != k:
            raise GanflowError(
                f"weights, means and stds must have one entry per component: got "
                f"{w.numel()} weights, {k} means, {s.numel()} stds"
            )
        if k == 0:
            raise GanflowError("a mixture needs at least one component, got none")
        if (w < 0).any():
            raise GanflowError(f"weights must be non-negative, got {w.tolist()}")
        if abs(float(w.sum()) - 1.0) > _WEIGHT_SUM_TOL:
            raise GanflowError(f"weights must sum to 1, got sum {float(w.sum())!r} ({w.tolist()})")
        if (s <= 0).any():
            raise GanflowError(f"stds must be positive, got {s.tolist()}")
        self.weights = w / w.sum()
        self.means = mu
        self.stds = s
        self.name = name or "mixture"

    # ------------------------------------------------------------------ basics
    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def length_scale(self) -> float:
        """Smallest component std: the finest feature a grid or a step must resolve."""
        return float(self.stds.min())

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        m = self.mean()
        d = self.dim
        cov = torch.zeros(d, d, dtype=torch.float64)
        for w, mu, s in zip(self.weights, self.means, self.stds, strict=True):
            diff = (mu - m)[:, None]
            cov += w * (s**2 * torch.eye(d, dtype=torch.float64) + diff @ diff.T)
        return cov

    def extent(self, n_std: float = 6.0) -> float:
        """Half-width L of the smallest box [-L, L]^d holding every mean +- n_std stds."""
        return float((self.means.abs() + n_std * self.stds[:, None]).max())

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(name={self.name!r}, dim={self.dim}, components={self.n_components})"
        )

    # ---------------------------------------------------------------- densities
    def _params(self, x: torch.Tensor):
        kw = {"dtype": x.dtype, "device": x.device}
        return self.weights.to(**kw), self.means.to(**kw), self.stds.to(**kw)

    def _check_points(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise GanflowError(
                f"points must have last dimension {self.dim} (the mixture's), "
                f"got shape {tuple(x.shape)}"
            )

    def _component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log(w_k N(x; mu_k, s_k^2 I)) of shape (..., K)."""
        w, mu, s = self._params(x)
        sq = ((x[..., None, :] - mu) ** 2).sum(-1)  # (..., K)
        d = self.dim
        return torch.log(w) - 0.5 * d * torch.log(2 * math.pi * s**2) - sq / (2 * s**2)

    def log_prob(self, x):
        """Exact log-density at points ``x`` of shape (..., d); returns shape (...)."""
        return _numpy_in_out(x, lambda t: torch.logsumexp(self._component_log_probs(t), -1), self)

    def prob(self, x):
        """Exact density at points ``x`` of shape (..., d); returns shape (...)."""
        return _numpy_in_out(
            x, lambda t: torch.logsumexp(self._component_log_probs(t), -1).exp(), self
        )

    def score(self, x):
        r"""Exact :math:`\nabla_x \ln\rho(x)` of shape (..., d), from the responsibilities."""

        def _score(t: torch.Tensor) -> torch.Tensor:
            _, mu, s = self._params(t)
            resp = torch.softmax(self._component_log_probs(t), -1)  # (..., K)
            pull = (mu - t[..., None, :]) / s[:, None] ** 2  # (..., K, d)
            return (resp[..., None] * pull).sum(-2)

        return _numpy_in_out(x, _score, self)

    def responsibilities(self, x):
        """Posterior probability of each component, shape (..., K)."""
        return _numpy_in_out(x, lambda t: torch.softmax(self._component_log_probs(t), -1), self)

    def mass_in_box(self, half_width: float) -> float:
        """Exact probability of the box [-L, L]^d (products of normal CDFs)."""
        L = float(half_width)
        z_hi = (L - self.means) / (self.stds[:, None] * math.sqrt(2))
        z_lo = (-L - self.means) / (self.stds[:, None] * math.sqrt(2))
        per_dim = 0.5 * (torch.erf(z_hi) - torch.erf(z_lo))
        return float((self.weights * per_dim.prod(-1)).sum())

    # ------------------------------------------------------------------ sampler
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw ``n`` samples, shape (n, d). Pass a seeded ``torch.Generator`` to reproduce."""
        if int(n) != n or n < 0:
            raise GanflowError(f"number of samples must be a non-negative integer, got {n!r}")
        n = int(n)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(
            n, self.dim, generator=generator, dtype=torch.float64, device=gen_device
        )
        x = self.means[comp] + self.stds[comp, None] * noise.cpu()
        return x.to(dtype=dtype, device=device)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "stds": self.stds.tolist(),
        }

    @classmethod
    def from_dict(cls, obj: dict, *, name: str | None = None) -> GaussianMixture:
        if not isinstance(obj, dict):
            raise GanflowError(f"a mixture must be a JSON object, got {type(obj).__name__}")
        missing = {"weights", "means", "stds"} - set(obj)
        if missing:
            raise GanflowError(
                f"a mixture JSON needs keys 'weights', 'means', 'stds'; missing {sorted(missing)}"
            )
        return cls(obj["weights"], obj["means"], obj["stds"], name=name or obj.get("name"))

    @classmethod
    def from_json(cls, path: str | Path) -> GaussianMixture:
        path = Path(path)
        try:
            obj = json.loads(path.read_text())
        except OSError as exc:
            raise GanflowError(f"cannot read mixture file {str(path)!r}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise GanflowError(f"mixture file {str(path)!r} is not valid JSON: {exc}") from exc
        return cls.from_dict(obj, name=path.stem)


def _numpy_in_out(x, fn: Callable[[torch.Tensor], torch.Tensor], mixture: GaussianMixture):
    if isinstance(x, torch.Tensor):
        mixture._check_points(x)
        return fn(x)
    arr = np.asarray(x, dtype=np.float64)
    t = torch.from_numpy(arr)
    mixture._check_points(t)
    return fn(t).numpy()


# ---------------------------------------------------------------------- benchmarks
def ring8(radius: float = 2.0, std: float = 0.02) -> GaussianMixture:
    """8 equal Gaussians with centres on the circle of the given radius."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], 1)
    return GaussianMixture([1 / 8] * 8, means, [std] * 8, name="ring8")


def grid25(spacing: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """25 equal Gaussians at {-2,-1,0,1,2}^2 * spacing (by default spacing 2, std 0.05)."""
    ticks = torch.arange(-2, 3, dtype=torch.float64) * spacing
    gx, gy = torch.meshgrid(ticks, ticks, indexing="ij")
    means = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    return GaussianMixture([1 / 25] * 25, means, [std] * 25, name="grid25")


def _bimodal() -> GaussianMixture:
    # 1-D two-mode target of the ground-truth tests: modes at +-1.5, std 0.5.
    return GaussianMixture([0.5, 0.5], [[-1.5], [1.5]], [0.5, 0.5], name="bimodal")


def _barrier() -> GaussianMixture:
    # Unequal modes separated by a low-density barrier (mass must cross it): the density
    # at 0 is ~1e-2 of the peaks, low enough to slow every flow, high enough to cross.
    return GaussianMixture([0.3, 0.7], [[-1.5], [1.5]], [0.5, 0.5], name="barrier")


def _four2d() -> GaussianMixture:
    # 4 modes on the corners of a square: a 2-D target a 128^2 grid resolves.
    means = [[-1.5, -1.5], [-1.5, 1.5], [1.5, -1.5], [1.5, 1.5]]
    return GaussianMixture([0.25] * 4, means, [0.5] * 4, name="four2d")


_NAMED: dict[str, Callable[[], GaussianMixture]] = {
    "ring8": ring8,
    "grid25": grid25,
    "bimodal": _bimodal,
    "barrier": _barrier,
    "four2d": _four2d,
}


def named_targets() -> list[str]:
    """Names accepted by :func:`load_target` (besides ``normal:...`` and JSON paths)."""
    return sorted(_NAMED)


def _parse_normal(spec: str) -> GaussianMixture:
    # normal:MEAN:STD with MEAN a comma-separated vector, e.g. normal:0:1, normal:1,-1:0.5
    parts = spec.split(":")
    if len(parts) != 3:
        raise GanflowError(
            f"a normal spec is 'normal:MEAN:STD' (MEAN comma-separated, e.g. normal:1,-1:0.5), "
            f"got {spec!r}"
        )
    try:
        mean = [float(v) for v in parts[1].split(",")]
        std = float(parts[2])
    except ValueError as exc:
        raise GanflowError(f"cannot read numbers in normal spec {spec!r}") from exc
    return GaussianMixture([1.0], [mean], [std], name=spec.replace(":", "_").replace(",", "_"))


def load_target(spec: str | Path | GaussianMixture | dict) -> GaussianMixture:
    """Resolve a target description to a :class:`GaussianMixture`.

    Accepts a mixture (returned as is), a dict in the JSON form, a named benchmark
    (see :func:`named_targets`), ``normal:MEAN:STD`` (e.g. ``normal:0:1`` in 1-D,
    ``normal:1,-1:0.5`` in 2-D), or the path of a JSON file.
    """
    if isinstance(spec, GaussianMixture):
        return spec
    if isinstance(spec, dict):
        return GaussianMixture.from_dict(spec)
    text = str(spec)
    if text in _NAMED:
        return _NAMED[text]()
    if text.startswith("normal:"):
        return _parse_normal(text)
    path = Path(text)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.exists():
            raise GanflowError(f"mixture file {text!r} does not exist")
        return GaussianMixture.from_json(path)
    raise GanflowError(
        f"unknown target {text!r}: expected one of {named_targets()}, 'normal:MEAN:STD', "
        f"or the path of a JSON file with keys weights, means, stds"
    )
