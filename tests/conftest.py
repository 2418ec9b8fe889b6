import matplotlib
import pytest
import torch

matplotlib.use("Agg")

# One thread for the whole suite: the tests' networks and blocks are small, and on a busy
# 2-core machine two OpenMP threads thrash (measured: a particle KDE step 10x slower, the
# trainer tests 311 s instead of 32 s). Benchmarks, not tests, measure multi-thread speed.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    # Tests compare against closed forms in float64; keep the global state predictable.
    torch.manual_seed(0)
    yield
