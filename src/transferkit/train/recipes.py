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

PROBE_ITERATIONS = 200  # L-BFGS iterations of the linear probe: a convex fit converges in far fewer
PROBE_L2 = 1e-4         # the probe's L2 penalty on the head's weights (the paper tunes it; this is mild)


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
    (eval mode: no dropout), with the run's label smoothing and a mild L2 penalty. Every process
    fits the same head on the same gathered features, deterministically."""
    started = time.perf_counter()
    features, labels, head = head_features(s, eval_batch)
    params = [p for p in head.parameters() if p.requires_grad]
    penalised = [p for p in params if p.ndim > 1]
    was_training = head.training
    head.eval()
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=PROBE_ITERATIONS, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)
    steps = []

    def closure():
        optimizer.zero_grad()
        loss = classification_loss(head(features), labels, s.cfg.label_smoothing)
        loss = loss + 0.5 * PROBE_L2 * sum(p.pow(2).sum() for p in penalised)
        loss.backward()
        steps.append(float(loss.detach()))
        return loss

    optimizer.step(closure)
    head.train(was_training)
    dist.broadcast_module(head)  # identical already; rank 0's copy settles any rounding difference
    val_features, val_labels, _ = head_features(s, eval_batch, "val")
    with torch.no_grad():
        train_acc = float((head(features).argmax(1) == labels).double().mean())
        val_acc = float((head(val_features).argmax(1) == val_labels).double().mean())
    result = {"train_acc": round(train_acc, 6), "val_acc": round(val_acc, 6), "loss": round(steps[-1], 6),
              "evaluations": len(steps), "seconds": round(time.perf_counter() - started, 2)}
    log(f"--recipe lpft: linear probe on {len(labels):,} training images: val acc {val_acc:.4f}, train acc "
        f"{train_acc:.4f} ({len(steps)} L-BFGS evaluations, {result['seconds']:.1f} s); fine-tuning from it")
    return result
