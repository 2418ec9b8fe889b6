r"""A run folder's writer's lock: ``<run>/.lock`` under ``fcntl.flock``, holding the
holder's ``pid host``. The kernel drops a flock when its process dies, even by SIGKILL,
so a stale lock file never blocks: the next writer takes it over and says so."""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

from .._errors import GanflowError

__all__ = ["LOCK_NAME", "NOFOLLOW", "FolderLock", "note"]

LOCK_NAME = ".lock"
# open() flag that refuses a symlink (0 where the platform has none)
NOFOLLOW = getattr(os, "ONOFOLLOW", 0)


def note(msg: str) -> None:
    """One line on stderr: what ganflow did about a fault."""
    print(f"ganflow: {msg}", file=sys.stderr, flush=True)


def _read_holder(path: Path) -> tuple[int | None, str]:
    try:
        pid, _, host = path.read_text().strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return None, ""


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """The exclusive ``flock`` of ``<run>/.lock``, holding ``pid host`` of the writer."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.path, self.fd = run_dir, run_dir / LOCK_NAME, -1

    def _busy(self, pid: int | None, host: str) -> GanflowError:
        who = f"pid {pid}" if pid is not None else "another process"
        where = f" on {host}" if host and host != socket.gethostname() else ""
        return GanflowError(
            f"run folder {str(self.run_dir)!r} is in use by {who}{where} (lock "
            f"{str(self.path)!r}): one writer at a time; wait for it, or stop it first")

    def acquire(self) -> None:
        me = f"{os.getpid()} {socket.gethostname()}\n"
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            self._acquire_by_pid(me)
            return
        for _ in range(10):  # a holder may unlink the file between our open and lock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
            except OSError as exc:
                raise GanflowError(f"cannot lock run folder {str(self.run_dir)!r}: "
                                   f"{exc.strerror} ({str(self.path)!r})") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy(*_read_holder(self.path)) from None
            except OSError as exc:  # no flock here (some network file systems)
                os.close(fd)
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self._acquire_by_pid(me)
                return
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # unlinked by its last holder after our open: retry on the new one
                os.close(fd)
                continue
            self._take_over(fd, me)
            return
        raise GanflowError(f"cannot lock run folder {str(self.run_dir)!r}: the lock keeps "
                           "changing hands")

    def _take_over(self, fd: int, me: str) -> None:
        pid, host = _read_holder(self.path)
        if pid is not None and pid != os.getpid():
            # we hold the flock, so its writer is gone (a killed or crashed process)
            note(f"taking over the stale lock of pid {pid}"
                  f"{' on ' + host if host else ''} in {str(self.run_dir)!r} (it is not "
                  "running; a killed run: its last checkpoint stands)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        self.fd = fd

    def _acquire_by_pid(self, me: str) -> None:
        """Without flock: O_EXCL creation; a lock of a dead pid on this host is stale."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644)
            except FileExistsError:
                pid, host = _read_holder(self.path)
                if pid is not None and host == socket.gethostname() and not _pid_alive(pid):
                    note(f"taking over the stale lock of pid {pid} in {str(self.run_dir)!r}")
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._busy(pid, host) from None
            os.write(fd, me.encode())
            self.fd = fd
            return
        raise self._busy(*_read_holder(self.path))

    def release(self) -> None:
        if self.fd < 0:
            return
        # unlink while still holding it (a waiter re-checks the inode), then let go
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


