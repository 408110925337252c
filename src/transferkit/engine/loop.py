"""The epoch loop, written to read like the recipe: batches in, loss down, metrics out.

It knows nothing about files: the trainer hands it a module, a batch source (images or cached
features) and a function that turns a raw batch into the module's input on the device
(``to_input(raw, state, b)``; training batches add the images' indices, which seed their
augmentation: ``state`` is None outside training, where nothing is augmented), and optionally ``mix``, which turns a training batch and its labels into a mixed
batch and label probabilities (MixUp, CutMix). The loss takes either kind of target; ``train
acc`` compares each prediction with the label an image mostly is (for a mixed pair, the one with
the larger share).
Data order comes from a generator seeded by (seed, epoch), so a resumed epoch replays the
same batches without having saved any sampler state.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from transferkit.core.distributed import gather_rows
from transferkit.engine.batches import Batches
from transferkit.models.outputs import split_outputs

AUX_LOSS_WEIGHT = 0.4  # torchvision's reference weight for Inception/GoogLeNet auxiliary heads


class NonFiniteLoss(Exception):
    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"loss became {value} at epoch {epoch + 1}, step {step}; lower --lr, "
                         "check the data for broken values, or use --precision fp32")
        self.epoch, self.step = epoch, step


@dataclass
class StepState:
    """Where training stands; saved in checkpoints."""

    epoch: int = 0
    batch: int = 0          # batches of this epoch already done
    global_step: int = 0    # optimizer steps so far
    sums: dict = field(default_factory=lambda: {"loss": 0.0, "correct": 0, "n": 0})


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``--class-weights balanced``: n / (classes x count) per class (scikit-learn's "balanced"), so that
    every class weighs as much in the loss as if the data were balanced; the mean weight per image is 1."""
    counts = torch.bincount(labels.long(), minlength=num_classes).double()
    present = int((counts > 0).sum())
    return torch.where(counts > 0, len(labels) / (present * counts.clamp(min=1)), torch.zeros_like(counts)).float()


def classification_loss(logits, y, label_smoothing: float, class_weights: torch.Tensor | None = None):
    """Cross-entropy against class indices or (mixed) class probabilities, label smoothing applied on
    top of either (torch mixes the target with the uniform distribution). With class weights, each
    image's loss times its class's weight (for probabilities, their weighted sum), averaged over the
    images (not over the weights, as torch's weighted mean does): the same number whether a batch is
    split into micro-batches or between processes, so weighted runs keep the exact-resume and DDP rules."""
    if class_weights is None:
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    per_image = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing, reduction="none")
    weights = y.float() @ class_weights if y.is_floating_point() else class_weights[y]
    return (per_image * weights).mean()


def dominant(y: torch.Tensor) -> torch.Tensor:
    """The label each target mostly is: itself, or the larger share of a mixed pair."""
    return y.argmax(1) if y.is_floating_point() else y


def train_one_epoch(module, batches: Batches, to_input: Callable, optimizer, scheduler, state: StepState, *,
                    set_train: Callable, label_smoothing: float = 0.0, accumulate: int = 1,
                    autocast=nullcontext, scaler=None, on_step: Callable | None = None, progress=None,
                    sync: Callable | None = None, class_weights: torch.Tensor | None = None,
                    mix: Callable | None = None) -> dict:
    """One pass over ``batches`` from ``state.batch`` on. ``sync`` turns this process's
    ``[loss sum, correct, images]`` of a step into every process's total (DDP), so the sums in
    ``state`` and the numbers returned are the whole batch's on every process. ``mix(x, y, epoch,
    b)`` mixes each whole batch before it is split into micro-batches (the same maths whatever
    ``accumulate`` is)."""
    set_train()
    start_time, start_n = time.perf_counter(), state.sums["n"]
    bar = progress(total=len(batches), initial=state.batch, desc=f"epoch {state.epoch + 1}", unit="batch") if progress else None
    for b, index, raw, target in batches(state.epoch, start=state.batch):
        optimizer.zero_grad(set_to_none=True)
        x_all, y_all = to_input(raw, state, b, index), target.to(next(module.parameters()).device, non_blocking=True)
        if mix is not None:
            x_all, y_all = mix(x_all, y_all, state.epoch, b)
        # DDP averages gradients over processes: weighting this process's mean loss by
        # images * world / global batch makes that average the single-process batch mean.
        global_n = batches.size(b)
        chunks = [(x, y) for x, y in zip(x_all.tensor_split(accumulate), y_all.tensor_split(accumulate)) if len(y)]
        device_loss, correct = None, 0
        for i, (x, y) in enumerate(chunks):
            # DDP all-reduces gradients at every backward; the last micro-batch's is enough.
            defer = module.no_sync() if hasattr(module, "no_sync") and i < len(chunks) - 1 else nullcontext()
            with defer:
                with autocast():
                    logits, aux = split_outputs(module(x))
                    loss = classification_loss(logits, y, label_smoothing, class_weights)
                    for extra in aux:
                        loss = loss + AUX_LOSS_WEIGHT * classification_loss(extra, y, label_smoothing, class_weights)
                weighted = loss * (len(y) * batches.world / global_n)
                (scaler.scale(weighted) if scaler else weighted).backward()
            device_loss = loss.detach() * len(y) if device_loss is None else device_loss + loss.detach() * len(y)
            correct += int((logits.argmax(1) == dominant(y)).sum())
        local = [float(device_loss) if device_loss is not None else 0.0, correct, len(y_all)]
        loss_sum, correct, batch_n = sync(local) if sync else local
        value = loss_sum / max(1, batch_n)
        if not math.isfinite(value):
            raise NonFiniteLoss(state.epoch, state.global_step + 1, value)
        state.sums["loss"] += loss_sum
        state.sums["correct"] += int(correct)
        state.sums["n"] += int(batch_n)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        state.batch, state.global_step = b + 1, state.global_step + 1
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{state.sums['loss'] / state.sums['n']:.4f}",
                            acc=f"{state.sums['correct'] / state.sums['n']:.3f}",
                            img_s=f"{(state.sums['n'] - start_n) / max(time.perf_counter() - start_time, 1e-9):.0f}")
        if on_step:
            on_step(state)
    if bar:
        bar.close()
    seconds = time.perf_counter() - start_time
    n = max(1, state.sums["n"])
    return {"train_loss": state.sums["loss"] / n, "train_acc": state.sums["correct"] / n,
            "seconds": seconds, "images_per_s": (state.sums["n"] - start_n) / max(seconds, 1e-9)}


@torch.inference_mode()
def predict_logits(module, batches: Batches, to_input: Callable, autocast=nullcontext, progress=None, desc="eval",
                   capture: torch.nn.Module | None = None):
    """All logits and labels of a batch source, in order, on the CPU. With sharded ``batches``
    (DDP) each process scores its share and every process gets the whole split back.

    ``capture``: a submodule of ``module`` (the classifier) whose input is returned instead of the
    logits: the features a head sees, for heads fitted in one pass (few-shot, the linear probe).
    """
    module.eval()
    outs, labels, rows, seen = [], [], [], []
    hook = capture.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) if capture is not None else None
    bar = progress(total=len(batches), desc=desc, unit="batch") if progress else None
    for b, index, raw, target in batches(0):
        if len(index):  # a process's share of a small last batch can be empty
            with autocast():
                logits, _ = split_outputs(module(to_input(raw, None, b)))
            if hook is not None:
                logits = seen.pop()
            outs.append(logits.float().cpu())
            labels.append(target)
            rows.append(index)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    if hook is not None:
        hook.remove()
    if batches.world > 1:
        n, index = len(batches.source.labels), torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        return (gather_rows(torch.cat(outs) if outs else torch.zeros(0), index, n),
                gather_rows(torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long), index, n))
    if not outs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(labels)
