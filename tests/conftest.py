import matplotlib
import pytest
import torch

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    # Tests compare against closed forms in float64; keep the global state predictable.
    torch.manual_seed(0)
    yield
