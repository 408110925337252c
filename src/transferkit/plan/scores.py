"""How well a frozen backbone's features serve a data set, measured without training it.

Two kinds of evidence, both on the same features:

- **Cross-validated accuracy of the one-pass heads** transferkit can train from them: logistic
  regression (the linear head, its L2 penalty chosen by cross-validation), k-NN (``--head knn:K``)
  and the nearest class mean (``--head prototype``), each applied exactly as the run would (CL2N
  features for the two few-shot heads). Simple k-NN accuracy on frozen features is reported to
  predict transfer at least as well as the dedicated metrics (Sorkhei et al., TMLR 2025).
- **LogME** (You, Liu, Wang & Long, ICML 2021): the log marginal evidence of a Bayesian linear
  model of the one-hot labels on the features, maximised over its two precisions by the paper's
  fixed-point iteration; no fitting, no folds, a few milliseconds after one SVD.

scikit-learn makes the folds; the logistic regression is fitted in torch (L-BFGS), LogME is written
here from the paper's equations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

KNN_KS = (1, 5, 10, 20)
LINEAR_CS = (0.01, 0.1, 1.0)   # inverse L2 penalty of the logistic regression, on standardised features
FOLDS = 5


def logme(features: np.ndarray, labels: np.ndarray, iterations: int = 200) -> float:
    """Mean over classes of the per-sample log evidence (higher: features transfer better)."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    # The SVD F = U S V^T through the smaller Gram matrix (an eigendecomposition of min(n, d)^2
    # numbers, several times quicker than the SVD itself); directions with no variance are dropped.
    if n >= d:
        sigma, v = np.linalg.eigh(f.T @ f)
        keep = sigma > sigma.max() * 1e-10
        sigma, v = sigma[keep], v[:, keep]
        u = (f @ v) / np.sqrt(sigma)
    else:
        sigma, u = np.linalg.eigh(f @ f.T)
        keep = sigma > sigma.max() * 1e-10
        sigma, u = sigma[keep], u[:, keep]
    evidences = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        z = u.T @ y                                         # y in the basis of F's left singular vectors
        outside = max(float(y @ y - z @ z), 0.0)            # the part of y no linear map of F reaches
        alpha, beta = 1.0, 1.0
        for _ in range(iterations):
            t = alpha / beta
            gamma = float((sigma / (sigma + t)).sum())
            m2 = float((sigma * z ** 2 / (sigma + t) ** 2).sum())               # m^T m
            res2 = float(((t / (sigma + t)) ** 2 * z ** 2).sum()) + outside     # ||F m - y||^2
            alpha = gamma / max(m2, 1e-12)
            beta = (n - gamma) / max(res2, 1e-12)
            if abs(alpha / beta - t) / max(t, 1e-12) < 1e-6:  # the paper stops at 11 iterations; some sets need more
                break
        t = alpha / beta
        m2 = float((sigma * z ** 2 / (sigma + t) ** 2).sum())
        res2 = float(((t / (sigma + t)) ** 2 * z ** 2).sum()) + outside
        log_det = float(np.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * math.log(alpha)
        evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - alpha / 2 * m2 - beta / 2 * res2
                    - log_det / 2 - n / 2 * math.log(2 * math.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def cl2n(x: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Centre on the training mean, then L2-normalise (models/fewshot.py does the same in the run)."""
    z = x - center
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


@dataclass
class HeadScores:
    """Accuracy of each head on held-out images, and the settings that reached it."""

    linear: float
    knn: float
    prototype: float
    knn_k: int
    linear_c: float
    n: int                                  # held-out predictions behind each number

    def best(self) -> tuple[str, float]:
        """``(head spec, accuracy)`` of the best head, as ``--head`` spells it."""
        options = {"linear": self.linear, f"knn:{self.knn_k}": self.knn, "prototype": self.prototype}
        head = max(options, key=lambda h: (options[h], h == "linear"))  # ties: the linear head
        return head, options[head]


def _knn_correct(train_z, train_y, test_z, test_y, ks, classes) -> dict:
    """Correct predictions of the weighted k-NN vote (models/fewshot.KNNHead) for every k in ``ks``."""
    sim = test_z @ train_z.T
    order = np.argsort(-sim, axis=1)[:, :max(ks)]
    top = np.take_along_axis(sim, order, 1)
    weights = np.exp((top - 1) / 0.1)
    votes = np.eye(classes)[train_y[order]] * weights[..., None]
    return {k: int((votes[:, :k].sum(1).argmax(1) == test_y).sum()) for k in ks}


def _prototype_correct(train_z, train_y, test_z, test_y, classes) -> int:
    centroids = np.stack([train_z[train_y == c].mean(0) if (train_y == c).any() else np.full(train_z.shape[1], np.nan)
                          for c in range(classes)])
    distance = ((test_z[:, None, :] - centroids[None]) ** 2).sum(-1)
    distance[:, np.isnan(centroids).any(1)] = np.inf       # a class with no training image is never predicted
    return int((distance.argmin(1) == test_y).sum())


def _linear_correct(train_x, train_y, test_x, test_y, cs) -> dict:
    """Correct predictions of multinomial logistic regression for every inverse penalty in ``cs``.

    Softmax regression on standardised features with an L2 penalty ``||W||^2 / (2 C n)`` (the
    penalty of scikit-learn's LogisticRegression, per sample), fitted by full-batch L-BFGS in torch:
    a few milliseconds per fit where scikit-learn's solver took seconds on 1,280 features. From
    the strongest penalty to the weakest, each fit starts where the last ended.
    """
    x = torch.from_numpy(np.asarray(train_x, np.float32))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    a, b = (x - mean) / std, (torch.from_numpy(np.asarray(test_x, np.float32)) - mean) / std
    y = torch.from_numpy(np.asarray(train_y, np.int64))
    classes = int(max(train_y.max(initial=0), test_y.max(initial=0))) + 1
    weight = torch.zeros(a.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    out = {}
    for c in sorted(cs):
        opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=60, tolerance_grad=1e-5, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(a @ weight + bias, y) + weight.pow(2).sum() / (2 * c * len(y))
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            out[c] = int(((b @ weight + bias).argmax(1).numpy() == test_y).sum())
    return out


def _splits(labels: np.ndarray, holdout: tuple | None, seed: int):
    """(train rows, test rows) pairs: the given holdout, or stratified folds."""
    if holdout is not None:
        return [holdout]
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    folds = int(min(FOLDS, counts[counts > 0].min())) if len(counts) else 0
    if folds < 2:
        from sklearn.model_selection import KFold
        return list(KFold(min(FOLDS, len(labels)), shuffle=True, random_state=seed).split(labels))
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))


def head_scores(features: np.ndarray, labels: np.ndarray, classes: int, seed: int = 0,
                holdout: tuple | None = None) -> HeadScores:
    """Accuracy of the three heads, cross-validated (stratified folds), or on ``holdout`` = (train rows,
    test rows) when the data brings a validation split. Each head's setting (k, C) is the one with
    the best pooled held-out accuracy: the same choice the user would make from these numbers.
    """
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    knn, proto, lin, n = {k: 0 for k in KNN_KS}, 0, {c: 0 for c in LINEAR_CS}, 0
    for train_rows, test_rows in _splits(y, holdout, seed):
        center = x[train_rows].mean(0)
        tz, sz = cl2n(x[train_rows], center), cl2n(x[test_rows], center)
        ks = [k for k in KNN_KS if k <= len(train_rows)] or [1]
        for k, right in _knn_correct(tz, y[train_rows], sz, y[test_rows], ks, classes).items():
            knn[k] += right
        proto += _prototype_correct(tz, y[train_rows], sz, y[test_rows], classes)
        if len(np.unique(y[train_rows])) > 1:
            for c, right in _linear_correct(x[train_rows], y[train_rows], x[test_rows], y[test_rows], LINEAR_CS).items():
                lin[c] += right
        n += len(test_rows)
    best_k = max(knn, key=lambda k: (knn[k], -k))
    best_c = max(lin, key=lambda c: (lin[c], -abs(math.log10(c))))
    return HeadScores(lin[best_c] / n, knn[best_k] / n, proto / n, best_k, best_c, n)


def scored_on(x, y, tx, ty, classes: int, k: int, c: float) -> dict:
    """Accuracy on ``(tx, ty)`` of each head fitted on all of ``(x, y)`` with settings ``k`` and ``c``."""
    x, tx, y, ty = np.asarray(x, np.float32), np.asarray(tx, np.float32), np.asarray(y), np.asarray(ty)
    center = x.mean(0)
    tz, sz = cl2n(x, center), cl2n(tx, center)
    n = max(len(ty), 1)
    return {"linear": _linear_correct(x, y, tx, ty, (c,))[c] / n,
            f"knn:{k}": _knn_correct(tz, y, sz, ty, [min(k, len(y))], classes)[min(k, len(y))] / n,
            "prototype": _prototype_correct(tz, y, sz, ty, classes) / n}
