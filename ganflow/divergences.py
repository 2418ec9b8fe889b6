r"""Divergences as mobilities (docs/theory.md section 7).

For an f-divergence F(rho) = int rho_d phi(rho/rho_d), with v = rho/rho_d, the
mobility is m(v) = v phi''(v). One function m drives both solvers:

* the particle drift from a discriminator logit f (f = ln(rho_d/rho) = -ln v at the
  optimum):  drift = m(e^{-f}) grad f      (JSD: 1/2 sigmoid(f) grad f, eq. (20));
* the Fokker-Planck flux:  du/dt = div(rho_d m(u/rho_d) grad(u/rho_d))   (eq. (25)).

A new divergence is a few lines::

    Divergence("chi2", mobility=lambda v: 2 * v, logit_mobility=lambda f: 2 * torch.exp(-f))

``logit_mobility(f) = m(e^{-f})`` is optional; give it when the composition would
overflow (e.g. JSD: m(e^{-f}) = sigmoid(f)/2 is finite for every f).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._errors import GanflowError

__all__ = ["Divergence", "JSD", "KL", "NS", "CHI2", "get_divergence", "divergence_names"]


@dataclass(frozen=True)
class Divergence:
    r"""A gradient flow of the f-divergence family, given by its mobility m(v) = v phi''(v).

    Args:
        name: short name used on the command line.
        mobility: m(v) for a tensor v >= 0, elementwise, non-negative.
        logit_mobility: m(e^{-f}) for a logit tensor f; defaults to the composition.
        phi: optional phi(v), the divergence density (for reporting the flow's energy).
    """

    name: str
    mobility: Callable[[torch.Tensor], torch.Tensor]
    logit_mobility: Callable[[torch.Tensor], torch.Tensor] | None = None
    phi: Callable[[torch.Tensor], torch.Tensor] | None = None

    def mobility_of_logit(self, f: torch.Tensor) -> torch.Tensor:
        r"""m(e^{-f}): the factor multiplying grad f in the particle drift."""
        if self.logit_mobility is not None:
            return self.logit_mobility(f)
        return self.mobility(torch.exp(-f))

    def drift(self, logit: torch.Tensor, grad_logit: torch.Tensor) -> torch.Tensor:
        r"""Particle drift m(e^{-f}) grad f (docs/theory.md section 7; eq. (20) for JSD).

        Args:
            logit: f at the particles, shape (N,).
            grad_logit: grad f at the particles, shape (N, d).
        Returns:
            the velocity of each particle, shape (N, d).
        """
        return self.mobility_of_logit(logit)[..., None] * grad_logit

    def mobility_and_derivative(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """m(v) and m'(v) elementwise (m' by autograd, so a new mobility needs no derivative)."""
        v = v.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            m = self.mobility(v)
            if not m.requires_grad:  # a constant mobility (KL) has no graph
                return m.detach(), torch.zeros_like(v.detach())
            (dm,) = torch.autograd.grad(m.sum(), v)
        return m.detach(), dm


def _jsd_phi(v: torch.Tensor) -> torch.Tensor:
    # phi(v) = 1/2 [ v ln v + (v+1) ln(2/(v+1)) ]; xlogy gives 0 ln 0 = 0.
    return 0.5 * (torch.xlogy(v, v) + (v + 1) * torch.log(2 / (v + 1)))


JSD = Divergence(
    "jsd",
    mobility=lambda v: 0.5 / (1 + v),
    logit_mobility=lambda f: 0.5 * torch.sigmoid(f),
    phi=_jsd_phi,
)
"""The paper's Jensen-Shannon flow: m(v) = 1/(2(1+v)), drift 1/2 sigmoid(f) grad f."""

KL = Divergence(
    "kl",
    mobility=torch.ones_like,
    logit_mobility=torch.ones_like,
    phi=lambda v: torch.xlogy(v, v) - v + 1,
)
"""KL(rho || rho_d): m = 1, a linear Fokker-Planck equation (Ornstein-Uhlenbeck for a Gaussian)."""

NS = Divergence(
    "ns",
    mobility=lambda v: v / (1 + v),
    logit_mobility=lambda f: torch.sigmoid(-f),
    # phi(v) = (1+v) ln(1+v) plus the affine term making phi(1) = phi'(1) = 0.
    phi=lambda v: (1 + v) * torch.log1p(v) - 2 * math.log(2) - (math.log(2) + 1) * (v - 1),
)
"""The flow behind the non-saturating GAN (-ln D): m(v) = v/(1+v), drift sigmoid(-f) grad f."""

CHI2 = Divergence(
    "chi2",
    mobility=lambda v: 2 * v,
    logit_mobility=lambda f: 2 * torch.exp(-f),
    phi=lambda v: (v - 1) ** 2,
)
"""Pearson chi^2: m(v) = 2v, drift 2 e^{-f} grad f (a porous-medium equation)."""

_REGISTRY = {d.name: d for d in (JSD, KL, NS, CHI2)}


def divergence_names() -> list[str]:
    return list(_REGISTRY)


def get_divergence(name: str | Divergence) -> Divergence:
    """Look up a divergence by name (``jsd``, ``kl``, ``ns``, ``chi2``)."""
    if isinstance(name, Divergence):
        return name
    try:
        return _REGISTRY[str(name).lower()]
    except KeyError:
        raise GanflowError(
            f"unknown divergence {name!r}: expected one of {divergence_names()}"
        ) from None
