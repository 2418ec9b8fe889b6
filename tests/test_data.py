"""Data sets: named samplers are deterministic; user tables fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganflow import GanflowError
from ganflow.data import data_names, load_data


@pytest.mark.parametrize("name", ["swissroll", "moons", "checkerboard", "circles", "ring8",
                                  "grid25"])
def test_named_sets_are_deterministic(name):
    ds = load_data(name)
    a = ds.sample(500, torch.Generator().manual_seed(3))
    b = ds.sample(500, torch.Generator().manual_seed(3))
    c = ds.sample(500, torch.Generator().manual_seed(4))
    assert a.shape == (500, 2) and a.dtype == torch.float32 and ds.dim == 2
    assert torch.isfinite(a).all() and ds.length_scale > 0
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert float(a.abs().max()) < 6  # every set lives in a box of a few units
    assert (ds.mixture is not None) == (name in ("ring8", "grid25"))


def test_checkerboard_lands_on_black_cells():
    x = load_data("checkerboard").sample(2000, torch.Generator().manual_seed(0)).double()
    cells = torch.floor(x + 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()


def test_mixture_specs():
    ds = load_data("normal:1,-1:0.5")
    assert ds.dim == 2 and ds.length_scale == pytest.approx(0.5)
    x = ds.sample(4000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.mean(0), torch.tensor([1.0, -1.0]), atol=0.05, rtol=0)
    assert set(data_names()) >= {"ring8", "grid25", "swissroll", "moons", "checkerboard",
                                 "circles"}


def test_tables(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(50, 3))
    np.save(tmp_path / "t.npy", arr)
    ds = load_data(tmp_path / "t.npy")
    assert ds.dim == 3 and ds.mixture is None and ds.length_scale > 0
    x = ds.sample(20, torch.Generator().manual_seed(0))
    rows = {tuple(np.round(r, 5)) for r in arr.astype(np.float32).tolist()}
    assert all(tuple(np.round(r, 5)) in rows for r in x.tolist())  # drawn from the table
    (tmp_path / "t.csv").write_text("a,b\n" + "\n".join(f"{i},{2 * i}" for i in range(12)))
    assert load_data(str(tmp_path / "t.csv")).dim == 2


@pytest.mark.parametrize(("content", "match"), [
    (np.zeros((4, 3, 2)), "shape"),
    (np.zeros((5, 2)), "rows"),
    (np.array([[0.0, 1.0]] * 20 + [[np.nan, 0.0]]), "NaN"),
])
def test_bad_npy_tables(tmp_path, content, match):
    path = tmp_path / "bad.npy"
    np.save(path, content)
    with pytest.raises(GanflowError, match=match):
        load_data(path)


def test_unreadable_and_unknown(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file")
    with pytest.raises(GanflowError, match="cannot read"):
        load_data(tmp_path / "junk.npy")
    (tmp_path / "words.csv").write_text("a,b\nx,y\nz,w\n")
    with pytest.raises(GanflowError, match="cannot read"):
        load_data(tmp_path / "words.csv")
    with pytest.raises(GanflowError, match="does not exist"):
        load_data(tmp_path / "missing.npy")
    with pytest.raises(GanflowError, match="unknown data 'spiral'"):
        load_data("spiral")
