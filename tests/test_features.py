"""Image metrics: closed forms and brute force for the statistics, and the feature
classifier (held-out accuracy, cache, reproducibility)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ganflow import GanflowError
from ganflow.data.images import LabelledImages, labelled_images
from ganflow.metrics.classifier import cache_dir, feature_net, train_classifier
from ganflow.metrics.features import (
    class_coverage,
    frechet_distance,
    image_metrics,
    kernel_distance,
    precision_recall,
)


# ------------------------------------------------------------------ statistics
def _with_moments(rng, n, mean, cov):
    """n points whose sample mean and (unbiased) sample covariance are exactly given."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(0)
    white = np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False)))
    z = z @ np.linalg.inv(white).T  # sample covariance exactly I
    return z @ np.linalg.cholesky(cov).T + mean


def test_frechet_matches_closed_form():
    rng = np.random.default_rng(0)
    k = 4
    a_ = rng.normal(size=(k, k))
    b_ = rng.normal(size=(k, k))
    s1, s2 = a_ @ a_.T + 0.1 * np.eye(k), b_ @ b_.T + 0.1 * np.eye(k)
    m1, m2 = rng.normal(size=k), rng.normal(size=k)
    r1 = scipy.linalg.sqrtm(s1).real
    closed = float(((m1 - m2) ** 2).sum()
                   + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(r1 @ s2 @ r1).real))
    x, y = _with_moments(rng, 500, m1, s1), _with_moments(rng, 300, m2, s2)
    assert frechet_distance(x, y) == pytest.approx(closed, rel=1e-8)
    assert frechet_distance(y, x) == pytest.approx(closed, rel=1e-8)  # symmetric
    # 1-D: W2^2 between normals is (m1 - m2)^2 + (s1 - s2)^2.
    u = _with_moments(rng, 100, np.array([1.0]), np.array([[4.0]]))
    v = _with_moments(rng, 100, np.array([-0.5]), np.array([[0.25]]))
    assert frechet_distance(u, v) == pytest.approx(1.5**2 + 1.5**2, rel=1e-9)


def test_frechet_zero_on_itself_and_monotone_in_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    assert abs(frechet_distance(x, x)) < 1e-8
    noise = rng.normal(size=x.shape)
    fds = [frechet_distance(x, x + s * noise) for s in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert fds[0] < 1e-8 and all(b > a for a, b in zip(fds, fds[1:], strict=False))
    assert frechet_distance(torch.from_numpy(x), x) < 1e-8  # tensors accepted
    with pytest.raises(GanflowError, match="same width"):
        frechet_distance(x, x[:, :3])
    with pytest.raises(GanflowError, match="NaN"):
        frechet_distance(x, np.full_like(x, np.nan))


def _kid_brute(x, y):
    d = len(x[0])

    def k(a, b):
        return (sum(ai * bi for ai, bi in zip(a, b, strict=True)) / d + 1) ** 3

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_kernel_distance_matches_brute_force():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(25, 5)), rng.normal(0.5, 1.2, size=(25, 5))
    assert kernel_distance(x, y) == pytest.approx(_kid_brute(x.tolist(), y.tolist()), rel=1e-10)
    # Subsets: a seeded average of subset estimates; reproducible, near the full value.
    big_x, big_y = rng.normal(size=(600, 5)), rng.normal(0.5, 1.0, size=(600, 5))
    full = kernel_distance(big_x, big_y, subset_size=600)
    sub = kernel_distance(big_x, big_y, subset_size=200, n_subsets=50, seed=3)
    assert sub == kernel_distance(big_x, big_y, subset_size=200, n_subsets=50, seed=3)
    assert sub == pytest.approx(full, rel=0.2)
    same = kernel_distance(big_x, rng.normal(size=(600, 5)), subset_size=600)
    assert abs(same) < 0.1 * full


def test_class_coverage_hand_made():
    one_class = np.zeros((100, 10))
    one_class[:, 3] = 5.0
    cov = class_coverage(one_class)
    assert cov.classes == 1 and cov.kl == pytest.approx(math.log(10))
    balanced = np.eye(10)[np.arange(1000) % 10] * 4.0  # logits
    cov = class_coverage(balanced)
    assert cov.classes == 10 and cov.kl == pytest.approx(0.0, abs=1e-12)
    probs = torch.softmax(torch.from_numpy(balanced), 1)
    assert class_coverage(probs).classes == 10  # probabilities give the same argmax
    # 991 images in class 0, one in each other class: share 1/1000 < 0.1/10, not found.
    labels = np.r_[np.zeros(991, int), np.arange(1, 10)]
    cov = class_coverage(np.eye(10)[labels])
    assert cov.classes == 1 and cov.histogram[1] == pytest.approx(0.001)
    # 10 per class except class 9 with 1: share 1/91 >= 0.01, found.
    labels = np.r_[np.repeat(np.arange(9), 10), [9]]
    assert class_coverage(np.eye(10)[labels]).classes == 10
    with pytest.raises(GanflowError, match="shape"):
        class_coverage(np.zeros(5))


def _pr_brute(real, fake, k):
    def radii(s):
        d = np.linalg.norm(s[:, None] - s[None], axis=2)
        return np.sort(d, 1)[:, k]

    def inside(q, c, r):
        return np.mean([any(np.linalg.norm(p - cj) <= rj for cj, rj in zip(c, r, strict=True))
                        for p in q])

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(60, 3))
    assert precision_recall(real, real, k=3) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
    # Fake collapsed onto one corner of the real cloud: precise, poor recall.
    fake = real[real[:, 0] > 0.5]
    p, r = precision_recall(real, fake, k=3)
    assert p == 1.0 and r < 0.6
    fake = rng.normal(0.3, 0.7, size=(50, 3))
    got = precision_recall(real, fake, k=2)
    np.testing.assert_allclose(got, _pr_brute(real, fake, 2), rtol=0, atol=1e-12)
    with pytest.raises(GanflowError, match="k must be"):
        precision_recall(real, fake, k=50)


# ------------------------------------------------------------------ classifier
@pytest.fixture(scope="module")
def digits_net(tmp_path_factory):
    """One classifier trained on digits into a fresh cache (a few seconds)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANFLOW_CACHE", str(cache))
        net = feature_net("digits", seed=0)
        yield net, cache


def test_classifier_accuracy_on_digits(digits_net):
    net, cache = digits_net
    assert not net.from_cache and net.accuracy >= 0.97
    meta = json.loads(next(cache.glob("*.json")).read_text())
    assert meta["accuracy"] == net.accuracy and meta["data"] == "digits" and meta["seed"] == 0
    assert len(meta["data_hash"]) == 64 and "ganflow_version" in meta
    feats = net.features(labelled_images("digits").images[:50])
    assert feats.shape == (50, 128) and feats.dtype == np.float64


def test_classifier_cache_reused_and_reproducible(digits_net, monkeypatch):
    net, cache = digits_net
    monkeypatch.setenv("GANFLOW_CACHE", str(cache))
    monkeypatch.setattr("ganflow.metrics.classifier.train_classifier",
                        lambda *a, **k: pytest.fail("retrained despite a cache entry"))
    again = feature_net("digits", seed=0)
    assert again.from_cache and again.accuracy == net.accuracy
    x = labelled_images("digits").images[:64]
    np.testing.assert_array_equal(again.features(x), net.features(x))
    monkeypatch.undo()
    arr = labelled_images("digits")
    fresh = train_classifier(arr.images, arr.labels, seed=0, name="digits")
    state_a, state_b = net.model.state_dict(), fresh.model.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert fresh.accuracy == net.accuracy


def _tiny_set() -> LabelledImages:
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    x = np.where(y[:, None, None, None] == 1, 0.5, -0.5) + 0.1 * rng.normal(size=(40, 1, 4, 4))
    return LabelledImages(x.astype(np.float32), y, "tiny")


def test_corrupt_cache_is_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("GANFLOW_CACHE", str(tmp_path))
    first = feature_net(_tiny_set(), seed=5)
    weights = next(tmp_path.glob("*.safetensors"))
    weights.write_bytes(b"\0garbage")
    second = feature_net(_tiny_set(), seed=5)
    assert not second.from_cache and second.accuracy == first.accuracy
    assert feature_net(_tiny_set(), seed=5).from_cache  # rewritten, readable again
    next(tmp_path.glob("*.json")).write_text("{not json")
    assert not feature_net(_tiny_set(), seed=5).from_cache
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("GANFLOW_CACHE", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("GANFLOW_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "ganflow"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "ganflow"


def test_image_metrics_on_digits(digits_net, monkeypatch):
    _, cache = digits_net
    monkeypatch.setenv("GANFLOW_CACHE", str(cache))
    arr = labelled_images("digits")
    rng = np.random.default_rng(0)
    real = arr.images[rng.permutation(len(arr.images))[:800]].reshape(800, -1)
    good = image_metrics(real, "digits")
    json.dumps(good, allow_nan=False)
    for key in ("frechet_distance", "kernel_distance", "class_coverage", "class_kl",
                "precision", "recall", "classifier_accuracy", "n_fake", "n_real",
                "frechet_distance_floor", "kernel_distance_floor"):
        assert key in good
    assert good["n_fake"] == good["n_real"] == 800 and good["class_coverage"] == 10
    assert good["frechet_distance"] < 2 * good["frechet_distance_floor"]
    noisy = np.clip(real + rng.normal(0, 0.5, real.shape), -1, 1).astype(np.float32)
    bad = image_metrics(noisy, "digits")
    assert bad["frechet_distance"] > 3 * good["frechet_distance"]
    assert bad["kernel_distance"] > good["kernel_distance"]
    ones = np.repeat(arr.images[arr.labels == 1][:1].reshape(1, -1), 100, 0)
    mode = image_metrics(ones, "digits")
    assert mode["class_coverage"] == 1 and mode["class_kl"] == pytest.approx(math.log(10))
    with pytest.raises(GanflowError, match=r"shape \(n, 64\)"):
        image_metrics(real[:, :10], "digits")


def test_unlabelled_images_have_no_classifier(tmp_path):
    np.save(tmp_path / "u.npy", np.zeros((20, 4, 4)))
    with pytest.raises(GanflowError, match="no labels"):
        feature_net(f"mnist:{tmp_path / 'u.npy'}")
