"""Heads fitted in one go on the features the classifier sees, before (or instead of) the epochs.

- ``--head prototype | knn:K`` (few-shot): the head is fitted from the training images' features in
  one pass, with no gradient steps; that pass is the run's one "epoch".
- ``--recipe lpft`` (Kumar, Raghunathan, Jones, Ma & Liang 2022, "Fine-Tuning can Distort Pretrained
  Features"): first a linear probe, the head alone trained to convergence on the frozen features,
  then the usual epochs fine-tune what ``--freeze`` leaves trainable, starting from that head
  instead of a random one (a random head sends large gradients into the pretrained layers early).

Both read the features through a hook on the classifier's input while the trainable part runs
in eval mode over its usual input (the feature cache when the run uses one): the probe of LP-FT
runs the not-yet-trained stages once over the cache instead of building a second cache.
"""
from __future__ import annotations

import time

import torch

from transferkit.core import distributed as dist
from transferkit.core.progress import log
from transferkit.engine.batches import Batches
from transferkit.engine.loop import classification_loss, predict_logits
from transferkit.models.layout import get_module

PROBE_ITERATIONS = 100  # L-BFGS iterations per penalty (each fit starts where the stronger one ended)
# The probe's L2 penalties on the head's weights, strongest first; validation accuracy picks one, as the
# paper tunes it. Measured on Fashion-MNIST features (10,000 images): 1e-4 fits the training images
# to 98% and validation to 83.9%, 1e-2 gives 94.6% / 86.0%: a weak penalty over-fits, and a
# fine-tuning phase that starts from an over-fitted head has little left to learn.
PROBE_L2 = (1e-1, 1e-2, 1e-3)


def head_features(s, eval_batch: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    """The classifier's inputs over ``split`` (every process gets all of them), and the classifier."""
    path = s.prepared.path
    head = get_module(s.tm.net, s.tm.layout.classifier)
    batches = Batches(path.sources[split], eval_batch, rank=dist.rank(), world=dist.world())
    features, labels = predict_logits(path.module, batches, path.to_input, s.autocast, capture=head)
    # Outside inference mode: the fit below may need autograd, and buffers must be ordinary tensors.
    return features.clone().to(s.device), labels.clone().to(s.device), head


def fit_fewshot_head(s, eval_batch: int) -> dict:
    """``--head prototype | knn:K``: fit the head on the training features; the epoch's numbers."""
    started = time.perf_counter()
    features, labels, head = head_features(s, eval_batch)
    head.fit(features, labels)
    with torch.no_grad():
        logits = head(features)
    seconds = time.perf_counter() - started
    log(f"--head {s.cfg.head}: fitted on {len(labels):,} training images without gradient steps in {seconds:.1f} s")
    return {"train_loss": float(classification_loss(logits, labels, 0.0)),
            "train_acc": float((logits.argmax(1) == labels).double().mean()),
            "seconds": seconds, "images_per_s": len(labels) / max(seconds, 1e-9)}


def linear_probe(s, eval_batch: int) -> dict:
    """LP-FT's first phase: the head alone, full-batch L-BFGS to convergence on the frozen features
    (eval mode: no dropout), with the run's label smoothing and an L2 penalty chosen on validation.
    Every process fits the same head on the same gathered features, deterministically."""
    started = time.perf_counter()
    features, labels, head = head_features(s, eval_batch)
    val_features, val_labels, _ = head_features(s, eval_batch, "val")
    params = [p for p in head.parameters() if p.requires_grad]
    penalised = [p for p in params if p.ndim > 1]
    was_training = head.training
    head.eval()
    accuracy = lambda x, y: float((head(x).argmax(1) == y).double().mean())  # noqa: E731
    best, evaluations = None, 0
    for l2 in PROBE_L2:
        optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=PROBE_ITERATIONS, history_size=20,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

        def closure():
            nonlocal evaluations
            optimizer.zero_grad()
            loss = classification_loss(head(features), labels, s.cfg.label_smoothing)
            loss = loss + 0.5 * l2 * sum(p.pow(2).sum() for p in penalised)
            loss.backward()
            evaluations += 1
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            val_acc = accuracy(val_features, val_labels)
            if best is None or val_acc > best["val_acc"]:  # ties keep the stronger penalty
                best = {"val_acc": val_acc, "l2": l2, "state": {k: v.clone() for k, v in head.state_dict().items()}}
    head.load_state_dict(best["state"])
    head.train(was_training)
    dist.broadcast_module(head)  # identical already; rank 0's copy settles any rounding difference
    with torch.no_grad():
        train_acc = accuracy(features, labels)
    result = {"train_acc": round(train_acc, 6), "val_acc": round(best["val_acc"], 6), "l2": best["l2"],
              "evaluations": evaluations, "seconds": round(time.perf_counter() - started, 2)}
    log(f"--recipe lpft: linear probe on {len(labels):,} training images: val acc {best['val_acc']:.4f}, train acc "
        f"{train_acc:.4f} (L2 {best['l2']:g} of {', '.join(f'{v:g}' for v in PROBE_L2)}; {evaluations} L-BFGS "
        f"evaluations, {result['seconds']:.1f} s); fine-tuning from it")
    return result
