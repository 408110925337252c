"""Out-of-sample predicted probabilities: what confident learning needs (an image's own label must
not have taught the model that scores it).

- ``out_of_fold``: K-fold logistic regression on the features (scikit-learn): each image is scored
  by the model fitted on the other folds.
- ``knn_votes``: the labels of an image's nearest neighbours (itself excluded), weighted by
  similarity: a second opinion that needs no fitting, from the neighbour pass the audit makes anyway.

The audit ranks by their mean (``combined``): the two err differently (a linear boundary against
local neighbourhoods), and the mean finds more injected errors at the same precision than either
alone (benchmarks/audit.py).
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from transferkit.audit.neighbors import Neighbours

FOLDS = 5
# Inverse L2 strengths tried, on unit-length rows scaled by sqrt(dims) (each dimension of unit mean
# square). Noisy labels want more regularisation than clean ones, so the audit picks the one with the
# lowest held-out log loss of the given labels on a sample: on digits and Fashion-MNIST with 5% of the
# labels flipped that was also the one that found the most flipped labels (benchmarks/audit.py).
CS = (0.01, 0.03, 0.1, 0.3, 1.0)
SAMPLE = 4000  # images the strength is chosen on
KNN_TEMPERATURE = 0.05  # similarity differences of this size change a neighbour's weight e-fold
SMOOTHING = 0.5         # pseudo-votes spread over the classes: a lone neighbour is not certainty


def choose_c(x: np.ndarray, labels: np.ndarray, classes: int, seed: int = 0) -> float:
    """The strength of ``CS`` whose 3-fold probabilities give the given labels the lowest log loss."""
    rows = np.random.default_rng(seed).permutation(len(labels))[:SAMPLE]
    losses = []
    for c in CS:
        probs = out_of_fold(x[rows], labels[rows], classes, folds=3, seed=seed, c=c)
        losses.append(-np.log(probs[np.arange(len(rows)), labels[rows]] + 1e-7).mean())
    return CS[int(np.argmin(losses))]


def out_of_fold(x: np.ndarray, labels: np.ndarray, classes: int, folds: int = FOLDS, seed: int = 0,
                c: float | None = None) -> np.ndarray:
    """``(N, classes)`` probabilities, each row from a model that never saw that row (``c``: the
    strength; None chooses it, ``choose_c``)."""
    if c is None:
        c = choose_c(x, labels, classes, seed)
    n = len(labels)
    probs = np.full((n, classes), 1.0 / classes, dtype=np.float32)
    counts = np.bincount(labels, minlength=classes)
    folds = int(min(folds, max(2, counts[counts > 0].max(initial=0))))
    if n < 2 * folds or (counts > 0).sum() < 2:
        return probs  # nothing to learn from: every class equally likely
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    x = x * np.float32(np.sqrt(x.shape[1]))
    # One BLAS thread: these products are small, and BLAS threads that spin waiting for each
    # other made the fits 30x slower on a busy 2-core machine.
    with warnings.catch_warnings(), threadpool_limits(1):
        # Classes smaller than the number of folds, and lbfgs stopping at max_iter, are fine here.
        warnings.simplefilter("ignore", (UserWarning, ConvergenceWarning))
        for fit_rows, score_rows in splitter.split(x, labels):
            seen = np.unique(labels[fit_rows])
            if len(seen) < 2:
                continue
            model = LogisticRegression(C=c, max_iter=300, tol=1e-3)
            model.fit(x[fit_rows], labels[fit_rows])
            out = np.zeros((len(score_rows), classes), dtype=np.float32)
            out[:, model.classes_] = model.predict_proba(x[score_rows])
            probs[score_rows] = out
    return probs


def knn_votes(neighbours: Neighbours, labels: np.ndarray, classes: int, k: int | None = None) -> np.ndarray:
    """``(N, classes)``: similarity-weighted votes of each image's ``k`` nearest other images."""
    k = min(k or neighbours.k, neighbours.k)
    sims, index = neighbours.similarity[:, :k], neighbours.index[:, :k]
    weights = np.exp((sims - sims[:, :1]) / KNN_TEMPERATURE) if k else sims
    votes = np.full((len(labels), classes), SMOOTHING / classes, dtype=np.float64)
    rows = np.repeat(np.arange(len(labels)), k)
    np.add.at(votes, (rows, labels[index].ravel()), weights.ravel())
    return (votes / votes.sum(1, keepdims=True)).astype(np.float32)


def combined(*probabilities: np.ndarray) -> np.ndarray:
    return np.mean(probabilities, axis=0).astype(np.float32)
