"""The learning-rate range test (Leslie Smith 2015, as popularised by fastai's ``lr_find``).

Train for ~100 steps while the learning rate grows exponentially from 1e-7 to 1; record an
exponentially smoothed, bias-corrected loss; stop once it has clearly diverged. The suggestion
is the steepest descent of the smoothed loss against log(lr), taken before the loss minimum:
the rate at which the model learns fastest while training is still stable. The model,
optimizer and random state are restored afterwards, so the sweep leaves no trace.
"""
from __future__ import annotations

import copy
import json
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from transferkit.core.config import saved_settings
from transferkit.core.devices import pick_device
from transferkit.core.errors import UserError
from transferkit.core.progress import log
from transferkit.core.safeio import atomic_write, write_json_atomic
from transferkit.data.specs import ignored_note, load_data
from transferkit.engine.batches import Batches
from transferkit.engine.loop import StepState, classification_loss
from transferkit.engine.optim import autocast_for, make_optimizer
from transferkit.models.fewshot import is_fewshot
from transferkit.models.freeze import param_groups, train_mode
from transferkit.models.outputs import split_outputs
from transferkit.models.transfer import create_model
from transferkit.runs.plots import lr_find_png
from transferkit.runtimes.choose import engine_device
from transferkit.train.setup import (
    check_recipe,
    global_batch,
    limit_training_images,
    on_device,
    seed_everything,
    training_path,
)

START_LR, END_LR, STEPS = 1e-7, 1.0, 100
SMOOTHING = 0.98     # fastai's beta: heavy smoothing, the raw per-batch loss is noisy
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss is 4x its best


@dataclass
class LRFinding:
    lrs: list
    losses: list      # smoothed, bias-corrected
    raw_losses: list
    suggestion: float
    stopped: str      # why the sweep ended

    def to_json(self) -> dict:
        return asdict(self)


def suggest(lrs: list, losses: list) -> float:
    """Steepest descent of the smoothed loss over log10(lr), before the loss minimum.

    The first tenth of the sweep is skipped: there the loss is flat (lr far too small) and the
    bias-corrected average is still settling, so its slope is noise.
    """
    lrs, losses = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if len(lrs) == 0:
        raise ValueError("no points recorded")
    lowest = int(np.nanargmin(losses))
    skip = min(len(lrs) // 10, max(lowest - 2, 0))
    window = slice(skip, lowest + 1)
    if lowest + 1 - skip < 3:
        # Too short a descent to measure a slope: fall back to fastai's "minimum / 10".
        return float(lrs[lowest] / 10)
    slopes = np.gradient(losses[window], np.log10(lrs[window]))
    return float(lrs[window][int(np.argmin(slopes))])


def range_test(module, batches, to_input, optimizer, *, set_train, start_lr: float = START_LR, end_lr: float = END_LR,
               steps: int = STEPS, label_smoothing: float = 0.0, autocast=nullcontext, progress=None,
               mix=None) -> LRFinding:
    """Sweep ``optimizer``'s learning rate over ``batches`` (cycled as needed), then restore everything.

    Parameter groups keep their ratios: each group's lr is the sweep value times its share of
    the largest group's lr (so unfrozen backbone layers stay at ``--backbone-lr-scale``). The
    batches are augmented and mixed as training's are (``to_input`` gets a training state).
    """
    if not (0 < start_lr < end_lr) or steps < 3:
        raise ValueError("need 0 < start_lr < end_lr and at least 3 steps")
    saved_model = copy.deepcopy(module.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_rng = torch.get_rng_state()
    saved_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    top = max(g["lr"] for g in optimizer.param_groups) or 1.0
    shares = [g["lr"] / top for g in optimizer.param_groups]
    device = next(p for p in module.parameters() if p.requires_grad).device
    lrs, smoothed, raw, average, best = [], [], [], 0.0, math.inf
    stopped = f"reached lr {end_lr:g}"
    bar = progress(total=steps, desc="lr-find", unit="step") if progress else None
    try:
        set_train()
        step, epoch = 0, 0
        while step < steps:
            for b, index, x_raw, target in batches(epoch):
                lr = start_lr * (end_lr / start_lr) ** (step / (steps - 1))
                for group, share in zip(optimizer.param_groups, shares):
                    group["lr"] = lr * share
                optimizer.zero_grad(set_to_none=True)
                x, y = to_input(x_raw, StepState(epoch=epoch), b, index), target.to(device)
                if mix is not None:
                    x, y = mix(x, y, epoch, b)
                with autocast():
                    logits, aux = split_outputs(module(x))
                    loss = classification_loss(logits, y, label_smoothing)
                value = float(loss.detach())
                if not math.isfinite(value):
                    stopped = f"loss became {value} at lr {lr:.2e}"
                    break
                loss.backward()
                optimizer.step()
                average = SMOOTHING * average + (1 - SMOOTHING) * value
                current = average / (1 - SMOOTHING ** (step + 1))
                lrs.append(lr)
                raw.append(value)
                smoothed.append(current)
                best = min(best, current)
                step += 1
                if bar:
                    bar.update(1)
                if step > 1 and current > DIVERGE_FACTOR * best:
                    stopped = f"loss diverged at lr {lr:.2e} (smoothed loss {current:.3g} > {DIVERGE_FACTOR:g} x best {best:.3g})"
                    break
                if step >= steps:
                    break
            else:
                epoch += 1
                continue
            break
    finally:
        if bar:
            bar.close()
        module.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        torch.set_rng_state(saved_rng)
        if saved_cuda is not None:
            torch.cuda.set_rng_state_all(saved_cuda)
    if not lrs:
        raise ValueError(stopped)
    return LRFinding(lrs, smoothed, raw, suggest(lrs, smoothed), stopped)


def sweep_training_path(cfg, tm, path, batches, frozen, autocast, progress, **sweep) -> LRFinding:
    """The range test on exactly what ``train`` optimises (cached features when it uses them)."""
    # A throwaway optimizer at lr 1: only the group ratios matter, and the real one stays untouched.
    optimizer = make_optimizer(cfg.optimizer, param_groups(tm.net, tm.layout, 1.0, cfg.weight_decay, cfg.backbone_scale), 1.0)
    return range_test(path.module, batches, path.to_input, optimizer, set_train=lambda: train_mode(path.module, frozen),
                      label_smoothing=cfg.label_smoothing, autocast=autocast, progress=progress, mix=path.mix, **sweep)


def _sweep_key(cfg) -> dict:
    skip = {"out", "resume", "quiet", "epochs", "checkpoint_every", "log", "warmup_epochs", "device", "decode_workers"}
    return {k: v for k, v in cfg.to_json().items() if k not in skip}


def auto_lr(cfg, tm, path, batches, frozen, autocast, progress, run_dir: Path) -> float:
    """``train --lr auto``: run the range test (or reuse this run's, on --resume) and record it in the run dir."""
    record = Path(run_dir) / "lr_find.json"
    if record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        # A resumed run must keep the lr it started with (a run from before a setting's rename too).
        if saved_settings(saved.get("key") or {}) == _sweep_key(cfg):
            log(f"lr-find: reusing lr {saved['suggestion']:.3g} from {record}")
            return float(saved["suggestion"])
    finding = sweep_training_path(cfg, tm, path, batches, frozen, autocast, progress)
    png = lr_find_png(finding)
    atomic_write(Path(run_dir) / "lr_find.png", lambda tmp: Path(tmp).write_bytes(png))
    write_json_atomic(record, {"key": _sweep_key(cfg), **finding.to_json()})
    log(f"lr-find: lr {finding.suggestion:.3g} (steepest descent of the smoothed loss; {finding.stopped}); "
        f"plot in {Path(run_dir) / 'lr_find.png'}")
    return finding.suggestion


def find_lr(cfg, progress=None, **sweep) -> LRFinding:
    """``transferkit lr-find``: build data, model and training path the way ``train`` does, then sweep."""
    if is_fewshot(cfg.head):
        raise UserError(f"--head {cfg.head} is fitted without gradient steps: it has no learning rate to find")
    check_recipe(cfg)
    seed_everything(cfg.seed)
    device = pick_device(engine_device(cfg.device, cfg.backend, cfg.precision))  # CPU engines run on the CPU
    on_it, precision = on_device(cfg, device)
    autocast = autocast_for(precision)
    splits = limit_training_images(load_data(cfg.data, cfg.seed, cfg.allow_outside_paths), cfg)  # the same images train would see
    if note := ignored_note(splits):
        log(note)
    tm = create_model(cfg.model, len(splits.classes), cfg.weights, cfg.head)
    # the sweep only ever sees training images
    prepared = training_path(on_it, tm, {"train": splits.train}, device, autocast, progress)
    path = prepared.path
    batches = Batches(path.sources["train"], global_batch(cfg, path, device, autocast), shuffle=True, seed=cfg.seed)
    return sweep_training_path(cfg, tm, path, batches, prepared.frozen, autocast, progress, **sweep)
