r"""The two networks of Algorithm 1 (THEORY.md section 5): a generator G: R^n -> R^d and
a discriminator given by its logit f: R^d -> R (D = sigmoid(f), section 3)."""

from __future__ import annotations

import torch
from torch import nn

from ._errors import GanflowError

__all__ = ["MLP", "make_generator", "make_discriminator", "ACTIVATIONS"]

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units and an affine output layer.

    Input shape (N, in_dim), output shape (N, out_dim)."""

    def __init__(
        self, in_dim: int, out_dim: int, *, width: int = 128, depth: int = 3,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        for name, val in (("in_dim", in_dim), ("out_dim", out_dim), ("width", width)):
            if int(val) != val or val < 1:
                raise GanflowError(f"{name} must be a positive integer, got {val!r}")
        if int(depth) != depth or depth < 0:
            raise GanflowError(f"depth must be a non-negative integer, got {depth!r}")
        if activation not in ACTIVATIONS:
            raise GanflowError(
                f"unknown activation {activation!r}: expected one of {sorted(ACTIVATIONS)}"
            )
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), ACTIVATIONS[activation]()]
            d = width
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_generator(
    latent_dim: int, data_dim: int, *, width: int = 128, depth: int = 3, activation: str = "relu"
) -> MLP:
    """G: R^latent_dim -> R^data_dim; z ~ N(0, I) (rho_Z of section 5)."""
    return MLP(latent_dim, data_dim, width=width, depth=depth, activation=activation)


class Logit(nn.Module):
    """Wraps an MLP with one output so that f(x) has shape (N,)."""

    def __init__(self, mlp: MLP) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)


def make_discriminator(
    data_dim: int, *, width: int = 128, depth: int = 3, activation: str = "relu"
) -> Logit:
    """The discriminator's logit f: R^data_dim -> R, shape (N, d) -> (N,); D = sigmoid(f)."""
    return Logit(MLP(data_dim, 1, width=width, depth=depth, activation=activation))
