"""Shared fixtures: tiny image folders made on the fly, and a trained tiny run."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
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


@pytest.fixture(scope="module", autouse=True)
def _module_scratch_goes(request, tmp_path_factory):
    """Remove what a module's fixtures wrote once the module is done, unless one of its tests failed.

    Each training run writes three copies of its weights (best, last, model); kept for the whole
    session, the suite's scratch grows to many gigabytes. Passing tests' own tmp_path folders go at
    once (tmp_path_retention_policy in pyproject.toml); this does the same for module fixtures.
    """
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed != failed:
        return
    for entry in set(base.iterdir()) - before:
        if entry.name != "cache":
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def own_cache(folder: Path):
    """XDG_CACHE_HOME=folder for a module-scoped fixture (the per-test isolation above does not reach those)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(folder))
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


def need_extra(module: str, extra: str):
    """``pytest.importorskip`` for an optional extra, except where the extras are promised.

    With ``TRANSFERKIT_REQUIRE_EXTRAS=1`` (``make test`` sets it, and so should CI) a missing
    package is an import error that fails the run instead of a skip that hides a whole suite.
    """
    import importlib

    if os.environ.get("TRANSFERKIT_REQUIRE_EXTRAS") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"the '{extra}' extra is not installed (pip install -e '.[{extra}]')")


# A --plugin that holds training still right after a checkpoint, so that a test can kill or
# signal the process at a known step (no race against a running loop). The first process to
# reach the N-th checkpoint writes the marker file and waits there until SIGINT/SIGTERM arrives
# (or SIGKILL ends it); a process started later (a torchrun restart) finds the marker and runs on.
PAUSE_PLUGIN = '''
import os
import time
from pathlib import Path

from transferkit.core import distributed as dist
from transferkit.train import trainer

_at, _marker = int(os.environ["TK_TEST_PAUSE_AT_SAVE"]), Path(os.environ["TK_TEST_PAUSE_MARKER"])
_save_last, _saves = trainer.Training.save_last, [0]


def save_last(self):
    _save_last(self)
    _saves[0] += 1
    if _saves[0] == _at and dist.is_main() and not _marker.exists():
        tmp = _marker.with_suffix(".tmp")
        tmp.write_text(f"{self.state.global_step}")
        os.replace(tmp, _marker)
        while not self.signalled:
            time.sleep(0.01)


trainer.Training.save_last = save_last
'''


class Killed(BaseException):
    """Ends the process's work like a kill: nothing of transferkit's catches it."""


def killed_after_first_checkpoint(monkeypatch, command: list[str]) -> None:
    """Run ``transferkit COMMAND`` in this process and stop it right after its first checkpoint
    (``last.pt``) is written, as a kill there would: what ``--resume`` must continue from."""
    from transferkit.cli import main
    from transferkit.train import trainer

    save_last = trainer.Training.save_last

    def killed_after_saving(self):
        save_last(self)
        raise Killed

    monkeypatch.setattr(trainer.Training, "save_last", killed_after_saving)
    with pytest.raises(Killed):
        main(command)
    monkeypatch.setattr(trainer.Training, "save_last", save_last)


def pause_plugin(tmp_path: Path, at_save: int = 1) -> tuple[list[str], dict, Path]:
    """``(["--plugin", FILE], env, marker)``: training pauses after its ``at_save``-th checkpoint."""
    plugin, marker = tmp_path / "pause_after_checkpoint.py", tmp_path / "paused.marker"
    plugin.write_text(PAUSE_PLUGIN)
    env = {"TK_TEST_PAUSE_AT_SAVE": str(at_save), "TK_TEST_PAUSE_MARKER": str(marker)}
    return ["--plugin", str(plugin)], env, marker


def wait_until_paused(marker: Path, proc, timeout: float = 300) -> int:
    """Block until the paused process wrote ``marker``; return the step it paused at.

    Polling here decides nothing: the process waits at that step until the test acts.
    """
    import time

    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"the process ended before pausing:\n{proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"{marker} never appeared"
        time.sleep(0.05)
    return int(marker.read_text())
