"""The accuracy guard of reduced precision: does bf16/int8 change what the model predicts?

Judged on labelled validation images, fp32 against the reduced engine:

- top-1 agreement: the share of images whose predicted class is the same in both; at least 99%;
- accuracy drop: fp32 accuracy minus reduced accuracy; at most 0.5 points.

A whole classifier (eval, predict, serve, export) is judged by its own logits. A frozen front or
an embedder has no trained head yet (train builds the feature cache before the head learns
anything), so it is judged by a probe that any head would resemble: nearest class mean with
cosine similarity on the (spatially pooled) features, the class means taken from the fp32
features with each image left out of its own class's mean. The probe fitted on fp32 features
is applied to both feature sets, so it measures how far the reduced features move predictions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.core.errors import UserError
from transferkit.data.transforms import Preprocess, prepare

AGREEMENT = 0.99       # top-1 agreement with fp32, at least
MAX_DROP = 0.005       # accuracy drop (fraction), at most
IMAGES = 500           # validation images judged, at most (evenly spread over the split)
CALIBRATION = 300      # training images that calibrate int8, at most


@dataclass
class Guard:
    """Labelled validation images (and training images for int8 calibration), loaded on first use."""

    load_images: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # (preprocessed images, labels)
    load_calibration: Callable[[], torch.Tensor]                 # preprocessed training images
    kind: str = "logits"     # logits | features
    strict: bool = True      # refuse with an error (eval, predict, serve, export) or fall back to fp32 (train)
    _cache: dict = field(default_factory=dict, repr=False)

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        if "images" not in self._cache:
            self._cache["images"] = self.load_images()
        return self._cache["images"]

    def calibration(self) -> torch.Tensor:
        if "calibration" not in self._cache:
            self._cache["calibration"] = self.load_calibration()
        return self._cache["calibration"]

    def sample(self) -> torch.Tensor:
        return self.images()[0][:32]


def spread(n: int, k: int) -> torch.Tensor:
    """At most ``k`` indices spread evenly over ``range(n)`` (a sample of every part of the split)."""
    return torch.from_numpy(np.unique(np.linspace(0, n - 1, num=min(k, n)).round().astype(np.int64))) if n else \
        torch.zeros(0, dtype=torch.long)


def guard_from_sets(val, train, pre: Preprocess, kind: str = "logits", strict: bool = True,
                    mapping: torch.Tensor | None = None) -> Guard | None:
    """A guard on decoded image sets: ``val`` judges, ``train`` calibrates; ``mapping`` turns the
    data's label indices into the model's. None without validation images."""
    if val is None or len(val) == 0:
        return None

    def images():
        index = spread(len(val), IMAGES)
        labels = val.labels[index].long()
        return prepare(val.batch(index), pre), (mapping[labels] if mapping is not None else labels)

    def calibration():
        if train is None or len(train) == 0:
            raise UserError("--precision int8 calibrates on training images, and the data has none")
        return prepare(train.batch(spread(len(train), CALIBRATION)), pre)

    return Guard(images, calibration, kind, strict)


def batched(engine, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([engine(x[i:i + batch]).float() for i in range(0, len(x), batch)]) if len(x) else x


def probe_predictions(reference: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Nearest class mean (cosine) fitted on ``reference``, each image left out of its own class's
    mean, applied to ``features`` (rows in the same order)."""
    def pooled(f):
        f = f.float().flatten(2).mean(2) if f.ndim > 2 else f.float()
        return F.normalize(f, dim=1)

    ref, feats = pooled(reference), pooled(features)
    n, classes = len(labels), int(labels.max()) + 1 if len(labels) else 0
    sums = torch.zeros(classes, ref.shape[1]).index_add_(0, labels, ref)  # a mean's direction is its sum's
    counts = torch.bincount(labels, minlength=classes)
    rows = torch.arange(n)
    scores, norms = feats @ sums.T, sums.norm(dim=1).expand(n, classes).clone()
    # leave-one-out: each image's own class mean without it (a class's only image: no mean at all)
    scores[rows, labels] -= (feats * ref).sum(1)
    norms[rows, labels] = (sums[labels] - ref).norm(dim=1)
    scores = scores / norms.clamp(min=1e-12)
    scores[:, counts == 0] = -float("inf")
    scores[rows[counts[labels] == 1], labels[counts[labels] == 1]] = -float("inf")
    return scores.argmax(1)


def judge(fp32, engine, guard: Guard) -> dict:
    """Agreement and accuracy of ``engine`` against ``fp32`` on the guard's images."""
    x, labels = guard.images()
    labels = labels.long()
    want, got = batched(fp32, x), batched(engine, x)
    if guard.kind == "logits":
        pred_fp32, pred = want.argmax(1), got.argmax(1)
    else:
        pred_fp32, pred = probe_predictions(want, want, labels), probe_predictions(want, got, labels)
    n = len(labels)
    agree = float((pred == pred_fp32).float().mean()) if n else 0.0
    acc_fp32 = float((pred_fp32 == labels).float().mean()) if n else 0.0
    acc = float((pred == labels).float().mean()) if n else 0.0
    drop = acc_fp32 - acc
    ok = n > 0 and agree >= AGREEMENT and drop <= MAX_DROP + 1e-9
    measure = "top-1" if guard.kind == "logits" else "nearest-class-mean probe top-1"
    text = (f"on {n} validation images, {measure} agreement with fp32 {agree:.1%} (needs >= {AGREEMENT:.0%}), "
            f"accuracy {acc:.1%} vs {acc_fp32:.1%} in fp32 ({-100 * drop:+.1f} points, at most "
            f"-{100 * MAX_DROP:.1f} allowed)")
    return {"ok": ok, "n": n, "agreement": agree, "accuracy": acc, "accuracy_fp32": acc_fp32, "drop": drop,
            "text": text}
