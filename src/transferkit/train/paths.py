"""Choose how to feed the trainable part: from the feature cache, or images through the whole model.

The cache is used whenever it gives the same training as the plain loop: the first stages are
frozen as a whole (so their output is a fixed function of the image), no random augmentation
touches their input, and the architecture can be cut there. ``train`` prints the decision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from transferkit.core.devices import uses_convolutions
from transferkit.data.transforms import Mirrored, Preprocess, flip_mask, prepare, random_flip
from transferkit.engine.feature_cache import FeaturePairs
from transferkit.train.features import front_cache


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


def choose_path(cfg, tm, plan, sets: dict, pre: Preprocess, device, autocast, progress) -> TrainPath:
    channels_last = uses_convolutions(tm.net)
    plain = lambda why: images_path(tm, sets, pre, device, channels_last, cfg.augment, cfg.seed, why)  # noqa: E731
    if not cfg.feature_cache:
        return plain("--no-feature-cache")
    if plan.cut is None:
        return plain(f"--freeze {cfg.freeze} freezes no whole leading stages")
    if cfg.augment not in ("none", "flip"):
        return plain(f"--augment {cfg.augment} changes the frozen part's input every epoch")
    cache = front_cache(cfg, tm, plan.cut, sets, pre, device, autocast, progress)
    if isinstance(cache, str):
        return plain(cache)
    # --augment flip: a random flip is a choice between two fixed images, so the cache holds the
    # training images' features and their mirror images' features, and each step picks per row
    # exactly what the plain loop would have mirrored (flip_mask): the same training, cached.
    features = {name: cache.features(imageset) for name, imageset in sets.items()}
    if cfg.augment == "flip":
        features["train"] = FeaturePairs(features["train"], cache.features(Mirrored(sets["train"])))
    size = sum(f.nbytes for f in features.values())
    shape = "x".join(str(d) for d in features["train"].shape[1:])
    frozen_part = "backbone" if plan.cut >= len(tm.layout.stages) else f"first {plan.cut} stages"
    augment = "random flips from mirrored copies" if cfg.augment == "flip" else "no augmentation"
    message = (f"feature cache: on ({frozen_part} frozen, {augment}): {cache.counts()} images"
               f" x {shape} fp16{cache.computed} ({size / 1e6:.0f} MB) in {cache.root / 'features'}; "
               f"training {_trainable_names(tm, plan.cut)} from it")

    pairs = len(features["train"].shape) + 1  # a batch of FeaturePairs has one more axis
    channels_last = cache.channels_last

    def to_input(raw, state, b):
        if raw.ndim == pairs:  # training: the mirrored features where the plain loop mirrors; else the plain ones
            pick = flip_mask(len(raw), cfg.seed, state.epoch, b) if state is not None else torch.zeros(len(raw), dtype=torch.bool)
            raw = raw[torch.arange(len(raw)), pick.long()]
        x = raw.to(device, non_blocking=True).float()
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x
    return TrainPath(cache.back, features, to_input, True, message)
