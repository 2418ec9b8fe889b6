r"""Safety of a run folder: one writer at a time, no paths out of the folder,
the newest checkpoint that loads, and write errors that end a run cleanly.

The training layer (:mod:`ganflow.training`) calls these from small hooks:

* :func:`run_lock` -- an exclusive lock ``<run>/.lock`` (``fcntl.flock``, holding
  ``pid host``) for every writer (``train``, ``train --resume``). A second writer gets a
  one-line :class:`GanflowError` naming the folder and the holder's pid. The kernel drops
  a flock when its process dies, even by SIGKILL, so a stale lock file never blocks: the
  next writer takes it over and says so. Readers (sample, eval, track, plot) take no lock.
* :func:`check_run_folder` -- refuses symlinked ``checkpoints/``, ``snapshots/``,
  ``samples/`` and symlinked run files: a received folder must not make ganflow read,
  write or delete outside it.
* :func:`load_newest_checkpoint` -- ``latest.json`` (the commit record), then the older
  ``state-<iteration>.json`` + ``.safetensors`` pairs, newest first; a damaged one is
  reported on stderr and skipped, and when none loads a :class:`GanflowError` names the
  files. ``weights`` must be a plain ``state-<iteration>.safetensors`` name.
* :func:`write_errors` -- an :class:`OSError` while writing (a full disk, a file-size
  limit) ends the run with a one-line :class:`GanflowError`; the atomic writes of
  :mod:`ganflow._io` leave the last good checkpoint, and no temp file, behind.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .._errors import GanflowError
from ._lock import LOCK_NAME, FolderLock, note
from ._lock import NOFOLLOW as NOFOLLOW

# the folders and files a run writes; none may be a symlink
RUN_SUBDIRS = ("checkpoints", "snapshots", "samples", "chain")
RUN_FILES = ("config.json", "metrics.jsonl", "summary.md", "distil.json")
_WEIGHTS = re.compile(r"state-(\d{8,})\.safetensors")
_STATE = re.compile(r"state-(\d{8,})\.json")


class NoCheckpointError(GanflowError):
    """A run folder without any checkpoint (its run was killed before the first one)."""


# ------------------------------------------------------------------ the folder
def check_run_folder(run_dir: str | Path) -> None:
    """Refuse a run folder whose run subfolders or files are symlinks (they could point
    anywhere: ganflow reads, writes and deletes only inside the folder)."""
    run_dir = Path(run_dir)
    for name in (*RUN_SUBDIRS, *RUN_FILES, LOCK_NAME, "checkpoints/latest.json"):
        p = run_dir / name
        if p.is_symlink():
            raise GanflowError(
                f"{str(p)!r} is a symlink (to {os.readlink(p)!r}); ganflow reads and writes "
                f"only inside the run folder {str(run_dir)!r}: replace it by a real "
                f"{'folder' if name in RUN_SUBDIRS else 'file'}")


def check_writable_target(run_dir: str | Path) -> None:
    """The nearest existing folder of ``run_dir`` (the folder itself, or the parent it
    will be created in) must be a writable folder: checked before any long work."""
    run_dir = Path(run_dir)
    probe = run_dir
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling symlink: exists() is False, mkdir would fail
            raise GanflowError(f"cannot create run folder {str(run_dir)!r}: {str(probe)!r} "
                               "is a dangling symlink")
        probe = probe.parent
    if not probe.is_dir():
        raise GanflowError(f"cannot create run folder {str(run_dir)!r}: {str(probe)!r} is "
                           "not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise GanflowError(f"cannot create run folder {str(run_dir)!r}: {str(probe)!r} is "
                           "not writable (choose another --out)")


def remove_stale_temps(run_dir: str | Path) -> None:
    """Delete the ``.*.tmp`` files of writes a killed process left (only under the lock)."""
    run_dir = Path(run_dir)
    for folder in (run_dir, *(run_dir / d for d in RUN_SUBDIRS)):
        if folder.is_dir() and not folder.is_symlink():
            for p in folder.glob(".*.tmp"):
                if p.is_file() and not p.is_symlink():
                    p.unlink(missing_ok=True)


def has_content(run_dir: str | Path) -> bool:
    """Whether a folder holds anything but what a killed ``train`` leaves before its
    config.json (the lock file, temp files): such a folder may be trained into again."""
    return any(p.name != LOCK_NAME and not (p.name.startswith(".") and p.name.endswith(".tmp"))
               for p in Path(run_dir).iterdir())


@contextmanager
def run_lock(run_dir: str | Path, ctx=None, *, fresh: bool = False) -> Iterator[None]:
    """Hold the writer's lock of ``run_dir`` (rank 0 takes it; every rank learns the
    outcome, so all fail together). ``fresh``: creates the folder and checks that it
    holds nothing but the lock (a second ``train --out`` of the same folder that raced
    past the emptiness check stops here)."""
    run_dir = Path(run_dir)
    main = ctx is None or ctx.is_main
    lock, err = None, None
    if main:
        try:
            if fresh:
                run_dir.mkdir(parents=True, exist_ok=True)
            check_run_folder(run_dir)
            lock = FolderLock(run_dir)
            lock.acquire()
            if fresh and has_content(run_dir):
                lock.release()
                lock = None
                raise GanflowError(
                    f"output folder {str(run_dir)!r} was filled by another run meanwhile; "
                    "choose a new --out")
            remove_stale_temps(run_dir)
        except GanflowError as exc:
            err = str(exc)
        except OSError as exc:  # mkdir refused, a read-only folder, ...
            err = f"cannot write the run folder {str(run_dir)!r}: {exc.strerror or exc}"
    if ctx is not None:
        err = ctx.broadcast_object(err)
    if err is not None:
        if lock is not None:
            lock.release()
        raise GanflowError(err)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


# ------------------------------------------------------------------ write errors
@contextmanager
def write_errors(run_dir: str | Path) -> Iterator[None]:
    """An OSError while the run writes (ENOSPC, EFBIG, EDQUOT, EIO, ...) becomes one line
    naming the folder, the error and the checkpoint that stands."""
    try:
        yield
    except OSError as exc:
        run_dir = Path(run_dir)
        where = f" ({exc.filename})" if exc.filename else ""
        why = exc.strerror or str(exc) or type(exc).__name__
        try:
            it = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["iteration"]
            kept = f"the checkpoint of iteration {it} is kept"
        except (OSError, ValueError, KeyError, TypeError):
            kept = "no checkpoint was written"
        raise GanflowError(
            f"writing the run folder {str(run_dir)!r} failed: {why}{where}; {kept}: free "
            f"space (or raise the limit), then continue with: ganflow train --resume "
            f"{run_dir}") from exc


# ------------------------------------------------------------------ checkpoints
def checkpoint_files(iteration: int) -> tuple[str, str]:
    """The weights and state file names of the checkpoint of ``iteration``."""
    return f"state-{iteration:08d}.safetensors", f"state-{iteration:08d}.json"


def prune_checkpoints(ck: Path, current: str) -> None:
    """Keep the checkpoint ``current`` (a weights name) and the newest one before it;
    delete the others, including any newer ones (a future abandoned by a resume from an
    older checkpoint)."""
    m = _WEIGHTS.fullmatch(current)
    assert m is not None, current
    now = int(m.group(1))
    its = sorted({int(mm.group(1)) for p in ck.iterdir()
                  if (mm := _WEIGHTS.fullmatch(p.name) or _STATE.fullmatch(p.name))})
    older = [i for i in its if i < now]
    keep = {now, *older[-1:]}
    for i in its:
        if i not in keep:
            for name in checkpoint_files(i):
                (ck / name).unlink(missing_ok=True)


def _candidates(ck: Path) -> Iterator[tuple[str, Callable[[], dict]]]:
    """(label, state loader) of each checkpoint, newest first: latest.json's, then the
    older state-<it>.json files (newer ones were never committed by latest.json)."""
    newest = None
    latest = ck / "latest.json"
    if latest.exists() or latest.is_symlink():
        def read_latest() -> dict:
            return _read_state(latest)

        yield "checkpoints/latest.json", read_latest
        try:  # a valid latest.json commits its iteration; a damaged one says nothing
            newest = read_latest()["iteration"]
        except Exception:
            newest = None
    states = sorted(((int(m.group(1)), p) for p in ck.glob("state-*.json")
                     if (m := _STATE.fullmatch(p.name))), reverse=True)
    for it, p in states:
        if newest is not None and it >= newest:
            continue  # latest.json's own (already tried), or never committed
        yield f"checkpoints/{p.name}", (lambda p=p: _read_state(p))


def _read_state(path: Path) -> dict:
    if path.is_symlink():
        raise GanflowError(f"{path.name} is a symlink")
    state = json.loads(path.read_text())
    if not isinstance(state, dict):
        raise GanflowError(f"{path.name} holds no checkpoint record")
    weights = state.get("weights")
    if not isinstance(weights, str) or not _WEIGHTS.fullmatch(weights):
        raise GanflowError(f"{path.name} names weights {weights!r}, not a "
                           "state-<iteration>.safetensors file of checkpoints/")
    if not isinstance(state.get("iteration"), int):
        raise GanflowError(f"{path.name} has no integer iteration")
    return state


def load_newest_checkpoint(run_dir: str | Path,
                           apply: Callable[[dict, dict], None]) -> dict:
    """Load the newest checkpoint of ``run_dir`` that loads: ``apply(state, tensors)``
    (which raises on a mismatch) for each candidate, newest first. Failures are reported
    on stderr with the checkpoint used; if none loads, a :class:`GanflowError` names
    them. A :class:`GanflowError` from ``apply`` (a real refusal, e.g. the world size)
    is raised at once. Returns the state used."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    ck = run_dir / "checkpoints"
    check_run_folder(run_dir)
    failed: list[str] = []
    if ck.is_dir():
        for label, read in _candidates(ck):
            weights = "?"
            try:
                state = read()
                weights = f"checkpoints/{state['weights']}"
                wpath = ck / state["weights"]
                if wpath.is_symlink():
                    raise GanflowError(f"{state['weights']} is a symlink")
                tensors = load_file(str(wpath))
            except Exception as exc:  # damaged: JSON, names, a truncated file, ...
                failed.append(f"{label} ({weights}): {_why(exc)}")
                continue
            try:
                apply(state, tensors)
            except GanflowError:
                raise
            except Exception as exc:  # another architecture, a changed data shape, ...
                failed.append(f"{weights} (from {label}): does not fit the networks built "
                              f"from config.json (changed architecture or data shape?): "
                              f"{_why(exc)}")
                continue
            for f in failed:
                note(f"checkpoint {f}: skipped")
            if failed:
                note(f"using checkpoints/{state['weights']} (iteration "
                      f"{state['iteration']}) instead")
            return state
    if not failed:
        raise NoCheckpointError(f"cannot load {str(run_dir)!r}: no checkpoint in it "
                                f"({str(ck / 'latest.json')!r} is missing)")
    raise GanflowError(f"cannot load {str(run_dir)!r}: no checkpoint loads: "
                       + "; ".join(failed))


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------ metrics and data
def rewrite_metrics(path: Path, iteration: int) -> None:
    """Keep the rows of ``metrics.jsonl`` up to the checkpoint's ``iteration`` (rows after
    it, from a crash, and a torn last line are dropped): the file then reads as if the
    run had never stopped."""
    from .._io import read_jsonl, write_bytes_atomic

    if iteration <= 0:
        # a start over (or a stop at 0): run() evaluates iteration 0 again, as a new run
        path.unlink(missing_ok=True)
        return
    rows, torn = read_jsonl(path) if path.exists() else ([], False)
    if torn:
        note(f"dropping the torn last line of {str(path)!r} (an interrupted append)")
    keep = [r for r in rows if isinstance(r.get("iteration"), int) and r["iteration"] <= iteration]
    write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in keep).encode())


# the TrainConfig fields that hold a --data spec
DATA_SPEC_FIELDS = ("data", "particle_init", "init")


def absolute_data_spec(spec: str) -> str:
    """A data spec with a file or folder path made absolute (``x.npy`` ->
    ``/abs/x.npy``, ``mnist:PATH`` -> ``mnist:/abs/PATH``); names and ``normal:...``
    are returned unchanged.

    Why absolute rather than relative to the run folder: config.json's ``data`` is read
    as a plain spec by every tool (``resume``, ``sample``, ``eval``, ``track``,
    benchmarks); an absolute path means the same file whatever the working directory,
    with no rule for each reader to know, and a moved data file gives load_data's clear
    "does not exist" error."""
    from ..data import data_names

    if not isinstance(spec, str) or not spec or spec == "generator" or spec in data_names() \
            or spec.startswith("normal:"):
        return spec
    if spec.startswith("mnist:"):
        rest = spec[len("mnist:"):]
        return f"mnist:{os.path.abspath(rest)}" if rest and Path(rest).exists() else spec
    return os.path.abspath(spec) if Path(spec).exists() else spec


def absolute_data_specs(cfg) -> dict:
    """The data-spec fields of a TrainConfig whose absolute form differs (for replace())."""
    out = {}
    for name in DATA_SPEC_FIELDS:
        if hasattr(cfg, name):
            v = getattr(cfg, name)
            a = absolute_data_spec(v)
            if a != v:
                out[name] = a
    return out
