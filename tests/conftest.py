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


@pytest.fixture(autouse=True, scope="session")
def _private_feature_cache(tmp_path_factory):
    # The image metrics' classifier is trained once per data set and cached; the suite
    # shares one cache of its own and never writes to the user's ~/.cache/ganflow.
    import os

    old = os.environ.get("GANFLOW_CACHE")
    os.environ["GANFLOW_CACHE"] = str(tmp_path_factory.mktemp("ganflow-cache"))
    yield
    if old is None:
        os.environ.pop("GANFLOW_CACHE", None)
    else:
        os.environ["GANFLOW_CACHE"] = old
