"""Exact-resume checks without killing processes: copy the run directory the moment its n-th
checkpoint lands (as a kill right after that write would leave it), resume the copy, and compare
its final weights with the uninterrupted run's."""
from __future__ import annotations

import shutil
from pathlib import Path

from transferkit.engine import checkpoint


def snapshot_at(monkeypatch, n: int, run_dir: Path, copy_to: Path) -> None:
    """While the test runs, copy ``run_dir`` to ``copy_to`` right after its ``n``-th checkpoint."""
    original = checkpoint.save_checkpoint
    count = {"saves": 0}

    def save_and_copy(where, payload):
        original(where, payload)
        count["saves"] += 1
        if count["saves"] == n and Path(where) == Path(run_dir):
            shutil.copytree(run_dir, copy_to)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_and_copy)
