"""Temperature scaling (Guo, Pleiss, Sun & Weinberger 2017): one number that makes probabilities honest.

A network's softmax is often over- or under-confident (label smoothing makes fine-tuned models
under-confident in every bin). Dividing the logits by one temperature T > 0, fitted on the
validation split by minimising the negative log-likelihood, fixes most of it. T is positive, so
the order of the classes, and with it every top-k prediction, stays as the logits say.

The fitted T is stored in run.json (``calibration.temperature``) and applied wherever
probabilities leave the program; a run without one (older runs, ``--no-calibrate``) has T = 1.

Scoring a temperature on the images it was fitted on flatters it (with no test split, the scored
split is the validation split): ``cross_fitted_log_probabilities`` then gives each image the
probabilities of a temperature fitted on the other folds, so every calibration figure is held out.
Scores work in log space (``log_probabilities``): the NLL of a confident error stays as large as it
is, where probabilities clamped at some epsilon would cap it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# T outside this range means the fit found nothing sensible (e.g. a perfectly separated,
# tiny validation split pushes T towards 0); clamping keeps the probabilities usable.
MIN_T, MAX_T = 0.05, 20.0
# Below this many validation images the fit follows noise (measured: 16 images of lfw-faces gave
# T = 1.7 and a worse test ECE and NLL; 144 of digits cut the test ECE from 0.11 to 0.03): keep T = 1.
MIN_IMAGES = 100
# A weak log-normal prior on T (log T ~ N(0, 1)), added to the summed NLL: negligible for a
# validation split of hundreds of images, it keeps a handful of them from setting an extreme T.
PRIOR_SIGMA = 1.0
# Cross-fitting: each fold is scored with a temperature fitted on the other four fifths. Fits on 80%
# of a split of at least MIN_IMAGES stay near the one fitted on all of it, so the held-out figure is
# the one of the stored T (a little pessimistic, never flattering); folds are i % FOLDS, so a split
# ordered by class puts every class in every fold.
FOLDS = 5


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The T minimising the NLL of ``softmax(logits / T)`` on ``labels`` (L-BFGS on log T, float64)."""
    logits, labels = logits.detach().double().clone(), labels.long().clone()  # also out of inference mode
    if len(labels) == 0 or not torch.isfinite(logits).all():
        return 1.0
    n = len(labels)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels) + log_t.pow(2).sum() / (2 * PRIOR_SIGMA ** 2 * n)
        loss.backward()
        return loss

    opt.step(closure)
    value = float(log_t.detach().exp())
    return min(max(value, MIN_T), MAX_T) if math.isfinite(value) else 1.0


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / T)`` in float32: the one place logits become the probabilities users see."""
    logits = logits.float()
    return (logits / temperature if temperature != 1.0 else logits).softmax(1)


def average_probabilities(logits_per_view: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Test-time augmentation: the mean of each view's calibrated probabilities (probability space)."""
    return torch.stack([probabilities(logits, temperature) for logits in logits_per_view]).mean(0)


def log_probabilities(logits_per_view: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """``log`` of ``average_probabilities`` in float64, computed in log space (log_softmax, logsumexp):
    exact for the confident errors whose probability underflows, as the NLL needs."""
    logs = torch.stack([F.log_softmax(logits.double() / temperature, 1) for logits in logits_per_view])
    return logs[0] if len(logs) == 1 else torch.logsumexp(logs, 0) - math.log(len(logs))


def cross_fitted_log_probabilities(logits_per_view: list[torch.Tensor], labels: torch.Tensor,
                                   folds: int = FOLDS) -> torch.Tensor:
    """Calibrated log-probabilities of the images a temperature is fitted on, each from a temperature
    fitted on the other folds (on the unchanged view, as the stored one is): what the run's own
    temperature would score on images it never saw. Top-1 is unchanged (every T is positive)."""
    labels = labels.long()
    fold = torch.arange(len(labels)) % folds
    out = torch.empty(logits_per_view[0].shape, dtype=torch.float64)
    for f in range(folds):
        held = fold == f
        if held.any():
            t = fit_temperature(logits_per_view[0][~held], labels[~held])
            out[held] = log_probabilities([logits[held] for logits in logits_per_view], t)
    return out


def fit_status(calibrate: bool, n: int) -> str:
    """fitted, off (``--no-calibrate``) or skipped (fewer than MIN_IMAGES validation images)."""
    return "off" if not calibrate else ("fitted" if n >= MIN_IMAGES else "skipped")


def describe(calibration: dict | None) -> str:
    """What happened to a run's probabilities, in one sentence (the log, the report, the model card)."""
    cal = calibration or {}
    method = str(cal.get("method", ""))
    status = cal.get("status") or ("fitted" if cal.get("split") else "off" if method.startswith("off") else
                                   "skipped" if cal else "none")  # runs written before ``status`` existed
    n = cal.get("n")
    if status == "fitted":
        images = f" ({n:,} images)" if isinstance(n, int) else ""
        return (f"calibrated: one temperature, T = {float(cal['temperature']):.4g}, fitted on the "
                f"{cal.get('split') or 'val'} split{images}; probabilities are softmax(logits / T)")
    if status == "off":
        return "not calibrated (--no-calibrate): probabilities are the plain softmax(logits)"
    if status == "skipped":
        images = f"has {n:,} images" if isinstance(n, int) else "has too few images"
        return (f"not calibrated: the validation split {images}, fewer than the {MIN_IMAGES} a temperature is "
                "fitted on; probabilities are the plain softmax(logits)")
    return "not calibrated (no temperature stored with the run): probabilities are the plain softmax(logits)"


def run_temperature(run: dict) -> float:
    """The temperature stored with a run; 1 for runs trained without one."""
    value = (run.get("calibration") or {}).get("temperature")
    return float(value) if isinstance(value, (int, float)) and value > 0 else 1.0
