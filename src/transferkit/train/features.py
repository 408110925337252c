"""The frozen front's outputs, computed once per image and cached: for training (paths.py), and
for the commands that score features without training (rank, audit).

A cache entry is reused only for the very bytes it holds, so its key names everything that makes
them (``engine/feature_cache.py`` hashes the key):

- the front: its own tensors (not the weights the run claims to have loaded), module paths and
  functional steps, the cut, settings such as Inception's ``transform_input``, a user's code;
- the input: the preprocessing and the images' pixels (never their labels: a relabelled image
  has the same features), including any view of them (mirrored, augmented);
- the numerics: what computed the numbers (below).

**Numerics.** Every fp32 engine (torch on the CPU, onnxruntime, OpenVINO) is held to 1e-4 of
torch on the user's own images before it runs (``runtimes/choose.py``), ten times finer than the
fp16 rounding of the stored rows, so they fill one entry: ``--backend auto`` may time another
engine fastest next time and still reuses it, converting nothing. Anything else computes other
numbers and gets its own key: bf16 and int8 engines (by engine, precision and, for a quantized
network, the hash of the quantized file, which also names the images it was calibrated on), and
torch on a GPU (autocast dtype; TF32 convolutions).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from transferkit.core import distributed as dist
from transferkit.core.cachedir import cache_root
from transferkit.core.devices import uses_convolutions
from transferkit.core.errors import UserError
from transferkit.core.progress import log
from transferkit.data.imagesets import DataCache, decode_splits
from transferkit.data.specs import DataSplits
from transferkit.data.transforms import Mirrored, Preprocess, first_prepared
from transferkit.engine.feature_cache import FeatureSet, build_features, cache_key
from transferkit.engine.optim import amp_dtype, autocast_for, device_precision
from transferkit.models.cut import front_sha256, split_is_exact
from transferkit.models.freeze import apply_freeze, plan_freeze
from transferkit.models.plugins import model_code_sha256
from transferkit.models.transfer import TransferModel, create_model
from transferkit.runtimes.choose import SAMPLE, Frozen, Lazy, Settings, choose, stays_in_torch, validate
from transferkit.runtimes.engines import all_cores
from transferkit.runtimes.guard import guard_from_sets

EXACT = {"numerics": "fp32"}  # what every engine held to torch's fp32 within 1e-4 computes


def file_sha256(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def engine_numerics(engine) -> dict:
    """The key part for a reduced-precision engine: which engine, which precision, which file."""
    numerics = {"numerics": engine.precision, "engine": engine.name}
    if getattr(engine, "files", None):
        numerics["file_sha256"] = file_sha256(engine.files)
    return numerics


def torch_numerics(device: torch.device, autocast) -> dict:
    """The key part for the front run in torch itself (a GPU, or torchrun's CPU processes)."""
    numerics = dict(EXACT)
    if device.type != "cpu":  # cuDNN's TF32 convolutions (on by default) round inputs to 10 bits
        numerics.update(device=device.type,
                        tf32=bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32))
    if autocast is not None:
        with autocast():
            if torch.is_autocast_enabled(device.type):
                numerics["numerics"] = str(torch.get_autocast_dtype(device.type)).replace("torch.", "autocast-")
    return numerics


@dataclass
class FrontCache:
    """A frozen front and the engine that fills its cache entries: ``features(images)`` per image set."""

    front: torch.nn.Module
    back: torch.nn.Module           # what trains on the cached outputs
    forward: Callable               # the engine (or the front itself) that computes a batch
    pre: Preprocess
    key_parts: dict                 # the front and its numerics; each set adds its pixels
    root: Path
    device: torch.device
    channels_last: bool             # the front runs in torch on channels-last batches
    batch_size: int
    autocast: Callable | None
    progress: Callable | None
    numerics: dict
    entries: list = field(default_factory=list)  # every FeatureSet made, for the counts in the log line

    def features(self, images) -> FeatureSet:
        key = cache_key(dict(self.key_parts, data=images.fingerprint(labels=False)))
        in_torch = self.forward is self.front
        self.entries.append(build_features(self.forward, images, self.pre, self.root, key, self.device,
                                           self.channels_last and in_torch, batch_size=self.batch_size,
                                           progress=self.progress, autocast=self.autocast if in_torch else None))
        return self.entries[-1]

    def counts(self) -> str:
        built = sum(len(f) for f in self.entries if f.built)
        reused = sum(len(f) for f in self.entries) - built
        return " + ".join(p for p in (f"built {built:,}" if built else "", f"reused {reused:,}" if reused else "") if p)

    @property
    def computed(self) -> str:
        """How the numbers were computed, for the log line: empty for exact fp32."""
        n = self.numerics
        return "" if n == EXACT else f", computed in {n['numerics']}" + (f" ({n['engine']})" if "engine" in n else "")


def _first(sets: dict):
    """The images that check, time and calibrate engines: the training split, else the first there is."""
    return sets["train"] if "train" in sets else next(iter(sets.values()))


def _engine(cfg, front, sets: dict, pre: Preprocess, device, root: Path, code: str | None, autocast):
    """``(forward, numerics)``: what computes the cached features. On the CPU an engine of
    ``runtimes`` (fp32: chosen on first use, so a cache that is reused converts nothing); on a GPU,
    or under torchrun's several CPU processes with ``--backend auto``, the front itself in torch."""
    validate(cfg.backend, cfg.precision, cfg.threads)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # --threads is torch's too, training included
    if stays_in_torch(device, cfg.backend, cfg.precision):
        return front, torch_numerics(device, autocast)
    threads = cfg.threads or (all_cores() // dist.world() if dist.world() > 1 else 0)
    settings = Settings(cfg.backend, cfg.precision, max(threads, 0), "batch", root,
                        sum(len(s) for s in sets.values()))
    sample = first_prepared(_first(sets), pre, SAMPLE)
    frozen = Frozen(front.eval(), pre.size, "frozen front", {"code": code} if code else {})
    if cfg.precision == "fp32":
        return Lazy(lambda: choose(frozen, sample, settings), log), dict(EXACT)
    # Reduced precision is decided now: the key names the engine and file that fill the cache.
    guard = guard_from_sets(sets.get("val"), _first(sets), pre, kind="features", strict=False)
    choice = choose(frozen, sample, settings, guard)
    log(choice.message)
    engine = choice.engine
    return engine, (dict(EXACT) if engine.precision == "fp32" else engine_numerics(engine))


def front_cache(cfg, tm, cut: int, sets: dict, pre: Preprocess, device, autocast=None, progress=None) -> FrontCache | str:
    """The cache of ``tm``'s first ``cut`` stages (frozen, in eval mode), or why it cannot be cut there.

    ``cfg`` gives the engine settings (``backend``, ``precision``, ``threads``) and ``cache_dir``;
    ``sets`` (decoded image sets by split) give the images that check and time the engines.
    """
    parts = tm.split(cut)
    if parts is None:
        return f"{cfg.model} cannot be cut after stage {cut}; it caches only with --freeze backbone"
    front, back = (p.to(device) for p in parts)
    if tm.info.source in ("user", "registered", "hub"):
        sample = first_prepared(_first(sets), pre, 2, device)
        if not split_is_exact(tm.net, front, back, sample):
            return (f"{cfg.model} does more after its last nn.Linear ({tm.layout.classifier}) than "
                    "return its output, so it cannot be cut there")
    root = cache_root(cfg.cache_dir)
    key_parts = {"backbone": tm.info.name, "front_sha256": front_sha256(tm.net, front, tm.layout.heads),
                 "arch": tm.info.arch, "cut": cut, "pre": pre.key(), "front": front.tokens}
    if code := model_code_sha256(tm.info.name):  # a user's edited model file is another model
        key_parts["code"] = code
    channels_last = uses_convolutions(tm.net)
    forward, numerics = _engine(cfg, front, sets, pre, device, root, key_parts.get("code"), autocast)
    key_parts["numerics"] = numerics
    if forward is front and channels_last:
        front = forward = front.to(memory_format=torch.channels_last)
    # Eager PyTorch on the CPU: batches of 256 at 224 px move hundreds of MB per layer, and
    # their speed swings with the process's memory state (EfficientNet-Lite0's front: 83 img/s
    # in a fresh process, 27-35 after other engines ran in it); batches of 32 stay near 70 in
    # both. onnxruntime and OpenVINO run 256 about 6% faster than 32. On a GPU, large batches.
    in_torch = forward is front or cfg.backend == "torch"
    batch_size = 512 if device.type != "cpu" else 32 if in_torch else 256
    return FrontCache(front, back, forward, pre, key_parts, root, device, channels_last, batch_size, autocast, progress,
                      numerics)


@dataclass
class DataFeatures:
    """A data set through a whole frozen backbone: what rank and audit score, cached as ``train
    --freeze backbone`` caches it (the same keys: the run that follows reuses the entries)."""

    tm: TransferModel
    pre: Preprocess
    sets: dict                      # split -> decoded image set
    features: dict                  # split -> FeatureSet; "SPLIT:mirrored" for the mirror images
    cache: FrontCache
    seconds: float                  # computing (or reusing) them, images decoded before

    def array(self, split: str):
        f = self.features[split]
        return f.features.read_range(0, len(f)).astype("float32"), f.labels.numpy()


def backbone_features(cfg, splits: DataSplits, device: torch.device | None = None, progress=None,
                      mirrored: bool = False, tm: TransferModel | None = None) -> DataFeatures:
    """Pooled features of every split of ``splits`` through ``cfg.model``'s frozen backbone.

    ``cfg`` (a TrainConfig) gives the model, weights, input size, engine, caches and decoding
    rules; ``mirrored`` also caches each split's mirror images (flip-invariant comparisons).
    """
    device = device or torch.device("cpu")
    tm = tm or create_model(cfg.model, len(splits.classes), cfg.weights, "linear")
    pre = tm.info.preprocess(cfg.image_size)
    plan = plan_freeze(tm.net, tm.layout, "backbone")
    apply_freeze(tm.net, tm.layout, plan, require_trainable=False)
    tm.net.to(device).eval()
    sets = {n: s for n in ("train", "val", "test") if (s := getattr(splits, n)) is not None and len(s)}
    if not sets:
        raise UserError(f"data '{cfg.data}' has no images")
    sets = decode_splits(sets, pre.size, pre.interpolation, skip_bad=cfg.skip_bad, max_pixels=cfg.max_pixels,
                         progress=progress, consequence=", nothing scored",
                         cache=DataCache.from_settings(cfg.to_json(), device))
    # --precision as it runs on this device (train/setup.on_device), so the keys are train's own.
    precision = device_precision(device, cfg.precision)
    cfg = replace(cfg, precision=precision)
    cache = front_cache(cfg, tm, plan.cut, sets, pre, device, autocast_for(amp_dtype(device, precision)), progress)
    if isinstance(cache, str):
        raise UserError(cache)
    start = time.perf_counter()
    features = {name: cache.features(images) for name, images in sets.items()}
    if mirrored:
        features.update({f"{name}:mirrored": cache.features(Mirrored(images)) for name, images in sets.items()})
    return DataFeatures(tm, pre, sets, features, cache, time.perf_counter() - start)
