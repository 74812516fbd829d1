"""Atomic writes and writable-folder checks (mzsr_fast._files)."""
import os

import pytest

from mzsr_fast import _files
from mzsr_fast._files import TEMP_PREFIX, atomic_open, atomic_write, check_writable_folder


def test_atomic_write_replaces_the_file_and_keeps_its_mode(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, b"old")
    atomic_write(target, b"new content")
    assert target.read_bytes() == b"new content" and os.listdir(tmp_path) == ["f.bin"]
    assert target.stat().st_mode & 0o777 == _files._FILE_MODE


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_a_writer_stopped_mid_write_leaves_the_old_file_and_no_temporary(tmp_path, interruption):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(interruption):
        with atomic_open(target) as f:
            f.write(b"half of the new")
            raise interruption()
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_check_writable_folder(tmp_path, monkeypatch):
    check_writable_folder(tmp_path)
    assert os.listdir(tmp_path) == []  # the trial file is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        check_writable_folder(tmp_path / "file")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError):
        check_writable_folder(tmp_path)


def test_the_temporary_file_is_hidden_beside_the_target(tmp_path):
    with atomic_open(tmp_path / "f"):
        names = os.listdir(tmp_path)
    assert len(names) == 1 and names[0].startswith(TEMP_PREFIX)
    assert os.listdir(tmp_path) == ["f"]
