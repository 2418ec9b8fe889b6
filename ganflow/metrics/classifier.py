r"""The feature network of the image metrics: a small CNN classifier of our own.

The Inception network of FID cannot be downloaded here, and it was never meant for 8x8
digits, so the features are the penultimate activations of a small CNN classifier that
:func:`feature_net` trains on the labelled images of the data set itself (80 % of them,
by a fixed seeded permutation; its accuracy on the other 20 % is reported).
Cache: the trained classifier is stored as ``<key>.safetensors`` (weights) and
``<key>.json`` (held-out accuracy, data name, seed, hash of the data arrays, ganflow
version, architecture) in :func:`cache_dir`: ``$GANFLOW_CACHE`` if set, else
``$XDG_CACHE_HOME/ganflow``, else ``~/.cache/ganflow``. The key holds the data name, a
hash of the images and labels, the seed and the classifier version, so a changed data set
or recipe trains a new classifier. Both files are written atomically; the folder is safe
to delete at any time (the classifier is retrained, deterministically, on next use), and
an unreadable or inconsistent cache entry is retrained and overwritten, never fatal. An
unwritable cache folder is not fatal either: one warning, and the classifier is kept in
memory for the rest of the process. Image data without labels gets no classifier: its
metrics use :func:`random_feature_net`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._errors import GanflowError
from .._io import write_bytes_atomic, write_json_atomic
from ..data import Dataset
from ..data.images import LabelledImages, labelled_images

__all__ = [
    "CLASSIFIER_VERSION",
    "Classifier",
    "FeatureNet",
    "as_image_tensor",
    "cache_dir",
    "feature_net",
    "random_feature_net",
    "train_classifier",
]

log = logging.getLogger(__name__)

# Bump when the architecture or the training recipe changes: old cache entries then miss.
CLASSIFIER_VERSION = 2
FEATURE_DIM = 128
HELD_OUT_FRACTION = 0.2


# ------------------------------------------------------------------ classifier
class Classifier(nn.Module):
    r"""Small CNN: three [3x3 conv, ReLU] blocks (32, 64, 64 channels), each followed by a
    2x2 max-pool while the map is at least 6 pixels wide, a dense layer of
    :data:`FEATURE_DIM` ReLU units (the features) and a linear layer to the class logits.
    Input (N, C, H, W) or flat (N, C*H*W)."""

    def __init__(self, image_shape: tuple[int, int, int], n_classes: int) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape, self.n_classes = (int(c), int(h), int(w)), int(n_classes)
        layers: list[nn.Module] = []
        ch, channels = c, (32, 64, 64)
        for out in channels:
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.ReLU()]
            ch = out
            if min(h, w) >= 6:  # 8 -> 4; 28 -> 14 -> 7 -> 3
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.conv = nn.Sequential(*layers)
        # Dropout before the dense layer: it regularises the small classifier, so its
        # held-out accuracy varies less from seed to seed.
        self.feature = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(ch * h * w, FEATURE_DIM), nn.ReLU()
        )
        self.head = nn.Linear(FEATURE_DIM, n_classes)
        # RMS of the training features, set after training: features() divides by it so
        # that they are O(1) (the KID kernel (x.y/k + 1)^3 assumes that scale).
        self.register_buffer("feature_scale", torch.ones(()))

    def _raw_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(self.conv(x.reshape(len(x), *self.image_shape)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._raw_features(x) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._raw_features(x))


@dataclass
class FeatureNet:
    r"""A trained :class:`Classifier` and where it came from.

    Attributes: ``model`` (in eval mode, CPU), ``accuracy`` (held-out), ``data_name``,
    ``data_hash``, ``seed``, ``train_seconds`` (0 when loaded), ``from_cache``."""

    model: Classifier
    accuracy: float
    data_name: str
    data_hash: str
    seed: int
    train_seconds: float = 0.0
    from_cache: bool = False

    @torch.no_grad()
    def _apply(self, images, fn, batch: int) -> np.ndarray:
        x = as_image_tensor(images, self.model.image_shape)
        out = [fn(x[i:i + batch]).double() for i in range(0, len(x), batch)]
        if not out:
            return np.zeros((0, 0))
        return torch.cat(out).numpy()

    def features(self, images, batch: int = 1024) -> np.ndarray:
        """Penultimate activations, float64 (n, FEATURE_DIM), of images (n, C*H*W) or
        (n, C, H, W) in [-1, 1]."""
        return self._apply(images, self.model.features, batch)

    def logits(self, images, batch: int = 1024) -> np.ndarray:
        """Class logits, float64 (n, n_classes)."""
        return self._apply(images, self.model, batch)


def as_image_tensor(images, image_shape) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        x = images.detach().to("cpu", torch.float32)
    else:
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    d = math.prod(image_shape)
    if x.ndim < 2 or math.prod(x.shape[1:]) != d or (x.ndim > 2 and tuple(x.shape[1:]) != tuple(
            image_shape)):
        raise GanflowError(
            f"images must have shape (n, {d}) or (n, {', '.join(map(str, image_shape))}), "
            f"got {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise GanflowError(
            f"images contain {int((~torch.isfinite(x)).reshape(len(x), -1).any(1).sum())} "
            f"rows with NaN or Inf; expected finite pixel values"
        )
    return x.reshape(len(x), *image_shape)


def _split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(HELD_OUT_FRACTION * n)))
    return perm[n_test:], perm[:n_test]


def _epochs(n_train: int) -> int:
    # About 2000 optimiser steps of batch 64, between 3 and 30 epochs: digits (1438
    # training images) gets 30 epochs (~700 steps, a few seconds), MNIST 3 epochs.
    return int(min(30, max(3, math.ceil(2000 * 64 / max(n_train, 1)))))


def train_classifier(
    images: np.ndarray, labels: np.ndarray, *, seed: int = 0, name: str = "images",
    epochs: int | None = None,
) -> FeatureNet:
    r"""Train :class:`Classifier` on 80 % of ``images`` (n, C, H, W) in [-1, 1] with integer
    ``labels`` (n,), and measure accuracy on the held-out 20 %.

    Deterministic: CPU, one seeded permutation for the split, the initial weights and the
    dropout masks drawn under ``torch.manual_seed(seed)`` (inside
    :func:`torch.random.fork_rng`, so the caller's global RNG is untouched) and the batch
    order from a seeded ``torch.Generator`` (bitwise identical for the same torch build and
    thread count).
    Adam, batch 64, learning rate 2e-3 with a cosine decay to 0 over a fixed number of
    epochs (:func:`_epochs`). Afterwards ``model.feature_scale`` is set to the RMS of the
    training features."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if x.ndim != 4 or y.shape != (len(x),):
        raise GanflowError(
            f"classifier needs images (n, C, H, W) and labels (n,), got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if len(x) < 10:
        raise GanflowError(f"classifier needs at least 10 labelled images, got {len(x)}")
    n_classes = int(y.max()) + 1
    train_idx, test_idx = _split(len(x), seed)
    epochs = _epochs(len(train_idx)) if epochs is None else int(epochs)
    t0 = time.perf_counter()
    # enable_grad: the trainer evaluates (and so may first train this) under no_grad
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        # The global RNG draws the initial weights and the dropout masks.
        torch.manual_seed(seed)
        model = _fit(x, y, train_idx, n_classes, epochs, seed)
    with torch.no_grad():
        pred = torch.cat([model(x[test_idx[i:i + 1024]]).argmax(1)
                          for i in range(0, len(test_idx), 1024)])
        sq = sum(float((model._raw_features(x[train_idx[i:i + 1024]]).double() ** 2).sum())
                 for i in range(0, len(train_idx), 1024))
        rms = math.sqrt(sq / (len(train_idx) * FEATURE_DIM))
        model.feature_scale.fill_(rms if rms > 0 else 1.0)
    acc = float((pred == y[test_idx]).double().mean())
    return FeatureNet(model, acc, name, _data_hash(x.numpy(), y.numpy()), seed,
                      time.perf_counter() - t0, False)


def _fit(x: torch.Tensor, y: torch.Tensor, train_idx: torch.Tensor, n_classes: int,
         epochs: int, seed: int) -> Classifier:
    model = Classifier(tuple(x.shape[1:]), n_classes)
    lr0 = 2e-3
    opt = torch.optim.Adam(model.parameters(), lr=lr0)
    g = torch.Generator().manual_seed(seed + 1)
    n_steps, step = epochs * math.ceil(len(train_idx) / 64), 0
    model.train()
    for _ in range(epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        for i in range(0, len(order), 64):
            b = order[i:i + 64]
            for group in opt.param_groups:
                group["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * step / n_steps))
            step += 1
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def _data_hash(images: np.ndarray, labels: np.ndarray | None) -> str:
    h = hashlib.sha256()
    arr = np.ascontiguousarray(images, dtype=np.float32)
    h.update(str(arr.shape).encode())
    h.update(arr.tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ganflow")
    except Exception:  # noqa: BLE001 - not installed (a source checkout): still cacheable
        return "unknown"


def cache_dir() -> Path:
    """``$GANFLOW_CACHE``, else ``$XDG_CACHE_HOME/ganflow``, else ``~/.cache/ganflow``."""
    if os.environ.get("GANFLOW_CACHE"):
        return Path(os.environ["GANFLOW_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "ganflow"
    return Path.home() / ".cache" / "ganflow"


def _load_cached(weights: Path, meta_path: Path, meta_expected: dict,
                 image_shape, n_classes: int) -> FeatureNet | None:
    if not (weights.is_file() and meta_path.is_file()):
        return None
    try:
        from safetensors.torch import load_file

        meta = json.loads(meta_path.read_text())
        if any(meta.get(k) != v for k, v in meta_expected.items()):
            return None
        model = Classifier(tuple(image_shape), n_classes)
        model.load_state_dict(load_file(str(weights)))
        model.eval()
        acc = float(meta["accuracy"])
    except Exception as exc:  # noqa: BLE001 - any corrupt entry is retrained, never fatal
        log.warning("ignoring unreadable classifier cache %s (%s); retraining", weights, exc)
        return None
    return FeatureNet(model, acc, meta_expected["data"], meta_expected["data_hash"],
                      meta_expected["seed"], 0.0, True)


def feature_net(data: str | Path | Dataset | LabelledImages, *, seed: int = 0,
                cache: bool = True) -> FeatureNet:
    r"""The feature classifier of an image data set (spec, :class:`Dataset` or
    :class:`~ganflow.data.images.LabelledImages`): loaded from :func:`cache_dir` when a matching
    entry exists, else trained with :func:`train_classifier` and stored (module docstring)."""
    arrays = data if isinstance(data, LabelledImages) else labelled_images(data)
    if arrays.labels is None:
        raise GanflowError(
            f"image data {arrays.name!r} has no labels, so no feature classifier can be "
            f"trained; expected labelled images ('digits', 'mnist', or a .npz with 'y' or "
            f"'labels')"
        )
    digest = _data_hash(arrays.images, arrays.labels)
    n_classes = int(arrays.labels.max()) + 1
    expected = {"data": arrays.name, "data_hash": digest, "seed": int(seed),
                "classifier_version": CLASSIFIER_VERSION, "n_classes": n_classes,
                "image_shape": list(arrays.images.shape[1:])}
    key = f"classifier-{arrays.name}-{digest[:16]}-s{int(seed)}-v{CLASSIFIER_VERSION}"
    weights, meta_path = cache_dir() / f"{key}.safetensors", cache_dir() / f"{key}.json"
    if cache:
        if key in _unsaved:
            return _unsaved[key]
        hit = _load_cached(weights, meta_path, expected, arrays.images.shape[1:], n_classes)
        if hit is not None:
            return hit
    net = train_classifier(arrays.images, arrays.labels, seed=seed, name=arrays.name)
    if cache:
        from safetensors.torch import save

        state = {k: v.contiguous() for k, v in net.model.state_dict().items()}
        try:
            # Weights first, sidecar last: a sidecar only exists next to complete weights.
            write_bytes_atomic(weights, save(state))
            write_json_atomic(meta_path, {**expected, "accuracy": net.accuracy,
                                          "train_seconds": round(net.train_seconds, 3),
                                          "ganflow_version": _version()})
        except OSError as exc:
            # an unwritable cache ($GANFLOW_CACHE read-only, full, or under a file) never
            # costs the run or the evaluation: the classifier is kept in memory instead
            _unsaved[key] = net
            _warn_cache_once(f"warning: classifier cache {str(cache_dir())!r} is not writable "
                             f"({exc.strerror or exc}); continuing without caching "
                             "(set $GANFLOW_CACHE to a writable folder)")
    return net


_warned: set[str] = set()
# classifiers whose cache write failed, by cache key: a trainer evaluating every
# --eval-every iterations must not retrain one each time
_unsaved: dict[str, FeatureNet] = {}


def _warn_cache_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def random_feature_net(data: str | Path | Dataset | LabelledImages, *,
                       seed: int = 0) -> FeatureNet:
    r"""The feature network of image data WITHOUT labels (a folder of PNGs, an unlabelled
    ``.npy``): the :class:`Classifier` architecture with its seeded random initial weights,
    untrained, ``feature_scale`` set to the RMS of its features on the data's images (as
    :func:`train_classifier` does). Deterministic, instant, nothing cached.

    Why random conv features rather than raw pixels (or their PCA): they keep the metrics'
    code path and feature width (:data:`FEATURE_DIM`) and, being local, translation-aware
    filters, compare images by local structure rather than pixel by pixel; randomly
    initialised CNN embeddings are known to give usable Frechet distances and k-NN
    precision/recall (Naeem et al. 2020). Their values are NOT comparable with those in the
    trained classifier's features (``image_metrics`` says which were used), and nothing
    class-based (coverage, class KL, accuracy) can be computed without labels."""
    arrays = data if isinstance(data, LabelledImages) else labelled_images(data)
    x = torch.as_tensor(np.asarray(arrays.images, dtype=np.float32))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(tuple(x.shape[1:]), 1).eval()
    with torch.no_grad():
        rows = x[:5000]
        sq = sum(float((model._raw_features(rows[i:i + 1024]).double() ** 2).sum())
                 for i in range(0, len(rows), 1024))
        rms = math.sqrt(sq / (max(len(rows), 1) * FEATURE_DIM))
        model.feature_scale.fill_(rms if rms > 0 else 1.0)
    return FeatureNet(model, math.nan, arrays.name, _data_hash(arrays.images, None),
                      int(seed), 0.0, False)


