"""``transferkit data audit``: label issues, near-duplicates (leakage across splits), outliers, in
one pass over a data set's cached features.

1. features of every image and of its mirror image (train/features.py), one table (features.py);
2. each image's nearest neighbours, flip-invariant (neighbors.py): the one N x k graph that the
   k-NN opinion, the duplicates and the outliers all read;
3. out-of-fold probabilities (probabilities.py) and confident learning (confident.py);
4. duplicate groups (duplicates.py) and outliers (outliers.py);
5. findings, one per image and problem, each with a score in 0..1 and a suggested action.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from transferkit.audit import confident, duplicates, outliers
from transferkit.audit.features import Table, build_table
from transferkit.audit.neighbors import nearest
from transferkit.audit.probabilities import combined, knn_votes, out_of_fold
from transferkit.core.progress import log
from transferkit.data.specs import DataSplits
from transferkit.train.features import backbone_features

K = 10                      # neighbours kept per image
KINDS = ("leakage", "label", "duplicate", "outlier")  # the page's and the CSV's order
KEEP_FIRST = ("test", "val", "train")  # of a group across splits, the copy kept: the evaluation one


@dataclass
class Finding:
    kind: str            # one of KINDS
    row: int             # row of the audit's table
    score: float         # 0..1: how sure the audit is; findings are sorted by it
    action: str          # what to do: "relabel to X", "remove duplicate", "check outlier"
    suggested: str = ""  # the label the image most likely has (label issues)
    detail: str = ""
    group: int = -1      # duplicate group
    kept: int = -1       # the row of the group's copy to keep


@dataclass
class Audit:
    spec: str
    model: str
    classes: list
    table: Table
    findings: list
    groups: list                 # duplicates.Group
    label_issues: confident.LabelIssues
    threshold: float
    margin: float
    seconds: dict = field(default_factory=dict)
    sets: dict = field(default_factory=dict)   # decoded image sets by split (thumbnails)

    @property
    def leakage(self) -> bool:
        return any(f.kind == "leakage" for f in self.findings)

    def counts(self) -> dict:
        return {kind: sum(f.kind == kind for f in self.findings) for kind in KINDS}


def _similarity(table: Table, a: int, b: int) -> float:
    """Flip-invariant similarity of two rows; 1 for identical pixels."""
    if table.digests is not None and (table.digests[a] == table.digests[b]).all():
        return 1.0
    return float(min(1.0, max(table.x[a] @ table.x[b], table.x[a] @ table.mirrored[b])))


def _group_findings(table: Table, groups: list) -> list[Finding]:
    out = []
    for number, group in enumerate(groups):
        splits = [str(table.split[r]) for r in group.members]
        keeper = min(group.members, key=lambda r: (KEEP_FIRST.index(str(table.split[r])), int(r)))
        for r in group.members:
            if r == keeper:
                continue
            across = table.split[r] != table.split[keeper]
            score = _similarity(table, int(r), int(keeper))
            how = "identical pixels" if score == 1.0 and group.exact else f"similarity {score:.3f}"
            out.append(Finding("leakage" if across else "duplicate", int(r), score,
                               f"remove duplicate (keep {table.names[keeper]})", detail=(
                                   f"copy of {table.split[keeper]} image {table.names[keeper]} ({how}); group of "
                                   f"{len(group.members)} in {', '.join(sorted(set(splits)))}"), group=number,
                               kept=int(keeper)))
    return out


def _label_findings(table: Table, issues: confident.LabelIssues, probs, knn, classes) -> list[Finding]:
    out = []
    for r in issues.rows:
        given, other = int(table.labels[r]), int(issues.suggested[r])
        agree = "agrees" if knn[r].argmax() == other else "disagrees"
        out.append(Finding("label", int(r), float(issues.score[r]), f"relabel to {classes[other]}", classes[other],
                           f"labelled {classes[given]}; p({classes[given]}) {probs[r, given]:.2f}, "
                           f"p({classes[other]}) {probs[r, other]:.2f}; k-NN {agree}"))
    return out


def _outlier_findings(table: Table, found: outliers.Outliers, labelled: set, classes) -> list[Finding]:
    out = []
    for r in range(len(table.labels)):
        z_far, z_odd = float(found.isolation[r]), float(found.atypical[r])
        if z_far > outliers.Z:
            detail = f"far from every other image (robust z {z_far:.1f})"
            z = z_far
        elif z_odd > outliers.Z and r not in labelled:
            detail = f"far from the other {classes[int(table.labels[r])]} images (robust z {z_odd:.1f})"
            z = z_odd
        else:
            continue
        out.append(Finding("outlier", r, z / (z + outliers.Z), "check outlier", detail=detail))
    return out


def audit_table(table: Table, classes: list, threshold: float = duplicates.THRESHOLD, seed: int = 0,
                progress=None, margin: float = duplicates.MARGIN) -> tuple:
    """Everything after the features: ``(findings, groups, label issues, seconds)``."""
    seconds = {}
    start = time.perf_counter()
    neighbours = nearest(table.x, table.mirrored, K, progress)
    seconds["neighbours"] = time.perf_counter() - start
    start = time.perf_counter()
    n_classes = len(classes)
    knn = knn_votes(neighbours, table.labels, n_classes)
    probs = combined(out_of_fold(table.x, table.labels, n_classes, seed=seed), knn)
    issues = confident.find_label_issues(probs, table.labels)
    seconds["labels"] = time.perf_counter() - start
    start = time.perf_counter()
    groups = duplicates.duplicate_groups(neighbours, table.digests, threshold, margin)
    found = outliers.find_outliers(table.x, table.labels, neighbours, n_classes)
    findings = (_group_findings(table, groups) + _label_findings(table, issues, probs, knn, classes)
                + _outlier_findings(table, found, set(issues.rows.tolist()), classes))
    findings.sort(key=lambda f: (KINDS.index(f.kind), -f.score, f.row))
    seconds["duplicates_outliers"] = time.perf_counter() - start
    return findings, groups, issues, seconds


def run_audit(cfg, splits: DataSplits, device: torch.device | None = None, progress=None,
              threshold: float = duplicates.THRESHOLD, margin: float = duplicates.MARGIN) -> Audit:
    """Audit ``splits`` with ``cfg``'s backbone (a TrainConfig: model, weights, size, engine, caches)."""
    start = time.perf_counter()
    data = backbone_features(cfg, splits, device, progress, mirrored=True)
    log(f"feature cache: {data.cache.counts()} images{data.cache.computed}")
    table = build_table(data, splits.spec, seed=cfg.seed)
    seconds = {"features": time.perf_counter() - start}
    findings, groups, issues, more = audit_table(table, splits.classes, threshold, cfg.seed, progress, margin)
    seconds.update(more, total=time.perf_counter() - start)
    return Audit(splits.spec, cfg.model, list(splits.classes), table, findings, groups, issues, threshold, margin,
                 seconds, data.sets)
