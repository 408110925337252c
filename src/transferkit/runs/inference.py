"""A run's network on a CPU engine: real images from the run's data check it, and guard reduced precision.

``eval``, ``predict``, ``serve`` and ``export`` all run a finished run's frozen classifier; they
share how its images are found: a few real ones for the parity check (random inputs when the
data has moved), the validation split for the accuracy guard, the training split for int8
calibration, each decoded only as far as it is used.
"""
from __future__ import annotations

from pathlib import Path

import torch

from transferkit.core.cachedir import cache_root
from transferkit.core.errors import UserError
from transferkit.data.imagesets import decode_splits
from transferkit.data.specs import load_data
from transferkit.data.transforms import Preprocess, prepare
from transferkit.models.outputs import Logits
from transferkit.models.plugins import model_code_sha256
from transferkit.runtimes.choose import Choice, Frozen, Settings, choose, validate
from transferkit.runtimes.guard import CALIBRATION, IMAGES, Guard, spread


def _splits(run: dict):
    return load_data(run["config"]["data"], run["config"].get("seed", 0), run["config"].get("allow_outside_paths", False))


def _decoded(images, count: int, pre: Preprocess):
    """Up to ``count`` images spread over ``images``, decoded (a broken file is left out)."""
    pick = spread(len(images), count).tolist()
    return decode_splits({"s": images.subset(pick)}, pre.size, pre.interpolation, skip_bad=True, announce=False)["s"]


def real_images(run: dict, pre: Preprocess, count: int) -> tuple[torch.Tensor, list[str]]:
    """Up to ``count`` uint8 images spread over the test split, topped up from val and train."""
    splits = _splits(run)
    batches, names, have = [], [], 0
    for name in ("test", "val", "train"):
        images = getattr(splits, name)
        if images is None or len(images) == 0 or have >= count:
            continue
        raw = _decoded(images, count - have, pre).images
        if len(raw):
            batches.append(raw if raw.shape[1] == 3 else raw.expand(-1, 3, -1, -1))
            names.append(name)
            have += len(raw)
    return (torch.cat(batches) if batches else torch.zeros(0)), names


def sample_inputs(run: dict, pre: Preprocess, count: int = 8) -> tuple[torch.Tensor, str]:
    """Preprocessed images for a parity check: real ones from the run's data when it is reachable."""
    try:
        raw, names = real_images(run, pre, count)
        if len(raw) >= 2:
            return prepare(raw, pre), f"{len(raw)} images of {run['config']['data']} ({'+'.join(names)})"
    except (UserError, KeyError, OSError, ValueError):
        pass  # the data moved or is gone: the check still runs, on random inputs
    generator = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (count, 3, pre.size, pre.size), dtype=torch.uint8, generator=generator)
    return prepare(raw, pre), f"{count} random inputs (the run's data was not found)"


def run_guard(run: dict, pre: Preprocess, classes: list[str]) -> Guard:
    """The accuracy guard of a run's classifier: its validation split judges, its training split calibrates."""
    def load():
        try:
            return _splits(run)
        except UserError as exc:
            raise UserError(f"reduced precision is checked on the run's validation images, and its data "
                            f"{run['config'].get('data')} cannot be read ({exc}); use --precision fp32") from None

    def images():
        splits = load()
        if splits.val is None or len(splits.val) == 0:
            raise UserError("reduced precision is checked on the validation split, and the run's data has none; "
                            "use --precision fp32")
        val = _decoded(splits.val, IMAGES, pre)
        index = {name: i for i, name in enumerate(classes)}
        mapping = torch.tensor([index.get(c, -1) for c in splits.classes], dtype=torch.long)
        labels = mapping[val.labels]
        keep = labels >= 0
        return prepare(val.images[keep], pre), labels[keep]

    def calibration():
        splits = load()
        if splits.train is None or len(splits.train) == 0:
            raise UserError("--precision int8 calibrates on the run's training images, and its data has none")
        return prepare(_decoded(splits.train, CALIBRATION, pre).images, pre)

    return Guard(images, calibration, "logits", strict=True)


def classifier_engine(tm, pre: Preprocess, run: dict, classes: list[str], settings: Settings,
                      sample: torch.Tensor | None = None, source: str = "") -> Choice:
    """The run's whole classifier (logits out) on the engine ``settings`` ask for."""
    validate(settings.backend, settings.precision, settings.threads)
    if sample is None or len(sample) < 2:
        sample, source = sample_inputs(run, pre, 32)
    code = model_code_sha256(tm.info.name)
    frozen = Frozen(Logits(tm.net).eval(), pre.size, "classifier", {"code": code} if code else {})
    guard = run_guard(run, pre, classes) if settings.precision != "fp32" else None
    return choose(frozen, sample, settings, guard, source)


def engine_settings(backend: str, precision: str, threads: int, cache_dir: str | Path | None = None, **extra) -> Settings:
    """Settings for a command's ``--backend/--precision/--threads``; converted files go to the cache folder."""
    return Settings(backend, precision, threads, root=cache_root(cache_dir), **extra)


__all__ = ["classifier_engine", "engine_settings", "real_images", "run_guard", "sample_inputs"]
