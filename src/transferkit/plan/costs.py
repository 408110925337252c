"""What recipes cost on this machine: throughputs measured now, and the times they predict.

Nothing here is a constant from another machine: the frozen backbone's images/s is timed on the
engine the run will use, the trainable part's images/s is timed on a forward and backward pass at
the cut a recipe trains from, and the fixed costs of a run (starting, loading the model, scoring,
the report) are what this process measured while it ranked.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transferkit.data.transforms import first_prepared
from transferkit.models.outputs import split_outputs

BATCH = 64            # the training batch (--batch-size default)
HEAD_RATE_FLOOR = 20_000.0  # images/s of a head-only epoch on cached features, at the least


def _best_rate(run, n: int, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return n / max(best, 1e-9)


@torch.inference_mode()
def engine_rate(got) -> float:
    """images/s of the frozen backbone on the engine that fills the cache (``got``: DataFeatures),
    timed on a batch of the data's own images after a warm-up (which also makes the engine's choice
    when a reused cache has not needed one yet)."""
    x = first_prepared(next(iter(got.sets.values())), got.pre, 32)
    forward = got.cache.forward
    forward(x)
    return _best_rate(lambda: forward(x), len(x))


def train_rate(tm, cut: int, pre, images, batch: int = BATCH) -> float | None:
    """images/s of one training step (forward, backward) of what trains after ``cut`` frozen stages,
    on the outputs of the frozen front for real images; None where the model cannot be cut there."""
    parts = tm.split(cut)
    if parts is None:
        return None
    front, back = parts
    with torch.inference_mode():
        x = front.eval()(first_prepared(images, pre, min(batch, len(images))))
    x = x.clone().repeat((batch + len(x) - 1) // len(x), *([1] * (x.ndim - 1)))[:batch]
    labels = torch.zeros(batch, dtype=torch.long)
    # A copy, trainable throughout: the timing leaves the model (BatchNorm statistics, frozen
    # flags) as it was, and the copy's tensors are ordinary ones even where an engine made the
    # originals under inference mode.
    back = copy.deepcopy(back).train()
    for p in back.parameters():
        p.data = p.data.clone()
        p.requires_grad_(True)

    def step():
        out, _ = split_outputs(back(x))
        F.cross_entropy(out.float(), labels[:len(out)]).backward()
        for p in back.parameters():
            p.grad = None

    step()  # warm-up: first calls allocate
    return _best_rate(step, batch)


@dataclass
class Fixed:
    """A run's costs that do not scale with epochs: measured while ranking."""

    start: float = 8.0        # seconds to the first image: imports, data, the model (measured: replaced)
    finish: float = 5.0       # calibration, scoring bookkeeping, report, model folder


def head_only_seconds(n_all: int, n_train: int, epochs: int, engine: float, fixed: Fixed) -> float:
    """``train --freeze backbone``: every image through the backbone once, then epochs on the cache."""
    return fixed.start + n_all / engine + epochs * n_train / HEAD_RATE_FLOOR + fixed.finish


def partial_seconds(n_all: int, n_train: int, n_eval: int, epochs: int, front: float, back: float,
                    views: int, fixed: Fixed) -> float:
    """``train --freeze K``: the front once per image (and per extra training view), then ``epochs`` of
    the trainable part on the cache (a backward pass costs about twice the forward: evaluation of the
    val split each epoch and of the test split once is a third of a training pass)."""
    build = (n_all + (views - 1) * n_train) / front
    return fixed.start + build + epochs * (n_train + n_eval / 3) / back + fixed.finish


def predict_rank_seconds(spent: list, candidate) -> float:
    """What ranking ``candidate`` will cost, from what earlier candidates cost: time grows with the
    input's pixels; for a model not measured yet, the dearest model measured so far stands in."""
    same = [(c, s) for c, s in spent if c.model == candidate.model]
    reference, seconds = (same or sorted(spent, key=lambda cs: cs[1] / cs[0].size ** 2))[-1]
    return seconds * (candidate.size / reference.size) ** 2
