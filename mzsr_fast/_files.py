"""Atomic file writes and writable folders (no torch: the command line's
checks run before anything heavy is imported).

A file is written to a temporary file in its own folder (named TEMP_PREFIX...),
flushed, fsync'ed, renamed over the target with os.replace and the folder
fsync'ed, so the target holds its old content or all of the new one, never a
part. A writer stopped by an exception (KeyboardInterrupt included) removes its
temporary file; a process killed outright (SIGKILL, power cut) may leave one
behind, which is never mistaken for the target.
"""
from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["TEMP_PREFIX", "atomic_open", "atomic_write", "fsync_dir", "check_writable_folder"]

TEMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp makes 0600


def fsync_dir(path) -> None:
    """fsync a folder so a rename inside it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path):
    """A binary file object to write path's new content to; path is replaced
    when the block ends normally and left as it was when it raises."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


def atomic_write(path, data: bytes) -> None:
    """Write data to path so that path holds either its old content or all of data."""
    with atomic_open(path) as f:
        f.write(data)


def check_writable_folder(path) -> None:
    """OSError unless a file can be made in the existing folder path: os.access
    first, then a trial temporary file (removed at once), which also catches
    what access() cannot see (read-only mounts, full quotas, ACLs)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(2, "no such folder", path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(13, "permission denied", path)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path)
    os.close(fd)
    os.unlink(tmp)
