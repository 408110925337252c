"""Metric values against numbers worked out by hand on six samples and three classes."""
from __future__ import annotations

import pytest
import torch

from transferkit.runs.metrics import (
    confusion_matrix,
    expected_calibration_error,
    per_class_scores,
    reliability_bins,
    score,
)

CLASSES = ["a", "b", "c"]
# sample: probabilities, true label -> predicted label, confidence, right?
PROBS = torch.tensor([
    [0.70, 0.20, 0.10],  # 0 -> 0, 0.70, right
    [0.10, 0.85, 0.05],  # 1 -> 1, 0.85, right
    [0.65, 0.25, 0.10],  # 1 -> 0, 0.65, wrong
    [0.25, 0.20, 0.55],  # 2 -> 2, 0.55, right
    [0.30, 0.45, 0.25],  # 2 -> 1, 0.45, wrong
    [0.03, 0.02, 0.95],  # 2 -> 2, 0.95, right
], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 2, 2, 2])


def test_confusion_matrix_rows_are_true_labels():
    cm = confusion_matrix(PROBS.argmax(1), LABELS, 3)
    assert cm.tolist() == [[1, 0, 0],
                           [1, 1, 0],
                           [0, 1, 2]]


def test_per_class_precision_recall_f1_support():
    scores = per_class_scores(confusion_matrix(PROBS.argmax(1), LABELS, 3), CLASSES)
    # a: 1 of 2 predicted "a" right, its 1 image found; b: 1 of 2 and 1 of 2; c: 2 of 2 and 2 of 3.
    expected = {"a": (0.5, 1.0, 2 / 3, 1), "b": (0.5, 0.5, 0.5, 2), "c": (1.0, 2 / 3, 0.8, 3)}
    for name, (precision, recall, f1, support) in expected.items():
        got = scores[name]
        assert got["precision"] == pytest.approx(precision)
        assert got["recall"] == pytest.approx(recall)
        assert got["f1"] == pytest.approx(f1)
        assert got["support"] == support


def test_class_never_predicted_scores_zero_not_nan():
    cm = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 2)
    assert per_class_scores(cm, ["x", "y"])["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_expected_calibration_error_with_five_bins():
    # (0.4, 0.6]: confidences .55 (right) .45 (wrong): accuracy .5, confidence .5, gap 0
    # (0.6, 0.8]: .70 (right) .65 (wrong): accuracy .5, confidence .675, gap .175
    # (0.8, 1.0]: .85 .95 (both right): accuracy 1, confidence .9, gap .1
    # ECE = 2/6 * 0 + 2/6 * .175 + 2/6 * .1
    assert expected_calibration_error(PROBS, LABELS, bins=5) == pytest.approx(0.275 / 3)
    bins = [b for b in reliability_bins(PROBS, LABELS, bins=5) if b["count"]]
    assert [(b["count"], round(b["accuracy"], 6), round(b["confidence"], 6)) for b in bins] == [
        (2, 0.5, 0.5), (2, 0.5, 0.675), (2, 1.0, 0.9)]


def test_score_from_logits():
    result = score(PROBS.log().float(), LABELS, CLASSES)  # softmax(log p) = p
    assert result["top1"] == pytest.approx(4 / 6)
    assert result["top5"] == 1.0  # three classes: the top five hold them all
    assert result["n"] == 6
    assert result["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]
    # 15 bins of width 1/15: every sample sits alone in its bin, so ECE is the mean |right - confidence|:
    # (.45 + .45 + .65 + .30 + .15 + .05) / 6
    assert result["ece"] == pytest.approx(2.05 / 6, abs=1e-5)
    nll = -(PROBS[torch.arange(6), LABELS].log()).mean()
    assert result["loss"] == pytest.approx(float(nll), abs=1e-5)


def test_empty_input_scores_zero():
    assert expected_calibration_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 0.0


def test_nll_of_a_confident_error_is_not_capped():
    """A logit gap of 100 against the truth costs 100 nats, after T = 2 half that, and averaged over two
    test-time views the log of the mean probability: nothing clamps a tiny probability at some epsilon
    (which capped the cost at 27.6 nats, -log 1e-12, and flattered confidently wrong models)."""
    logits, wrong = torch.tensor([[100.0, 0.0]]), torch.tensor([1])
    assert score(logits, wrong, ["a", "b"])["nll"] == pytest.approx(100.0, rel=1e-9)
    assert score(logits, wrong, ["a", "b"])["loss"] == pytest.approx(100.0, rel=1e-9)
    assert score(logits, wrong, ["a", "b"], temperature=2.0)["nll"] == pytest.approx(50.0, rel=1e-9)
    from transferkit.runs.calibration import log_probabilities
    from transferkit.runs.metrics import score_log_probs

    views = [logits, torch.tensor([[80.0, 0.0]])]  # mean of e^-100 and e^-80: log = -80 - log 2 (+ e^-20)
    tta = score_log_probs(log_probabilities(views), log_probabilities(views), wrong, ["a", "b"])
    assert tta["nll"] == pytest.approx(80.0 + torch.log(torch.tensor(2.0)).item(), rel=1e-9)
