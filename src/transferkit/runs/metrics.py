"""Scores from logits and labels: plain Python numbers and lists, ready for JSON."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``cm[true, predicted]`` counts."""
    index = target.long() * num_classes + pred.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_scores(cm: torch.Tensor, classes: list[str]) -> dict:
    cm = cm.double()
    tp = cm.diag()
    support, predicted = cm.sum(1), cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])} for i, name in enumerate(classes)}


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


def score(logits: torch.Tensor, target: torch.Tensor, classes: list[str]) -> dict:
    """top1/top5 (fractions), loss, n, per-class precision/recall/F1/support, confusion matrix, ECE."""
    logits, target = logits.float(), target.long()
    n = len(target)
    if n == 0:
        return {"top1": 0.0, "top5": 0.0, "loss": 0.0, "n": 0, "per_class": {}, "confusion_matrix": [], "ece": 0.0}
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    pred = topk[:, 0]
    cm = confusion_matrix(pred, target, len(classes))
    return {
        "top1": float((pred == target).double().mean()),
        "top5": float((topk == target[:, None]).any(1).double().mean()),
        "loss": float(F.cross_entropy(logits, target)),
        "n": n,
        "per_class": per_class_scores(cm, classes),
        "confusion_matrix": cm.tolist(),
        "ece": expected_calibration_error(logits.softmax(1), target),
    }
