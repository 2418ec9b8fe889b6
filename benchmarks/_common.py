"""Shared benchmark helpers: machine/version record, timing, table printing, JSON output."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def environment() -> dict:
    import numpy
    import scipy
    import torch

    import ganflow

    return {
        "ganflow": ganflow.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def timed(fn, repeats: int = 3):
    """Run ``fn`` ``repeats`` times; return (last result, list of wall seconds)."""
    out, secs = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        secs.append(time.perf_counter() - start)
    return out, secs


def summary(secs: list[float]) -> dict:
    return {"min": min(secs), "median": statistics.median(secs), "runs": secs}


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)
