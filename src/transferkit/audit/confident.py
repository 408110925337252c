"""Confident learning (Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in
Dataset Labels", JAIR 2021), written from the paper's definitions.

With out-of-sample probabilities ``p[x, j]`` and given labels ``y[x]``:

- per-class thresholds ``t[j]``: the mean self-confidence ``p[x, j]`` of the images labelled ``j``;
- the confident joint ``C[i, j]``: images labelled ``i`` whose ``p[x, j] >= t[j]`` (when several
  classes pass, the one of them with the largest ``p``); images where none passes are not counted;
- calibrated to the label counts (each row of ``C`` rescaled to its class's size) and normalised,
  it estimates the joint ``Q[i, j]`` of given label ``i`` and true label ``j``; its off-diagonal
  mass estimates the data set's label-error rate;
- prune by class: for each class ``i``, its ``n * sum_{j != i} Q[i, j]`` images of lowest
  self-confidence ``p[x, i]`` are label issues;
- prune by noise rate: for each ``i != j``, the ``n * Q[i, j]`` images labelled ``i`` with the
  largest margin ``p[x, j] - p[x, i]`` are label issues;
- the images counted off the diagonal of ``C`` are another estimate; ``both`` keeps the images
  that prune by class and prune by noise rate both name (the paper's C+NR);
- ``margin_count`` (the default): the ``n x`` (estimated error rate) images of lowest normalized
  margin, whatever their class: the joint says how many labels are wrong, the margin which.

Issues are ranked by normalized margin ``p[x, y] - max_{j != y} p[x, j]`` (most negative first), or
by self-confidence ``p[x, y]``; each comes with the label it most likely has (``argmax_{j != y}``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("confident_joint", "prune_by_class", "prune_by_noise_rate", "both", "margin_count")
# Chosen on 5% flipped labels (uniform and confusable) of fashion-mnist 10k, animal-shapes and
# mnist-5k with flip seeds 2 and 3, then checked on seed 4 and the first table's seed 1
# (benchmarks/RESULTS.md, "Label errors"): its F1 was the highest mean of the filters on every
# seed, and at least cleanlab's find_label_issues (same probabilities) in 19 of 24 cases; the
# paper's C+NR (``both``), the default before, in 15.
METHOD = "margin_count"


@dataclass
class LabelIssues:
    rows: np.ndarray          # flagged images, most likely wrong first
    suggested: np.ndarray     # (N,) the most likely other label of every image
    score: np.ndarray         # (N,) how sure the audit is that the label is wrong, 0..1
    margin: np.ndarray        # (N,) normalized margin: p[given] - max other p (negative: another class wins)
    thresholds: np.ndarray    # (classes,) t[j]
    joint: np.ndarray         # (classes, classes) calibrated joint Q[given, true]
    error_rate: float         # estimated share of wrong labels: the off-diagonal mass of Q


def thresholds(probs: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """``t[j]``: mean ``p[x, j]`` over the images labelled ``j`` (1 for an empty class: nothing passes)."""
    sums = np.zeros(classes)
    np.add.at(sums, labels, probs[np.arange(len(labels)), labels])
    counts = np.bincount(labels, minlength=classes)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)


def confident_classes(probs: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For every image, the class it is confidently counted in (``-1``: no class reaches its threshold)."""
    above = probs >= t[None, :] - 1e-6
    masked = np.where(above, probs, -np.inf)
    best = masked.argmax(1)
    return np.where(above.any(1), best, -1)


def confident_joint(labels: np.ndarray, counted: np.ndarray, classes: int) -> np.ndarray:
    joint = np.zeros((classes, classes), dtype=np.int64)
    ok = counted >= 0
    np.add.at(joint, (labels[ok], counted[ok]), 1)
    return joint


def calibrated_joint(joint: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """``Q``: each row of ``C`` rescaled to its class's image count, then divided by the total."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    rows = joint.sum(1, keepdims=True).astype(np.float64)
    scaled = np.where(rows > 0, joint / np.maximum(rows, 1) * counts[:, None], 0.0)
    # A class with nothing counted keeps its images on the diagonal: no evidence of errors there.
    empty = rows[:, 0] == 0
    scaled[empty, empty] = counts[empty]
    total = scaled.sum()
    return scaled / total if total else scaled


def _prune_by_noise_rate(probs, labels, q, classes) -> np.ndarray:
    n = len(labels)
    flagged = np.zeros(n, dtype=bool)
    for i in range(classes):
        mine = np.flatnonzero(labels == i)
        for j in range(classes):
            take = int(round(n * q[i, j])) if i != j else 0
            if take <= 0 or not len(mine):
                continue
            margin = probs[mine, j] - probs[mine, i]
            flagged[mine[np.argsort(-margin, kind="stable")[:take]]] = True
    return flagged


def _prune_by_class(probs, labels, q, classes) -> np.ndarray:
    n = len(labels)
    flagged = np.zeros(n, dtype=bool)
    for i in range(classes):
        mine = np.flatnonzero(labels == i)
        take = int(round(n * (q[i].sum() - q[i, i])))
        if take > 0 and len(mine):
            flagged[mine[np.argsort(probs[mine, i], kind="stable")[:take]]] = True
    return flagged


def find_label_issues(probs: np.ndarray, labels: np.ndarray, method: str = METHOD,
                      rank: str = "normalized_margin") -> LabelIssues:
    """Confident learning on out-of-sample ``probs`` (N, classes) for the given ``labels`` (N,);
    flagged rows ranked by ``rank``: normalized_margin | self_confidence (lowest first)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, classes = probs.shape
    rows = np.arange(n)
    t = thresholds(probs, labels, classes)
    counted = confident_classes(probs, t)
    joint = calibrated_joint(confident_joint(labels, counted, classes), labels, classes)
    off_diagonal = (counted >= 0) & (counted != labels)
    others = probs.copy()
    others[rows, labels] = -np.inf
    suggested = others.argmax(1)
    margin = probs[rows, labels] - others[rows, suggested]
    error_rate = float(joint.sum() - np.trace(joint))
    if method == "confident_joint":
        flagged = off_diagonal
    elif method == "prune_by_class":
        flagged = _prune_by_class(probs, labels, joint, classes)
    elif method == "margin_count":
        flagged = np.zeros(n, dtype=bool)
        flagged[np.argsort(margin, kind="stable")[:int(round(n * error_rate))]] = True
    else:
        flagged = _prune_by_noise_rate(probs, labels, joint, classes)
        if method == "both":
            flagged &= _prune_by_class(probs, labels, joint, classes)
    order = np.flatnonzero(flagged)
    key = margin if rank == "normalized_margin" else probs[rows, labels]
    order = order[np.argsort(key[order], kind="stable")]
    score = np.clip((1 - margin) / 2, 0, 1)  # margin -1 (certainly another class) .. 1 (certainly its own)
    return LabelIssues(order, suggested, score, margin, t, joint, error_rate)
