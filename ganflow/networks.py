r"""The two networks of Algorithm 1 (docs/theory.md section 5): a generator G: R^n -> R^d and
a discriminator given by its logit f: R^d -> R (D = sigmoid(f), section 3)."""

from __future__ import annotations

import torch
from torch import nn

from ._errors import GanflowError

__all__ = [
    "MLP",
    "make_generator",
    "make_discriminator",
    "ACTIVATIONS",
    "ConvGenerator",
    "ConvDiscriminator",
    "make_conv_generator",
    "make_conv_discriminator",
    "upsampling_stages",
]

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


# ------------------------------------------------------------------ image networks
def _check_image_shape(image_shape) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in image_shape)
    except (TypeError, ValueError) as exc:
        raise GanflowError(
            f"image_shape must be (C, H, W) positive integers, got {image_shape!r}"
        ) from exc
    if min(c, h, w) < 1 or tuple(image_shape) != (c, h, w):
        raise GanflowError(f"image_shape must be (C, H, W) positive integers, got {image_shape!r}")
    return c, h, w


def _check_positive(name: str, val) -> int:
    if int(val) != val or val < 1:
        raise GanflowError(f"{name} must be a positive integer, got {val!r}")
    return int(val)


def upsampling_stages(h: int, w: int, max_stages: int = 3) -> int:
    r"""Number k of factor-2 stages between a (h / 2^k, w / 2^k) seed map and the image:
    the largest k <= ``max_stages`` with both sides divisible by 2^k and the seed map at
    least 3x3 (8x8 -> 1 stage from 4x4; 28x28 -> 2 stages from 7x7; 32x32 -> 3 from 4x4)."""
    k = 0
    while (k < max_stages and h % 2 ** (k + 1) == 0 and w % 2 ** (k + 1) == 0
           and h // 2 ** (k + 1) >= 3 and w // 2 ** (k + 1) >= 3):
        k += 1
    return k


class ConvGenerator(nn.Module):
    r"""DCGAN-style generator (Radford et al. 2016) without batch norm: a linear map of z to
    a (C_0, h_0, w_0) seed map, k transposed convolutions (kernel 4, stride 2) that double
    the side and halve the channels, a 3x3 convolution to C channels and tanh.

    Flat in and out: (N, latent_dim) -> (N, C*H*W) in (-1, 1). No normalisation layer
    couples the samples of a batch, so G(z_i) depends on z_i alone, which the per-sample
    MSE fit of Algorithm 1 (step 4 of docs/theory.md section 5) presumes."""

    def __init__(self, latent_dim: int, image_shape, *, width: int = 32) -> None:
        super().__init__()
        latent_dim = _check_positive("latent_dim", latent_dim)
        width = _check_positive("width", width)
        c, h, w = _check_image_shape(image_shape)
        k = upsampling_stages(h, w)
        self.latent_dim, self.image_shape = latent_dim, (c, h, w)
        self.in_dim, self.out_dim = latent_dim, c * h * w
        self._seed = (width * 2 ** k, h // 2 ** k, w // 2 ** k)
        self.fc = nn.Linear(latent_dim, self._seed[0] * self._seed[1] * self._seed[2])
        layers: list[nn.Module] = [nn.ReLU()]
        ch = self._seed[0]
        for _ in range(k):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1), nn.ReLU()]
            ch //= 2
        layers += [nn.Conv2d(ch, c, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(len(z), *self._seed)
        return self.net(x).flatten(1)


class ConvDiscriminator(nn.Module):
    r"""DCGAN-style discriminator logit f: a 3x3 convolution, k strided convolutions
    (kernel 4, stride 2) that halve the side and double the channels, LeakyReLU(0.2), and a
    linear map to one logit; (N, C*H*W) -> (N,), like :class:`Logit`.

    No batch norm: Algorithm 1 takes grad_x f at every generated point (target (22) of
    docs/theory.md section 5), which is only the drift of that point when f(x_i) does not
    depend on the other points of the batch. ``spectral_norm=True`` wraps every layer in
    :func:`torch.nn.utils.parametrizations.spectral_norm` (off by default)."""

    def __init__(self, image_shape, *, width: int = 32, spectral_norm: bool = False) -> None:
        super().__init__()
        width = _check_positive("width", width)
        c, h, w = _check_image_shape(image_shape)
        k = upsampling_stages(h, w)
        self.image_shape, self.in_dim = (c, h, w), c * h * w
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [sn(nn.Conv2d(c, width, 3, padding=1)), nn.LeakyReLU(0.2)]
        ch = width
        for _ in range(k):
            layers += [sn(nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            ch *= 2
        layers += [nn.Flatten(), sn(nn.Linear(ch * (h // 2 ** k) * (w // 2 ** k), 1))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.view(len(x), *self.image_shape)).squeeze(-1)


def make_conv_generator(latent_dim: int, image_shape, *, width: int = 32) -> ConvGenerator:
    """Image generator G: R^latent_dim -> R^(C*H*W), flat output in (-1, 1)."""
    return ConvGenerator(latent_dim, image_shape, width=width)


def make_conv_discriminator(
    image_shape, *, width: int = 32, spectral_norm: bool = False
) -> ConvDiscriminator:
    """Image discriminator logit f: R^(C*H*W) -> R, shape (N, C*H*W) -> (N,)."""
    return ConvDiscriminator(image_shape, width=width, spectral_norm=spectral_norm)
