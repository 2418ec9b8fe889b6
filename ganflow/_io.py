"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # mkstemp's 0600 -> what open() would give (0666 & ~umask)
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # a full disk, a file-size limit (EFBIG), Ctrl-C: no half-written temp file stays
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX: the folder entry); a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_safetensors_atomic(path: str | Path, tensors: dict) -> Path:
    """A safetensors file written as :func:`write_bytes_atomic` writes bytes (a write
    error is then a Python :class:`OSError`, and the temp file is removed)."""
    from safetensors.torch import save

    return write_bytes_atomic(path, save(tensors))


def append_line_durable(path: str | Path, line: str) -> None:
    """Append one line (a ``\\n`` is added) and fsync. A failed append (a full disk)
    can leave a torn last line, which :func:`read_jsonl` skips."""
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> tuple[list[dict], bool]:
    """The JSON rows of a ``.jsonl`` file and whether its last line was torn.

    A last line that does not parse (a write cut by a full disk or a kill) is dropped;
    a bad line before it is damage, not a torn append: :class:`GanflowError` names it."""
    from ._errors import GanflowError

    rows: list[dict] = []
    bad: tuple[int, str] | None = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for k, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if bad is not None:
                raise GanflowError(f"{str(path)!r} line {bad[0]} is not JSON ({bad[1]}); "
                                   "only a torn last line is skipped")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                bad = (k, exc.msg)
                continue
            if not isinstance(row, dict):
                bad = (k, "not an object")
                continue
            rows.append(row)
    return rows, bad is not None


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_bytes_atomic(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def check_writable(path: str | Path, flag: str) -> None:
    """Raise :class:`GanflowError` naming ``flag`` unless a file can be written at ``path``
    (by :func:`write_bytes_atomic`): checked before any work, and leaving nothing behind.

    The nearest existing folder on the way up must be a folder in which a file can be
    created (probed with a temporary file, removed at once: ``os.access`` says yes to
    root even on a read-only file system); an existing ``path`` must not be a folder."""
    from ._errors import GanflowError

    path = Path(path)
    if path.is_dir():
        raise GanflowError(f"{flag} {str(path)!r} is a folder; expected a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise GanflowError(f"{flag} {str(path)!r} cannot be written: {str(parent)!r} is not "
                           "a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise GanflowError(f"{flag} {str(path)!r} cannot be written: no file can be created "
                           f"in {str(parent)!r} ({exc.strerror or exc})") from None
