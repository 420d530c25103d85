"""Retention: old result images and references go, recent ones and reused references stay."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from PIL import Image

from bot.references import ReferenceStore
from bot.retention import remove_old_files

DAY = 86400.0


def _file(path: Path, age_days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    t = time.time() - age_days * DAY
    os.utime(path, (t, t))
    return path


def test_old_files_and_their_empty_folders_are_removed(tmp_path: Path):
    results, refs = tmp_path / "results", tmp_path / "references"
    old_job = _file(results / "job-old" / "0.png", 40)
    new_job = _file(results / "job-new" / "0.png", 2)
    mixed_old = _file(results / "job-mixed" / "0.png", 40)
    mixed_new = _file(results / "job-mixed" / "1.png", 1)
    old_ref, new_ref = _file(refs / "a.png", 31), _file(refs / "b.png", 29)
    removed = remove_old_files([results, refs, tmp_path / "missing"], 30 * DAY)
    assert removed == 3
    assert not old_job.exists() and not old_job.parent.exists()  # its folder went with it
    assert not mixed_old.exists() and mixed_new.exists() and new_job.exists()
    assert not old_ref.exists() and new_ref.exists()


async def test_a_reused_reference_counts_as_new(tmp_path: Path):
    """The same picture uploaded again refreshes the stored file's age, so retention keeps it."""
    store = ReferenceStore(tmp_path / "references", max_bytes=1 << 20, max_pixels=1 << 20)
    first = await store.save(Image.new("RGB", (8, 8), (1, 2, 3)))
    old = time.time() - 40 * DAY
    os.utime(first.path, (old, old))
    again = await store.save(Image.new("RGB", (8, 8), (1, 2, 3)))
    assert again.path == first.path
    assert remove_old_files([tmp_path / "references"], 30 * DAY) == 0 and first.path.exists()


async def test_retention_runs_at_start_and_is_off_at_zero_days(tmp_path: Path):
    from bot.retention import Retention

    old = _file(tmp_path / "results" / "j" / "0.png", 40)
    off = Retention([tmp_path / "results"], 0)
    off.start()
    assert off._task is None
    on = Retention([tmp_path / "results"], 30)
    on.start()
    try:
        for _ in range(100):
            if not old.exists():
                break
            await asyncio.sleep(0.02)
    finally:
        await on.stop()
    assert not old.exists() and on._task is None
