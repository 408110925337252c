"""Choose how to feed the trainable part: from the feature cache, or images through the whole model,
and how training batches are augmented and mixed on either path.

The cache is used whenever the first stages are frozen as a whole (so their output is a fixed
function of the image) and the architecture can be cut there. Augmentation reaches it as a few
fixed versions of every training image, each cached once (engine/feature_cache.FeatureViews):

- ``--augment flip``: each image and its mirror image; a step takes, per image, the one the plain
  loop would have mirrored (``flip_mask``): the same training as the plain loop, cached.
- a random augmentation (``light``, ``strong``, a list): ``--views V`` augmented views of each
  image (data/augment/views.Augmented), one drawn per image each epoch. The plain loop with
  ``--views V`` draws the very same views, so the two train alike; the plain loop without it
  draws a new augmentation every epoch. ``--views`` left at 0 means ``DEFAULT_VIEWS`` on the
  cache and fresh draws on the plain loop: the one place to change that default.

Validation and test batches are never augmented (``to_input`` gets no training state for them).
``train`` prints the decision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from transferkit.core.devices import uses_convolutions
from transferkit.core.errors import UserError
from transferkit.data.augment.frofa import parse_feature_augment
from transferkit.data.augment.mixing import Mixing
from transferkit.data.augment.pipeline import Augmentation, fresh_seeds, view_picks, view_seeds
from transferkit.data.augment.spec import AugmentSpec, parse_augment
from transferkit.data.augment.views import Augmented
from transferkit.data.transforms import Mirrored, Preprocess, first_prepared, flip_mask, prepare, random_flip
from transferkit.engine.feature_cache import FeatureViews
from transferkit.train.features import front_cache

# --views 0 (the default) with a frozen, cached front and a random augmentation: this many views.
# 0 here would send such runs to the plain loop instead (fresh draws, no cache).
DEFAULT_VIEWS = 4


@dataclass
class TrainPath:
    module: torch.nn.Module           # what the optimizer trains (shares parameters with the net)
    sources: dict                     # split name -> image set or FeatureSet (FeatureViews for training)
    to_input: Callable                # (raw batch, step state or None, batch number[, image indices]) -> device tensor
    cached: bool
    message: str
    mix: Callable | None = None       # (x, y, epoch, batch) -> (mixed x, label probabilities): --mixup, --cutmix


@dataclass(frozen=True)
class Augmenting:
    """How the plain loop's training batches are augmented: the spec, its pipeline at the input size,
    ``views`` (0: a new draw every epoch; V: one of V fixed views per image) and the run's seed."""

    spec: AugmentSpec
    augmentation: Augmentation | None
    views: int
    seed: int

    def images(self, raw: torch.Tensor, index: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
        if self.spec.mirror_only:
            return random_flip(raw, flip_mask(len(raw), self.seed, epoch, b))
        if not self.spec.random:
            return raw
        if self.views:
            return self.augmentation(raw, view_seeds(self.seed, view_picks(self.seed, epoch, b, index, self.views), index))
        return self.augmentation(raw, fresh_seeds(self.seed, epoch, b, index))

    def describe(self) -> str:
        if self.spec.mirror_only:
            return "random flips"
        draws = f"one of {self.views} fixed views per image each epoch" if self.views else "a new draw per image every epoch"
        return f"{self.spec.canonical} ({draws})"


def augmenting(cfg, pre: Preprocess, cached: bool) -> Augmenting:
    spec = parse_augment(cfg.augment)
    views = (cfg.views or (DEFAULT_VIEWS if cached else 0)) if spec.random else 0
    augmentation = Augmentation(spec, pre.size, pre.interpolation, pre.mean) if spec.random else None
    return Augmenting(spec, augmentation, views, cfg.seed)


def mixing(cfg, tm, feature_shape: tuple | None) -> Mixing | None:
    """--mixup / --cutmix; ``feature_shape``: a cached row's shape (None: images in the plain loop)."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    if cfg.cutmix and feature_shape is not None and (len(feature_shape) != 3 or feature_shape[1] * feature_shape[2] < 2):
        raise UserError(f"--cutmix cuts boxes out of images or feature maps, and the feature cache holds "
                        f"{'x'.join(map(str, feature_shape))} vectors: use --mixup (it mixes the cached features), "
                        "a --freeze that caches feature maps, or --no-cache")
    return Mixing(cfg.mixup, cfg.cutmix, tm.num_classes, cfg.seed)


def _trainable_names(tm, cut: int) -> str:
    stages = tm.layout.stages[cut:]
    names = [s[0] for s in stages[:3]] + (["..."] if len(stages) > 3 else [])
    return ", ".join(names + [tm.layout.classifier])


def _extras(aug: Augmenting, mix: Mixing | None, cached: bool, frofa=None) -> str:
    """The augmentation line of the log, or '' when nothing is augmented."""
    parts = [f"{aug.describe()}"] if aug.spec.items else []
    if mix:
        parts.append(f"{mix.describe()} on the cached features (feature-space mixing, not of images)" if cached
                     else f"{mix.describe()} of images")
    if frofa:
        parts.append(f"feature augmentation {frofa.describe()}")
    honest = "; train acc counts a mixed image right when it predicts the label with the larger share" if mix else ""
    return f"augment: {'; '.join(parts)}{honest}" if parts else ""


def images_path(tm, sets: dict, pre: Preprocess, device, channels_last: bool, cfg, why: str) -> TrainPath:
    if parse_feature_augment(cfg.feature_augment, cfg.seed):
        raise UserError(f"--feature-augment needs the feature cache: it perturbs cached features, and this run uses "
                        f"none ({why}); drop it, or freeze leading stages so that the cache is used")
    aug, mix = augmenting(cfg, pre, cached=False), mixing(cfg, tm, None)

    def to_input(raw, state, b, index=None):
        if state is not None:
            raw = aug.images(raw, index, state.epoch, b)
        return prepare(raw, pre, device, channels_last)
    extras = _extras(aug, mix, False)
    message = f"feature cache: off ({why}); training the full forward pass" + (f"\n{extras}" if extras else "")
    return TrainPath(tm.net, sets, to_input, False, message, mix)


def choose_path(cfg, tm, plan, sets: dict, pre: Preprocess, device, autocast, progress) -> TrainPath:
    channels_last = uses_convolutions(tm.net)
    plain = lambda why: images_path(tm, sets, pre, device, channels_last, cfg, why)  # noqa: E731
    if not cfg.feature_cache:
        return plain("--no-feature-cache")
    if plan.cut is None:
        return plain(f"--freeze {cfg.freeze} freezes no whole leading stages")
    aug = augmenting(cfg, pre, cached=True)
    if aug.spec.random and not aug.views:
        return plain(f"--augment {aug.spec.canonical} draws new pixels every epoch; --views V caches V views of each image")
    cache = front_cache(cfg, tm, plan.cut, sets, pre, device, autocast, progress)
    if isinstance(cache, str):
        return plain(cache)
    train = sets["train"]
    if cfg.cutmix:  # refused on pooled vectors before any view is built: one row's shape says
        with torch.inference_mode():
            mixing(cfg, tm, tuple(cache.front.eval()(first_prepared(train, pre, 1, device)).shape[1:]))
    features = {name: cache.features(imageset) for name, imageset in sets.items()
                if name != "train" or not aug.spec.random or cfg.recipe == "lpft"}  # LP-FT's probe: unaugmented
    if aug.spec.mirror_only:
        features["train"] = FeatureViews([features["train"], cache.features(Mirrored(train))],
                                         lambda index, epoch, b: flip_mask(len(index), cfg.seed, epoch, b).long(),
                                         ("", "mirrored"), plain=features["train"])
    elif aug.spec.random:
        views = [cache.features(Augmented(train, aug.augmentation, v, cfg.seed)) for v in range(aug.views)]
        features["train"] = FeatureViews(views, lambda index, epoch, b: view_picks(cfg.seed, epoch, b, index, len(views)),
                                         tuple(f"view{v}" for v in range(len(views))), plain=features.get("train"))
    row_shape = tuple(features["train"].shape[1:])
    partial = plan.cut < len(tm.layout.stages)  # stages train on the cached features: auto turns brightness on
    mix, frofa = mixing(cfg, tm, row_shape), parse_feature_augment(cfg.feature_augment, cfg.seed, partial)
    size = sum(f.nbytes for f in features.values())
    frozen_part = f"first {plan.cut} stages" if partial else "backbone"
    augment = ("random flips from mirrored copies" if aug.spec.mirror_only else
               f"{aug.views} augmented views per training image" if aug.spec.random else "no augmentation")
    message = (f"feature cache: on ({frozen_part} frozen, {augment}): {cache.counts()} images"
               f" x {'x'.join(map(str, row_shape))} fp16{cache.computed} ({size / 1e6:.0f} MB) in {cache.root / 'features'}; "
               f"training {_trainable_names(tm, plan.cut)} from it")
    if extras := _extras(aug, mix, True, frofa):
        message += f"\n{extras}"
    channels_last = cache.channels_last

    def to_input(raw, state, b, index=None):
        x = raw.to(device, non_blocking=True).float()
        if frofa is not None and state is not None:
            x = frofa(x, state.epoch, b)
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x
    return TrainPath(cache.back, features, to_input, True, message, mix)
