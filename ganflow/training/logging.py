r"""Where an evaluation goes: the loop hands every metrics row to its loggers, in order.

* :class:`SnapshotLog` -- the model at every evaluation, ``snapshots/<G|P|C>-<it>.safetensors``
  (``ganflow track`` compares each with the PDE solution at the same flow time; a few KB
  for the MLPs). First, so that every logged row has its snapshot.
* :class:`ImageGridLog` -- image data: ``samples/grid-<it>.png``, how the images form.
* :class:`MetricsLog` -- ``metrics.jsonl``, always: one JSON object per evaluation,
  appended and fsynced (a torn last line is skipped by the readers).
* :class:`TensorBoardLog` -- ``--log tensorboard``: every number of the row as a scalar
  under ``<run>/tensorboard`` (needs ``pip install 'ganflow[tensorboard]'``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from .._errors import GanflowError
from .._io import append_line_durable, write_safetensors_atomic
from ..run_plots import save_image_grid

if TYPE_CHECKING:
    from .session import Session

__all__ = ["ImageGridLog", "Logger", "MetricsLog", "SnapshotLog", "TensorBoardLog",
           "loggers_for"]


class Logger(Protocol):
    def log(self, s: Session, row: dict) -> None: ...

    def close(self) -> None: ...


class _FileLog:
    """A logger whose every write is complete when ``log`` returns: nothing to close."""

    def close(self) -> None:
        pass


class SnapshotLog(_FileLog):
    def log(self, s: Session, row: dict) -> None:
        prefix, tensors = s.method.snapshot()
        write_safetensors_atomic(
            s.run_dir / "snapshots" / f"{prefix}-{s.iteration:08d}.safetensors", tensors)


class ImageGridLog(_FileLog):
    def log(self, s: Session, row: dict) -> None:
        grid = s.draw(min(64, s.cfg.eval_samples), torch.Generator().manual_seed(s.cfg.seed + 1))
        save_image_grid(grid.cpu(), s.data.image_shape,
                        s.run_dir / "samples" / f"grid-{s.iteration:08d}.png")


class MetricsLog(_FileLog):
    def log(self, s: Session, row: dict) -> None:
        append_line_durable(s.run_dir / "metrics.jsonl", json.dumps(row))


class TensorBoardLog:
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise GanflowError(
                "--log tensorboard needs the tensorboard package: pip install "
                "'ganflow[tensorboard]' (or use --log jsonl)") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, s: Session, row: dict) -> None:
        for key, value in row.items():
            if key != "iteration" and isinstance(value, int | float) and not isinstance(
                    value, bool):
                self.writer.add_scalar(key, value, global_step=s.iteration)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def loggers_for(s: Session) -> list[Logger]:
    """The loggers of a run on its main process (the others log nothing)."""
    out: list[Logger] = [SnapshotLog()]
    if s.data.image_shape is not None:
        out.append(ImageGridLog())
    out.append(MetricsLog())
    if s.cfg.log == "tensorboard":
        out.append(TensorBoardLog(s.run_dir))
    return out
