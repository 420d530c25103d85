"""engine.files: the one atomic write."""

from __future__ import annotations

import os

import pytest

from engine.files import atomic_write_bytes


def test_writes_and_replaces_creating_the_folder(tmp_path):
    target = tmp_path / "a" / "b.bin"
    assert atomic_write_bytes(target, b"one") == target and target.read_bytes() == b"one"
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(os.listdir(target.parent)) == ["b.bin"]  # no temporary file left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "b.bin"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["b.bin"]
