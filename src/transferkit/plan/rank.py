"""``transferkit rank``: which backbone and input size serve this data set best, measured on a sample.

For each candidate (backbone x input size) the pooled features of a stratified sample go through
the frozen backbone on the fastest exact engine (``train.features.backbone_features``: cached
under the keys ``train --freeze backbone`` uses), then the one-pass heads are scored on them
(``scores.head_scores``: cross-validated, or on the data's own validation split when it brings
one, which is where images from the deployment side belong), with LogME beside them. The
engine's images/s and, for fine-tuning, the trainable part's images/s at each cut are measured
on this machine (``costs.py``) and turn into the predicted time of a full run.

Candidates run cheapest first; under a time limit the ones whose predicted cost no longer fits
are left out and the table says so.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

from transferkit.core.config import TrainConfig
from transferkit.core.errors import UserError
from transferkit.core.progress import log
from transferkit.data.specs import DataSplits, stratified_split
from transferkit.models.registry import list_models
from transferkit.plan import costs
from transferkit.plan.scores import head_scores, logme, scored_on
from transferkit.plan.shift import corrupted_validation
from transferkit.train.features import backbone_features

DEFAULT_SIZES = (96, 160, 224)
DEFAULT_SAMPLE = 2000


def finetune_cuts(stages: int) -> tuple:
    """The cuts ``train --budget`` may fine-tune from: the last stage alone, or the last two (the
    demo's --freeze 7 on EfficientNet-Lite's 9 stages)."""
    return (stages - 2, stages - 1)


@dataclass
class Candidate:
    model: str
    size: int

    @property
    def name(self) -> str:
        return f"{self.model}@{self.size}"


@dataclass
class Ranked:
    """One candidate's measurements: what ``rank`` prints and the planner chooses from."""

    model: str
    size: int
    head: str                      # the best one-pass head, as --head spells it
    accuracy: float                # its held-out accuracy on the sample: the expected accuracy
    heads: dict                    # head -> held-out accuracy
    logme: float
    engine_rate: float             # images/s of the frozen backbone on this machine's fastest exact engine
    seconds: float                 # what this candidate cost rank (features of the sample, scoring)
    n: int                         # held-out predictions behind the accuracies
    robust: dict = field(default_factory=dict)   # head -> accuracy on shifted views of the held-out images
    expected: float = 0.0          # what the choice sorts by: accuracy, or its blend with the robust one
    feature_dim: int = 0
    stages: int = 0                # the backbone's stages (--freeze N counts them)
    train_rates: dict = field(default_factory=dict)  # cut -> images/s of a training step of what follows it

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class RankResult:
    rows: list                     # Ranked, best first
    skipped: list                  # (candidate name, why)
    mode: str                      # "cv" (folds over the sample) or "val" (the data's own validation split)
    sample: int                    # images the heads were scored with
    seconds: float
    timed: list = field(default_factory=list)  # (Candidate, seconds) of each ranked: predicts the next

    def merged(self, more: "RankResult") -> "RankResult":
        """This round and a later one over (some of) the candidates this one skipped."""
        done = {Candidate(r.model, r.size).name for r in more.rows}
        rows = sorted(self.rows + more.rows, key=lambda r: (-r.expected, -r.logme))
        skipped = [(c, w) for c, w in self.skipped if c not in done]
        return RankResult(rows, skipped, self.mode, self.sample, self.seconds + more.seconds, more.timed)

    def to_json(self) -> dict:
        return {"rows": [r.to_json() for r in self.rows], "skipped": [{"candidate": c, "why": w} for c, w in self.skipped],
                "mode": self.mode, "sample": self.sample, "seconds": round(self.seconds, 2)}


def offline_models() -> list[str]:
    """The backbones whose pretrained weights are on this machine (``transferkit models --offline``)."""
    return [name for name, status, _source, _here in list_models() if status != "download"]


def parse_list(text: str | None, kind=str) -> list:
    if not text:
        return []
    try:
        return [kind(part.strip()) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError(f"'{text}': give a comma-separated list (e.g. 96,160,224)") from None


def candidates_for(models: list[str], sizes: list[int]) -> list[Candidate]:
    """Every backbone x size, cheapest first (smaller models, then smaller inputs)."""
    if not models:
        raise UserError("no backbone has its weights on this machine (transferkit models --offline); name one "
                        "with --models")
    if any(s < 16 for s in sizes):
        raise UserError("--sizes: input sizes must be at least 16 pixels")
    return [Candidate(m, s) for s in sorted(set(sizes)) for m in models]


def val_is_held_out(splits: DataSplits) -> bool:
    """Whether the validation split was drawn from the training images (by seed, or a built-in's fixed
    10%) rather than brought by the data: a drawn split is a subset of the same set, named as it."""
    return splits.val is None or getattr(splits.val, "name", None) == getattr(splits.train, "name", None)


def sample_splits(splits: DataSplits, sample: int, seed: int) -> tuple[DataSplits, str]:
    """A stratified sample of the images the heads are scored with, and the scoring mode.

    Data that brings its own validation split keeps it as the held-out side (``val`` mode: fit on
    training images, score on validation ones); otherwise training and validation images are pooled
    and cross-validated (``cv`` mode). ``sample`` <= 0: every image.
    """
    mode = "cv" if val_is_held_out(splits) else "val"
    parts = {"train": splits.train, "val": splits.val}
    total = sum(len(p) for p in parts.values() if p is not None)

    def take(images, share: float):
        if images is None or share >= 1 or len(images) < 2:
            return images
        keep, _ = stratified_split(images.labels.numpy(), 1 - share, seed)
        return images.subset(keep)

    share = 1.0 if sample <= 0 or sample >= total else sample / total
    return DataSplits(splits.spec, splits.classes, take(splits.train, share), take(splits.val, share), None), mode


def score_candidate(cfg: TrainConfig, sampled: DataSplits, mode: str, seed: int, progress=None,
                    shifted: Callable | None = None) -> Ranked:
    """``shifted(DataFeatures) -> (features, labels) | None``: shifted views of the validation images
    (plan/shift.py), on which the heads are also scored (``Ranked.robust``)."""
    """Features of the sample through the candidate, then the heads, LogME and the engine's speed."""
    start = time.perf_counter()
    got = backbone_features(cfg, sampled, progress=progress)
    x_train, y_train = got.array("train")
    x_val, y_val = got.array("val") if "val" in got.features else (np.zeros((0, x_train.shape[1]), np.float32), np.zeros(0, int))
    classes = len(sampled.classes)
    if mode == "val" and len(y_val):
        x = np.concatenate([x_train, x_val])
        y = np.concatenate([y_train, y_val])
        holdout = (np.arange(len(y_train)), np.arange(len(y_train), len(y)))
    else:
        x, y, holdout = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]), None
    scores = head_scores(x, y, classes, seed, holdout)
    head, accuracy = scores.best()
    heads = {"linear": scores.linear, f"knn:{scores.knn_k}": scores.knn, "prototype": scores.prototype}
    robust = {}
    if shifted is not None and (views := shifted(got)) is not None:
        # Heads fitted on the sample's training images only, scored on its shifted validation images.
        robust = scored_on(x_train, y_train, *views, classes, scores.knn_k, scores.linear_c)
    stages = len(got.tm.layout.stages)
    # Fine-tuning the last block, or the last two, starts from the cache at these cuts: timed here.
    rates = {cut: rate for cut in finetune_cuts(stages) if cut >= 1
             and (rate := costs.train_rate(got.tm, cut, got.pre, got.sets["train"])) is not None}
    return Ranked(cfg.model, got.pre.size, head, accuracy, heads, logme(x, y), costs.engine_rate(got),
                  time.perf_counter() - start, scores.n, robust, accuracy, x.shape[1], stages, rates)


def rank(cfg: TrainConfig, splits: DataSplits, candidates: list[Candidate], sample: int = DEFAULT_SAMPLE,
         time_limit: float | None = None, robust: float = 0.0, clock: Callable[[], float] = time.monotonic,
         progress=None, measured: list | None = None) -> RankResult:
    """Score ``candidates`` on a sample of ``splits``; ``cfg`` gives everything but model and size.

    ``time_limit`` (seconds): a candidate whose predicted cost would pass it is skipped. ``robust``
    in [0, 1] blends the accuracy on corrupted views of the held-out images (plan/shift.py) into
    the sort key. ``measured``: (candidate, seconds) timings of an earlier round on this machine,
    which predict this round's costs from its first candidate on.
    """
    if not 0 <= robust <= 1:
        raise UserError(f"--robust {robust}: give a weight between 0 and 1")
    shifted = corrupted_validation if robust > 0 else None
    began = clock()
    sampled, mode = sample_splits(splits, sample, cfg.seed)
    n = sum(len(s) for s in (sampled.train, sampled.val) if s is not None)
    rows, skipped, spent = [], [], list(measured or [])
    for candidate in candidates:
        if time_limit is not None and spent:
            predicted = costs.predict_rank_seconds(spent, candidate)
            if clock() - began + predicted > time_limit:
                skipped.append((candidate.name, f"predicted {predicted:.0f} s would pass the ranking's "
                                                f"{time_limit:.0f} s"))
                continue
        log(f"rank: {candidate.name} on {n:,} images ({mode})")
        t0 = clock()
        row = score_candidate(replace(cfg, model=candidate.model, image_size=candidate.size), sampled, mode,
                              cfg.seed, progress, shifted)
        spent.append((candidate, clock() - t0))
        if robust and row.robust:  # the head that is best on the blend, not on clean images alone
            blend = {h: (1 - robust) * a + robust * row.robust.get(h, a) for h, a in row.heads.items()}
            row.head = max(blend, key=lambda h: (blend[h], h == "linear"))
            row.expected, row.accuracy = blend[row.head], row.heads[row.head]
        rows.append(row)
    if not rows:
        raise UserError("no candidate could be ranked in the time given")
    rows.sort(key=lambda r: (-r.expected, -r.logme))
    return RankResult(rows, skipped, mode, n, clock() - began, spent)
