"""``transferkit eval``: score a finished run on a split of its data (or of other data)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from transferkit.core import distributed as dist
from transferkit.core.devices import uses_convolutions
from transferkit.core.errors import UserError
from transferkit.core.progress import log
from transferkit.core.safeio import atomic_write, write_json_atomic
from transferkit.data.images import DEFAULT_MAX_PIXELS
from transferkit.data.imagesets import DataCache, decode_splits
from transferkit.data.specs import load_data
from transferkit.data.transforms import Preprocess, first_prepared, prepare
from transferkit.data.tta import parse_tta, tta_views
from transferkit.engine.batches import Batches
from transferkit.engine.loop import predict_logits
from transferkit.engine.optim import device_precision
from transferkit.runs.calibration import (
    FOLDS,
    average_probabilities,
    cross_fitted_log_probabilities,
    log_probabilities,
    run_temperature,
)
from transferkit.runs.history import append_eval_row
from transferkit.runs.inference import classifier_engine, engine_settings
from transferkit.runs.metrics import score_log_probs
from transferkit.runs.rundir import load_run
from transferkit.runtimes.choose import SAMPLE, engine_device, in_torch, stays_in_torch


def class_index_map(data_classes: list[str], run_classes: list[str]) -> torch.Tensor:
    """Data label -> run label, by class name: the run's mapping wins even if folders changed."""
    unknown = [c for c in data_classes if c not in run_classes]
    if unknown:
        raise UserError(f"the data has {len(data_classes)} classes, the run {len(run_classes)}; "
                        f"classes unknown to the run: {', '.join(unknown[:5])}")
    return torch.tensor([run_classes.index(c) for c in data_classes], dtype=torch.long)


def outputs_path(run_dir: str | Path, split: str) -> Path:
    return Path(run_dir) / "eval" / f"{split}_outputs.npz"


def save_outputs(run_dir: str | Path, split: str, probs: torch.Tensor, labels: torch.Tensor, original, scored,
                 data: str, uncalibrated: torch.Tensor | None = None, held_out: torch.Tensor | None = None) -> Path:
    """Per-image probabilities of a scored split (calibrated, and before the temperature when given),
    for the report's worst errors and both reliability plots; ``held_out``: cross-fitted calibrated
    probabilities, when the split is the one the temperature was fitted on (the report judges those).

    ``index`` is each row's position in ``load_data(data).split(split)`` (``original``): images
    dropped by --skip-bad shift positions, so file sets are matched back by path.
    """
    index = np.arange(len(labels), dtype=np.int64)
    kept, everything = getattr(scored, "paths", None), getattr(original, "paths", None)
    if kept and everything and len(kept) != len(everything):
        position = {p: i for i, p in enumerate(everything)}
        index = np.array([position[p] for p in kept], dtype=np.int64)
    arrays = {"probs": probs.float().numpy().astype(np.float16), "labels": labels.numpy().astype(np.int64),
              "index": index, "split": np.array(split), "data": np.array(data)}
    if uncalibrated is not None:
        arrays["probs_uncalibrated"] = uncalibrated.float().numpy().astype(np.float16)
    if held_out is not None:
        arrays["probs_held_out"] = held_out.float().numpy().astype(np.float16)
    path = outputs_path(run_dir, split)

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a bare name
            np.savez_compressed(f, **arrays)
    atomic_write(path, write)
    return path


def evaluate_run(run_dir: str, data: str | None = None, split: str = "test", device: str = "auto",
                 batch_size: int = 128, progress=None, max_pixels: int | None = None, splits=None,
                 skip_bad: bool = False, tta: str | None = None, cache_dir: str | None = None,
                 backend: str = "auto", precision: str = "fp32", threads: int = 0,
                 allow_outside_paths: bool = False, decode_workers: int = 0) -> dict:
    """Score ``run_dir`` on ``split`` of ``data`` (the run's own data when None); ``splits``: ready
    DataSplits from the Python API instead of a spec. ``allow_outside_paths`` (data/specs.py): for other
    data; the run's own data is read as the run was. Probabilities go through the run's temperature;
    ``tta`` (flip, crops, flip,crops) averages them over views. Under torchrun each process scores a
    share of the split, all get the whole result, and rank 0 writes the files. ``backend``,
    ``precision``, ``threads``: the CPU engine (runtimes/choose.py), or on a GPU fp32|bf16|fp16 in
    torch; ``decode_workers``: processes decoding files into the decoded-image cache (0: the default)."""
    kinds = parse_tta(tta)  # a mistake in --tta stops before anything loads
    device = engine_device(device, backend, precision)  # CPU engines run on the CPU
    with dist.scope():
        return _evaluate_run(run_dir, data, split, device, batch_size, progress, max_pixels, splits, skip_bad, kinds,
                             cache_dir, engine_settings(backend, precision, threads, cache_dir), allow_outside_paths,
                             decode_workers)


@dataclass
class ScoredSplit:
    """A run and the decoded split it is scored on (shared by eval and eval --corrupt)."""
    tm: object
    pre: Preprocess
    classes: list
    run: dict
    spec: str
    split: str           # "val" when the data has no test split
    original: object     # the split as the data spec lists it (before --skip-bad)
    images: object       # decoded at the run's size
    mapping: torch.Tensor
    device: torch.device


def scored_split(run_dir, data, split, device, progress=None, max_pixels=None, splits=None, skip_bad=False,
                 cache_dir=None, allow_outside_paths: bool = False, decode_workers: int = 0) -> ScoredSplit:
    tm, pre, classes, run = load_run(run_dir)
    spec = splits.spec if splits is not None else data or run["config"]["data"]
    allow = allow_outside_paths or (spec == run["config"]["data"] and run["config"].get("allow_outside_paths", False))
    splits = splits if splits is not None else load_data(spec, run["config"].get("seed", 0), allow)
    mapping = class_index_map(splits.classes, classes)
    imageset = original = splits.split(split)
    if split == "test" and splits.test is None:
        split = "val"  # data without a test split is scored on val: name it so everywhere
    dev = dist.setup(device)  # before decoding: under torchrun the processes decode their shares together
    imageset = decode_splits({split: imageset}, pre.size, pre.interpolation, skip_bad=skip_bad, progress=progress,
                             max_pixels=max_pixels or run["config"].get("max_pixels", DEFAULT_MAX_PIXELS),
                             cache=DataCache.from_settings(run["config"], dev, cache_dir, decode_workers))[split]
    return ScoredSplit(tm, pre, classes, run, spec, split, original, imageset, mapping, dev)


def _evaluate_run(run_dir, data, split, device, batch_size, progress, max_pixels, splits, skip_bad, kinds, cache_dir,
                  settings, allow_outside_paths, decode_workers) -> dict:
    s = scored_split(run_dir, data, split, device, progress, max_pixels, splits, skip_bad, cache_dir, allow_outside_paths,
                     decode_workers)
    tm, pre, classes, run, spec, split, original = s.tm, s.pre, s.classes, s.run, s.spec, s.split, s.original
    imageset, mapping, dev = s.images, s.mapping, s.device
    settings = replace(settings, precision=device_precision(dev, settings.precision))
    net, channels_last = on_engine(tm, pre, run, classes, imageset, dev, settings)
    temperature, views = run_temperature(run), tta_views(kinds)
    batches = Batches(imageset, batch_size, rank=dist.rank(), world=dist.world())
    per_view = []
    for i, view in enumerate(views):
        logits, labels = predict_logits(net, batches, lambda raw, _s, _b, view=view: prepare(view(raw), pre, dev, channels_last),
                                        progress=progress, desc=f"eval {split}" + (f" view {i + 1}/{len(views)}" if kinds else ""))
        per_view.append(logits)
    target = mapping[labels]
    # The split the temperature was fitted on (the run's own data): its calibration is scored cross-fitted.
    fitted_here = (run.get("calibration") or {}).get("split") == split and spec == run["config"]["data"]
    held_out = cross_fitted_log_probabilities(per_view, target) if fitted_here else None
    calibrated = log_probabilities(per_view, temperature)  # what predict says: it ranks the classes (top-1)
    result = score_log_probs(held_out if held_out is not None else calibrated, log_probabilities(per_view), target,
                             classes, temperature, ranking=per_view[0] if len(per_view) == 1 else calibrated)
    result.update({"split": split, "data": spec, "run": str(run_dir), "tta": list(kinds),
                   "calibration_scored": "cross-fitted" if fitted_here else "held out",
                   # each view alone (the first: the plain images), from the same pass: what TTA adds
                   "top1_per_view": [float((v.argmax(1) == target).float().mean()) for v in per_view]})
    if not dist.is_main():
        return result
    probs, uncalibrated = average_probabilities(per_view, temperature), average_probabilities(per_view)
    save_outputs(run_dir, split, probs, target, original, imageset, spec, uncalibrated=uncalibrated,
                 held_out=held_out.exp() if held_out is not None else None)
    write_json_atomic(Path(run_dir) / "eval" / f"{split}.json", result)
    append_eval_row(Path(run_dir), split, result)
    return result


def on_engine(tm, pre, run: dict, classes: list[str], imageset, dev, settings):
    """``(network, channels_last)`` that scores the images: a CPU engine for one CPU process, else torch."""
    if not stays_in_torch(dev, settings.backend, settings.precision):
        sample = first_prepared(imageset, pre, SAMPLE)
        settings = replace(settings, images=len(imageset))
        choice = classifier_engine(tm, pre, run, classes, settings, sample, f"{len(sample)} images being scored")
        log(choice.message)
        return choice.engine, False
    net = tm.net.to(dev)
    channels_last = uses_convolutions(net)
    return in_torch(net.to(memory_format=torch.channels_last) if channels_last else net, settings.precision), channels_last


def format_table(result: dict) -> str:
    views = f"  tta {','.join(result['tta'])}" if result.get("tta") else ""
    lines = [f"{result['split']}: top1 {result['top1']:.4f}  top5 {result['top5']:.4f}  "
             f"balanced acc {result['balanced_accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
             f"loss {result['loss']:.4f}  n {result['n']}{views}",
             f"calibration: temperature {result['temperature']:.3f}, ECE {result['ece']:.4f} "
             f"(uncalibrated {result['ece_uncalibrated']:.4f})" + (
                 f"; the temperature was fitted on {result['split']}: ECE and nll cross-fitted ({FOLDS} folds)"
                 if result.get("calibration_scored") == "cross-fitted" else ""),
             "", f"{'class':<24}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, s in result["per_class"].items():
        lines.append(f"{name[:23]:<24}{s['precision']:>10.4f}{s['recall']:>10.4f}{s['f1']:>10.4f}{s['support']:>10}")
    return "\n".join(lines)
