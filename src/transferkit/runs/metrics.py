"""Scores from logits and labels: plain Python numbers and lists, ready for JSON."""
from __future__ import annotations

import torch

from transferkit.runs.calibration import log_probabilities


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``cm[true, predicted]`` counts."""
    index = target.long() * num_classes + pred.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _precision_recall_f1(cm: torch.Tensor):
    cm = cm.double()
    tp = cm.diag()
    support, predicted = cm.sum(1), cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    return precision, recall, f1, support, predicted


def per_class_scores(cm: torch.Tensor, classes: list[str]) -> dict:
    precision, recall, f1, support, _ = _precision_recall_f1(cm)
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])} for i, name in enumerate(classes)}


def class_balanced_scores(cm: torch.Tensor) -> dict:
    """Balanced accuracy (mean recall over the classes that have images) and macro-F1 (mean F1 over
    the classes that have images or predictions), as scikit-learn computes them: on imbalanced
    data they show what top-1 hides, a small class that is rarely found."""
    _, recall, f1, support, predicted = _precision_recall_f1(cm)
    present, seen = support > 0, (support > 0) | (predicted > 0)
    return {"balanced_accuracy": float(recall[present].mean()) if bool(present.any()) else 0.0,
            "macro_f1": float(f1[seen].mean()) if bool(seen.any()) else 0.0}


def reliability_bins(probs: torch.Tensor, target: torch.Tensor, bins: int = 15) -> list[dict]:
    """Per equal-width confidence bin ``(lo, hi]``: count, mean confidence and accuracy (the reliability plot)."""
    confidence, pred = probs.double().max(1)
    correct = (pred == target).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    out = []
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        mask = (confidence > lo) & (confidence <= hi)
        count = int(mask.sum())
        out.append({"lo": lo, "hi": hi, "count": count,
                    "confidence": float(confidence[mask].mean()) if count else 0.0,
                    "accuracy": float(correct[mask].mean()) if count else 0.0})
    return out


def expected_calibration_error(probs: torch.Tensor, target: torch.Tensor, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    n = len(target)
    if n == 0:
        return 0.0
    return sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(probs, target, bins))


def score(logits: torch.Tensor, target: torch.Tensor, classes: list[str], temperature: float = 1.0,
          log_probs: torch.Tensor | None = None) -> dict:
    """Scores of logits: top-k from the logits themselves, probabilities (ECE, NLL) through ``temperature``;
    ``log_probs``: the calibrated log-probabilities to judge instead (cross-fitted ones, say)."""
    logits = logits.float()
    calibrated = log_probs if log_probs is not None else log_probabilities([logits], temperature)
    return score_log_probs(calibrated, log_probabilities([logits]), target, classes, temperature, ranking=logits)


def score_log_probs(log_probs: torch.Tensor, uncalibrated: torch.Tensor, target: torch.Tensor, classes: list[str],
                    temperature: float = 1.0, ranking: torch.Tensor | None = None) -> dict:
    """top1/top5 (fractions), balanced accuracy, macro-F1, loss (NLL of the uncalibrated probabilities:
    the raw logits' cross-entropy, as in training), nll (of the calibrated ones), n, per-class
    precision/recall/F1/support, confusion matrix, and the ECE of the calibrated (``ece``) and
    uncalibrated (``ece_uncalibrated``) probabilities. Inputs are log-probabilities (float64 from
    ``log_probabilities``): an NLL from probabilities clamped at some epsilon would cap what one
    confident error costs.

    ``ranking`` orders the classes (the logits; default ``log_probs``): dividing by T can round two close
    probabilities to the same value, never swap them, so the logits' order is the exact one.
    """
    target = target.long()
    n = len(target)
    if n == 0:
        return {"top1": 0.0, "top5": 0.0, "balanced_accuracy": 0.0, "macro_f1": 0.0, "loss": 0.0, "nll": 0.0, "n": 0,
                "per_class": {}, "confusion_matrix": [], "ece": 0.0, "ece_uncalibrated": 0.0,
                "temperature": temperature}
    ranking = log_probs if ranking is None else ranking
    k = min(5, ranking.shape[1])
    topk = ranking.topk(k, dim=1).indices
    pred = topk[:, 0]
    cm = confusion_matrix(pred, target, len(classes))
    nll = lambda logp: float(-logp.double().gather(1, target[:, None]).mean())  # noqa: E731
    return {
        "top1": float((pred == target).double().mean()),
        "top5": float((topk == target[:, None]).any(1).double().mean()),
        **class_balanced_scores(cm),
        "loss": nll(uncalibrated),
        "nll": nll(log_probs),
        "n": n,
        "per_class": per_class_scores(cm, classes),
        "confusion_matrix": cm.tolist(),
        "ece": expected_calibration_error(log_probs.exp(), target),
        "ece_uncalibrated": expected_calibration_error(uncalibrated.exp(), target),
        "temperature": temperature,
    }
