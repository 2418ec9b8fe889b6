r"""The one reader of ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path

from .._io import read_jsonl

__all__ = ["read_metrics"]


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (an empty list if there is none). A torn last line
    (an append cut by a full disk or a kill) is skipped; ``--resume`` rewrites the file
    without it."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return read_jsonl(path)[0]
