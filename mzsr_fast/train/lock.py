"""One training process per run folder: an exclusive lock on RUN_DIR/.lock.

The lock is an fcntl.flock held on an open file for the life of the run; the
kernel releases it when the process ends in any way (even kill -9), so a
stale .lock file never blocks a later --resume. The file holds the holder's
pid, host and start time, which a refused process names.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time

__all__ = ["RunLock", "RunLockedError", "LOCK_NAME"]

LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """The run folder is in use by another process."""


class RunLock:
    """with RunLock(run_dir): ... holds RUN_DIR/.lock (RunLockedError when another process holds it)."""

    def __init__(self, run_dir):
        self.path = os.path.join(os.fspath(run_dir), LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(f"--out: {os.path.dirname(self.path)} is in use by another training process "
                                 f"({holder}); wait for it to finish or stop it, or choose another folder") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Unlock (the file stays: removing it could let two processes lock different files)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor of the open file releases the flock
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
    return text or "pid not yet recorded"
