r"""Reading image files: a ``.npz`` (``x``/``images`` and optional ``y``/``labels``), a
``.npy``, MNIST's ``.pkl.gz`` (unpickling plain arrays only) or a folder of PNGs; every
reader's output is checked and mapped to float32 images (n, C, H, W) in [-1, 1]."""

from __future__ import annotations

import gzip
import math
import pickle
from pathlib import Path

import numpy as np

from .._errors import GanflowError
from .tables import MIN_TABLE_ROWS

__all__ = ["read_image_source", "source_name"]

_PNG_SUFFIXES = (".png",)


def read_image_source(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The images (n, C, H, W) float32 in [-1, 1] and labels (n,) int64 or None of a file
    or folder of images."""
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
                f"cannot read image data {str(p)!r}: expected a .npz, .npy or .pkl.gz file or "
                f"a folder of PNG images"
            )
    x = _to_images(images, str(p))
    if labels is not None:
        labels = _check_labels(labels, len(x), str(p))
    return x, labels


def source_name(p: Path) -> str:
    """A data-set name from a file name: the stem without its image suffix, made safe."""
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
