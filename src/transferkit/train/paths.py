"""Choose how to feed the trainable part: from the feature cache, or images through the whole model.

The cache is used whenever it gives the same training as the plain loop: the first stages are
frozen as a whole (so their output is a fixed function of the image), no random augmentation
touches their input, and the architecture can be cut there. ``train`` prints the decision.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from transferkit.core import distributed as dist
from transferkit.core.cachedir import cache_root
from transferkit.core.devices import uses_convolutions
from transferkit.core.progress import log
from transferkit.data.transforms import Mirrored, Preprocess, first_prepared, flip_mask, prepare, random_flip
from transferkit.engine.feature_cache import FeaturePairs, build_features, cache_key
from transferkit.models.cut import front_sha256, split_is_exact
from transferkit.models.plugins import model_code_sha256
from transferkit.runtimes.choose import SAMPLE, Frozen, Lazy, Settings, choose, stays_in_torch, validate
from transferkit.runtimes.engines import all_cores
from transferkit.runtimes.guard import guard_from_sets


@dataclass
class TrainPath:
    module: torch.nn.Module           # what the optimizer trains (shares parameters with the net)
    sources: dict                     # split name -> image set or FeatureSet
    to_input: Callable                # (raw batch, step state or None, batch index) -> device tensor
    cached: bool
    message: str


def _trainable_names(tm, cut: int) -> str:
    stages = tm.layout.stages[cut:]
    names = [s[0] for s in stages[:3]] + (["..."] if len(stages) > 3 else [])
    return ", ".join(names + [tm.layout.classifier])


def images_path(tm, sets: dict, pre: Preprocess, device, channels_last: bool, augment: str, seed: int, why: str) -> TrainPath:
    def to_input(raw, state, b):
        if augment == "flip" and state is not None:
            raw = random_flip(raw, flip_mask(len(raw), seed, state.epoch, b))
        return prepare(raw, pre, device, channels_last)
    return TrainPath(tm.net, sets, to_input, False, f"feature cache: off ({why}); training the full forward pass")


def front_engine(cfg, front, sets: dict, pre: Preprocess, device, root: Path, code: str | None):
    """``(forward, precision)``: what computes the cached features. On the CPU an engine of
    ``runtimes`` (chosen on first use, so a cache that is reused converts nothing); on a GPU, or
    under torchrun's several CPU processes with ``--backend auto``, the front itself in torch."""
    validate(cfg.backend, cfg.precision, cfg.threads)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # --threads is torch's too, training included
    if stays_in_torch(device, cfg.backend, cfg.precision):
        return front, "fp32"
    threads = cfg.threads or (all_cores() // dist.world() if dist.world() > 1 else 0)
    settings = Settings(cfg.backend, cfg.precision, max(threads, 0), "batch", root,
                        sum(len(s) for s in sets.values()))
    sample = first_prepared(sets["train"], pre, SAMPLE)
    frozen = Frozen(front.eval(), pre.size, "frozen front", {"code": code} if code else {})
    if cfg.precision == "fp32":
        return Lazy(lambda: choose(frozen, sample, settings), log), "fp32"
    # Reduced precision is decided now: the cache's key says which precision filled it.
    guard = guard_from_sets(sets.get("val"), sets["train"], pre, kind="features", strict=False)
    choice = choose(frozen, sample, settings, guard)
    log(choice.message)
    return choice.engine, choice.engine.precision


def choose_path(cfg, tm, plan, sets: dict, pre: Preprocess, device, autocast, progress) -> TrainPath:
    channels_last = uses_convolutions(tm.net)
    plain = lambda why: images_path(tm, sets, pre, device, channels_last, cfg.augment, cfg.seed, why)  # noqa: E731
    if not cfg.cache:
        return plain("--no-cache")
    if plan.cut is None:
        return plain(f"--freeze {cfg.freeze} freezes no whole leading stages")
    if cfg.augment not in ("none", "flip"):
        return plain(f"--augment {cfg.augment} changes the frozen part's input every epoch")
    parts = tm.split(plan.cut)
    if parts is None:
        return plain(f"{cfg.model} cannot be cut after stage {plan.cut}; it caches only with --freeze backbone")
    front, back = (p.to(device) for p in parts)
    if tm.info.source in ("user", "registered", "hub"):
        sample = first_prepared(sets["train"], pre, 2, device)
        if not split_is_exact(tm.net, front, back, sample):
            return plain(f"{cfg.model} does more after its last nn.Linear ({tm.layout.classifier}) than "
                         "return its output, so it cannot be cut there")
    root = cache_root(cfg.cache_dir)
    # The key names what the front computes: its own tensors (not the weights the run claims to
    # have loaded: a cache filled by other weights would silently train on wrong features), its
    # module paths and functional steps in order, and settings such as Inception's transform_input.
    key_parts = {"backbone": tm.info.name, "front_sha256": front_sha256(tm.net, front, tm.layout.heads),
                 "arch": tm.info.arch, "cut": plan.cut, "pre": pre.key(), "front": front.tokens}
    if code := model_code_sha256(tm.info.name):  # a user's edited model file is another model
        key_parts["code"] = code
    forward, precision = front_engine(cfg, front, sets, pre, device, root, key_parts.get("code"))
    if precision != "fp32":  # reduced-precision features are other features: never mixed with exact ones
        key_parts["precision"] = precision
    if forward is front and channels_last:
        front = forward = front.to(memory_format=torch.channels_last)
    entries = []  # every FeatureSet made, for the counts in the log line
    # Eager PyTorch on the CPU: batches of 256 at 224 px move hundreds of MB per layer, and
    # their speed swings with the process's memory state (EfficientNet-Lite0's front: 83 img/s
    # in a fresh process, 27-35 after other engines ran in it); batches of 32 stay near 70 in
    # both. onnxruntime and OpenVINO run 256 about 6% faster than 32. On a GPU, large batches.
    in_torch = forward is front or cfg.backend == "torch"
    batch_size = 512 if device.type != "cpu" else 32 if in_torch else 256

    def cached(imageset):
        key = cache_key(dict(key_parts, data=imageset.fingerprint()))
        # An engine takes plain float32 batches on the CPU and runs its own precision: no autocast.
        entries.append(build_features(forward, imageset, pre, root, key, device, channels_last and forward is front,
                                      batch_size=batch_size, progress=progress,
                                      autocast=autocast if forward is front else None))
        return entries[-1]

    # --augment flip: a random flip is a choice between two fixed images, so the cache holds the
    # training images' features and their mirror images' features, and each step picks per row
    # exactly what the plain loop would have mirrored (flip_mask): the same training, cached.
    features = {name: cached(imageset) for name, imageset in sets.items()}
    if cfg.augment == "flip":
        features["train"] = FeaturePairs(features["train"], cached(Mirrored(sets["train"])))
    size = sum(f.nbytes for f in features.values())
    shape = "x".join(str(d) for d in features["train"].shape[1:])
    built = sum(len(f) for f in entries if f.built)
    reused = sum(len(f) for f in entries) - built
    what = " + ".join(part for part in (f"built {built:,}" if built else "", f"reused {reused:,}" if reused else "") if part)
    frozen_part = "backbone" if plan.cut >= len(tm.layout.stages) else f"first {plan.cut} stages"
    computed = f", computed in {precision}" if precision != "fp32" else ""
    augment = "random flips from mirrored copies" if cfg.augment == "flip" else "no augmentation"
    message = (f"feature cache: on ({frozen_part} frozen, {augment}): {what} images"
               f" x {shape} fp16{computed} ({size / 1e6:.0f} MB) in {root / 'features'}; training {_trainable_names(tm, plan.cut)} from it")

    pairs = len(features["train"].shape) + 1  # a batch of FeaturePairs has one more axis

    def to_input(raw, state, b):
        if raw.ndim == pairs:  # training: the mirrored features where the plain loop mirrors; else the plain ones
            pick = flip_mask(len(raw), cfg.seed, state.epoch, b) if state is not None else torch.zeros(len(raw), dtype=torch.bool)
            raw = raw[torch.arange(len(raw)), pick.long()]
        x = raw.to(device, non_blocking=True).float()
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x
    return TrainPath(back, features, to_input, True, message)
