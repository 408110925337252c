"""Shared fixtures: tiny image folders made on the fly, and a trained tiny run."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own feature cache, never the user's."""
    root = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(root))
    monkeypatch.setenv("TRANSFERKIT_DATA", str(root / "data"))
    # Fashion-MNIST stays reachable from the Debian package location, so the data env var only
    # moves downloads of other data sets.
    yield


def make_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, size: int = 20, seed: int = 0) -> Path:
    """Class k images are noisy shapes of a distinct colour: easy to learn, real PNG files."""
    rng = np.random.default_rng(seed)
    palette = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (200, 200, 40)]
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(palette[k % len(palette)], dtype=np.float64)
            noise = rng.normal(0, 25, size=(size, size, 3))
            img = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


TINY_TRAIN = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "1",
              "--batch-size", "4", "--quiet"]


@pytest.fixture
def tiny_run(tmp_path, image_folder) -> Path:
    """A finished run of one epoch on a two-class folder (resnet18, random init, 32 px)."""
    from transferkit.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--out", str(out), *TINY_TRAIN]) == 0
    return out


def fresh_process() -> None:
    """Forget registered backbone names and imported user files, as a new `transferkit` process would."""
    import sys

    from transferkit.models import plugins
    from transferkit.models.families import custom

    custom.forget_all()
    for name in [m for m in sys.modules if m.startswith("transferkit_user_")]:
        del sys.modules[name]
    plugins.load_entry_points.cache_clear()


@pytest.fixture
def isolated_registry():
    """Registered names, plugin modules and the entry-point scan are put back after the test."""
    import sys

    from transferkit.models import plugins
    from transferkit.models.families import custom

    saved = custom.forget_all(), set(sys.modules)
    custom.restore(saved[0])
    plugins.load_entry_points.cache_clear()
    yield
    custom.restore(saved[0])
    for name in set(sys.modules) - saved[1]:
        if name.startswith("transferkit_user_"):
            del sys.modules[name]
    plugins.load_entry_points.cache_clear()


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def user_copy(tmp_path: Path, name: str) -> Path:
    """A copy of an example file that the test may move or delete."""
    import shutil

    target = tmp_path / "src" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(EXAMPLES / name, target)
    return target
