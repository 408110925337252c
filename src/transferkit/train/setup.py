"""What ``train`` and ``lr-find`` do before the first step: seeds, the run directory, data,
freezing, a dry forward of a real batch, and the input path (feature cache or full forward)."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from transferkit.core import distributed as dist
from transferkit.core.config import TrainConfig, saved_settings
from transferkit.core.errors import UserError
from transferkit.core.progress import log
from transferkit.data.augment.frofa import parse_feature_augment
from transferkit.data.augment.spec import mirror_warning, parse_augment
from transferkit.data.imagesets import DataCache, decode_splits
from transferkit.data.specs import DataSplits, stratified_split
from transferkit.data.transforms import Preprocess, first_prepared
from transferkit.engine import checkpoint as ckpt
from transferkit.engine.batches import auto_batch_size
from transferkit.engine.optim import amp_dtype, device_precision
from transferkit.models.fewshot import is_fewshot
from transferkit.models.freeze import FreezePlan, apply_freeze, plan_freeze
from transferkit.models.shapecheck import check_shapes
from transferkit.models.transfer import TransferModel
from transferkit.train.exclude import exclude_images
from transferkit.train.paths import TrainPath, choose_path


def on_device(cfg: TrainConfig, device: torch.device) -> tuple[TrainConfig, torch.dtype | None]:
    """``(cfg with --precision as it runs on device, autocast dtype or None)``.

    On a CUDA GPU the precision is fp32 or bf16|fp16 autocast of every forward pass (auto: bf16
    where the GPU has it); on the CPU it is the engine's fp32|bf16|int8 for the frozen part that
    fills the feature cache (auto: fp32), and there is no autocast. The training path is chosen
    with this cfg, so it never sees ``auto``; run.json keeps what was asked for.
    """
    precision = device_precision(device, cfg.precision)
    return replace(cfg, precision=precision), amp_dtype(device, precision)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def shots_per_class(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Sorted indices of ``shots`` images of every class (all of a class that has fewer), chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def limit_training_images(splits: DataSplits, cfg: TrainConfig) -> DataSplits:
    """``--exclude FILE``: the listed images left out of every split (train/exclude.py); then
    ``--train-limit``: a stratified sample of the training split; ``--shots K``: K images per class.
    Both the same for a given seed; validation and test splits stay whole."""
    splits.split("train")  # data with no training split (a test-only parquet set): one clear error
    if cfg.exclude:
        splits = exclude_images(splits, cfg.exclude)
    if cfg.train_limit and cfg.train_limit < len(splits.train):
        keep, _ = stratified_split(splits.train.labels.numpy(), 1 - cfg.train_limit / len(splits.train), cfg.seed)
        splits.train = splits.train.subset(keep)
    if cfg.shots:
        labels = splits.train.labels.numpy()
        short = [splits.classes[c] for c in range(len(splits.classes)) if 0 < (labels == c).sum() < cfg.shots]
        if short:
            log(f"--shots {cfg.shots}: {len(short)} class(es) have fewer training images and keep all of them "
                f"(e.g. {short[0]})")
        splits.train = splits.train.subset(shots_per_class(labels, cfg.shots, cfg.seed))
    return splits


def classes_without_images(splits: DataSplits) -> list[str]:
    """The classes the training split has no image of (after --train-limit/--shots): names a
    ``ClassLabel`` lists but no row uses, a rare class a limit dropped, a class only val/test have."""
    counts = np.bincount(splits.train.labels.numpy(), minlength=len(splits.classes))
    return [name for name, count in zip(splits.classes, counts) if count == 0]


def without_images_note(missing: list[str], head: str) -> str:
    shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    what = (f"--head {head} never predicts them (their logit is set below every other class's)" if is_fewshot(head)
            else "the head can only learn never to predict them")
    return f"note: {len(missing)} class(es) have no training images: {shown}; {what}"


def check_recipe(cfg: TrainConfig) -> None:
    """Settings that only make sense together (and the augmentation grammar, before anything loads)."""
    spec, frofa = parse_augment(cfg.augment), parse_feature_augment(cfg.feature_augment, cfg.seed)
    if cfg.views and not spec.random:
        raise UserError(f"--views {cfg.views} caches augmented views of each image: give a random --augment (light, "
                        f"strong or a list){'; flip is already two fixed views' if spec.mirror_only else ''}")
    changes = [flag for flag, on in (("--augment", spec.random), ("--mixup", cfg.mixup), ("--cutmix", cfg.cutmix),
                                     ("--feature-augment", frofa is not None)) if on]
    if is_fewshot(cfg.head) and changes:
        raise UserError(f"--head {cfg.head} is fitted in one pass over the unaugmented training features: "
                        f"{', '.join(changes)} would change nothing; drop {'it' if len(changes) == 1 else 'them'}")
    if is_fewshot(cfg.head) and cfg.freeze != "backbone":
        raise UserError(f"--head {cfg.head} is fitted from the frozen backbone's features without gradient steps: "
                        f"use it with --freeze backbone (not {cfg.freeze})")
    if cfg.recipe == "lpft" and (cfg.freeze == "backbone" or is_fewshot(cfg.head)):
        raise UserError("--recipe lpft fine-tunes after the linear probe: give --freeze N (the first N stages stay "
                        "frozen) or --freeze none, and a trainable head")


@dataclass
class Prepared:
    """What train and lr-find share once the data and the model are ready."""

    pre: Preprocess
    plan: FreezePlan
    frozen: list            # frozen modules, kept in eval mode while training
    sets: dict              # split name -> decoded image set
    path: TrainPath         # how batches reach the trainable part


def training_path(cfg: TrainConfig, tm: TransferModel, sets: dict, device, autocast, progress,
                  notes: tuple = ()) -> Prepared:
    """Preprocessing, freezing, decoded images, a dry forward of a real batch, and the chosen input
    path (feature cache or full forward), announced in one line. ``notes`` (where each split comes
    from) are logged with the data line, once the model has run a batch."""
    check_recipe(cfg)
    if warning := mirror_warning(cfg.data, parse_augment(cfg.augment)):
        log(warning)
    pre = tm.info.preprocess(cfg.image_size)
    plan = plan_freeze(tm.net, tm.layout, cfg.freeze)
    frozen = apply_freeze(tm.net, tm.layout, plan, require_trainable=not is_fewshot(cfg.head))
    if tm.info.weights == "none" and plan.spec == "backbone":
        # Legitimate (a random-features baseline) but mostly a forgotten --freeze none.
        log("note: --weights none with --freeze backbone trains only the head on random features; "
            "--freeze none trains the whole model")
    tm.net.to(device)
    feeding = []
    sets = decode_splits(sets, pre.size, pre.interpolation, skip_bad=cfg.skip_bad, max_pixels=cfg.max_pixels,
                         progress=progress, consequence=", nothing trained", cache=DataCache.from_settings(cfg.to_json(), device, workers=cfg.decode_workers),
                         tell=feeding.append)
    if len(sets["train"]) == 0:
        raise UserError(f"data '{cfg.data}' has no training images")
    check_shapes(tm.net, first_prepared(sets["train"], pre, 2, device), tm.num_classes)
    for line in [*notes, *feeding]:
        log(line)
    path = choose_path(cfg, tm, plan, sets, pre, device, autocast, progress)
    log(path.message)
    if device.type == "cpu" and cfg.precision != "fp32" and not path.cached:
        log(f"--precision {cfg.precision}: on the CPU it is the precision of the engine that fills the feature cache; "
            "this run trains the full forward pass without one, in fp32")
    return Prepared(pre, plan, frozen, sets, path)


def global_batch(cfg: TrainConfig, path: TrainPath, device, autocast) -> int:
    """--batch-size is the global batch, split between the torchrun processes; 'auto' fills each GPU."""
    n = len(path.sources["train"])
    if cfg.batch_size != "auto" or not any(p.requires_grad for p in path.module.parameters()):
        size = int(cfg.batch_size) if cfg.batch_size != "auto" else min(n, 64)  # few-shot heads: nothing to fit in memory
    else:
        sample = path.to_input(path.sources["train"].batch(torch.arange(1)), None, 0)
        size = auto_batch_size(path.module, tuple(sample.shape[1:]), device, autocast, n)
        if device.type == "cuda":  # what fits the smallest GPU, on every GPU
            size = int(dist.all_reduce([size], "min")[0]) * dist.world()
    if size < dist.world() or n < dist.world():
        raise UserError(f"--batch-size {size} with {n} training images cannot be split between {dist.world()} "
                        f"processes: --batch-size is the global batch; give at least {dist.world()}")
    return size


def run_dir_path(cfg: TrainConfig) -> Path:
    """``--out``, or ``runs/MODEL-TIMESTAMP``."""
    return Path(cfg.out or f"runs/{Path(cfg.model).stem.replace(':', '_').replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}")


def prepare_run_dir(cfg: TrainConfig, run_dir: Path) -> Path:
    if not cfg.resume and ((run_dir / "run.json").exists() or (run_dir / "checkpoints").exists()):
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def restarted_state(cfg: TrainConfig) -> dict | None:
    """The checkpoint to continue after torchrun (--max-restarts) started the workers again.

    A restart runs the same command, without --resume: continue the run when its checkpoint was
    written by this same command (same settings), rather than refuse the run directory.
    """
    run_dir = Path(cfg.out)
    if cfg.resume or not dist.restart_count() or (run_dir / "run.json").exists():
        return None
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        return None
    state = ckpt.load_checkpoint(run_dir)
    # The first restart saved its config with resume=True; a later restart still continues it.
    same = {**saved_settings(state["config"]), "resume": False} == {**cfg.to_json(), "resume": False}
    return state if same else None
