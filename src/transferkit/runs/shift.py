"""``transferkit eval RUN --corrupt``: a run's accuracy under the 15 ImageNet-C corruptions.

The shift test of Hendrycks & Dietterich (2019): the run's test split (val when there is none) is
scored clean, then under each corruption (noise, blur, weather, digital) at one severity or at all
five; the result is the clean accuracy, the mean corrupted accuracy over every (corruption,
severity), the worst corruption (lowest mean over its severities) and each corruption's accuracy.
The images are corrupted at the run's input size (data/corrupt/views.py), by the library named in
the result (data/corrupt/imagenet_c.py), and scored by the same engine and temperature as ``eval``.

Same run, same numbers: every image's corruption is seeded by its place in the split, the
corruption and the severity (not by the run's seed), so two runs scored on the same data meet the
very same corrupted images and their difference is the models'. ``--corrupt-limit N`` scores a
stratified sample of about N images (fixed seed), the same one for every run of that data.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from transferkit.core import distributed as dist
from transferkit.core.errors import UserError
from transferkit.core.safeio import write_json_atomic
from transferkit.data.corrupt.imagenet_c import SEVERITIES, family, library, parse_corruptions, parse_severity
from transferkit.data.corrupt.views import Corrupted, CorruptionPool
from transferkit.data.specs import stratified_split
from transferkit.data.transforms import prepare
from transferkit.engine.batches import Batches
from transferkit.engine.loop import predict_logits
from transferkit.runs.calibration import run_temperature
from transferkit.runs.evaluate import on_engine, scored_split
from transferkit.runs.inference import engine_settings
from transferkit.runs.metrics import score

SUBSET_SEED = 0  # --corrupt-limit's sample: one per data set, whatever the run's --seed
REQUIRED = {"rows", "clean", "mean_top1", "drop", "worst", "per_corruption", "severities", "corruptions", "split",
            "data", "n", "n_split", "size", "library"}  # what the report reads
KEPT = ("top1", "top5", "balanced_accuracy", "ece", "nll")  # of each scoring; per-class tables stay with plain eval


def corruption_eval(run_dir: str | Path, severity: str | int = 3, corruptions: str | None = None,
                    limit: int | None = None, *, data: str | None = None, split: str = "test", device: str = "auto",
                    batch_size: int = 128, progress=None, skip_bad: bool = False, cache_dir: str | None = None,
                    backend: str = "auto", precision: str = "fp32", threads: int = 0, workers: int | None = None,
                    splits=None) -> dict:
    """Score ``run_dir`` clean and under ImageNet-C corruptions; write ``eval/<split>_corrupt-<s3|all>.json``.

    ``severity``: 1-5 or ``"all"``; ``corruptions``: comma list of names or families (default all 15);
    ``limit``: a stratified sample of about that many images; ``workers``: corruption processes
    (default: one per usable core). The rest as ``evaluate_run``. Returns the written result.
    """
    severities, names = parse_severity(severity), parse_corruptions(corruptions)
    if limit is not None and limit < 1:
        raise UserError(f"--corrupt-limit must be a positive number of images, got {limit}")
    about = library()  # a missing extra stops before anything loads
    with dist.scope():
        return _corruption_eval(run_dir, severities, names, limit, data, split, device, batch_size, progress, skip_bad,
                                cache_dir, engine_settings(backend, precision, threads, cache_dir), workers, splits, about)


def sample(images, limit: int | None):
    """``(images, positions)``: about ``limit`` images, stratified by class, and their places in ``images``."""
    n = len(images)
    if not limit or limit >= n:
        return images, np.arange(n)
    keep, _ = stratified_split(images.labels.numpy(), 1 - limit / n, SUBSET_SEED)
    return images.subset(keep), keep


def _corruption_eval(run_dir, severities, names, limit, data, split, device, batch_size, progress, skip_bad, cache_dir,
                     settings, workers, splits, about) -> dict:
    start = time.perf_counter()
    s = scored_split(run_dir, data, split, device, progress, splits=splits, skip_bad=skip_bad, cache_dir=cache_dir)
    images, positions = sample(s.images, limit)
    net, channels_last = on_engine(s.tm, s.pre, s.run, s.classes, images, s.device, settings)
    temperature = run_temperature(s.run)

    def scores(source, desc: str, target=None) -> tuple[dict, object]:
        batches = Batches(source, batch_size, rank=dist.rank(), world=dist.world())
        logits, labels = predict_logits(net, batches, lambda raw, _s, _b: prepare(raw, s.pre, s.device, channels_last),
                                        progress=progress, desc=desc)
        target = s.mapping[labels] if target is None else target
        result = score(logits, target, s.classes, temperature)
        return {k: result[k] for k in KEPT}, target

    clean, target = scores(images, f"clean {s.split}")
    rows = []
    with CorruptionPool(workers) as pool:
        for name in names:
            for severity in severities:
                began = time.perf_counter()
                view = Corrupted(images, name, severity, s.pre, pool, positions)
                row, _ = scores(view, f"{name} s{severity}", target)
                rows.append({"corruption": name, "family": family(name), "severity": severity, **row,
                             "seconds": round(time.perf_counter() - began, 3),
                             "corrupt_seconds_per_image": view.seconds / max(1, len(view))})
    result = summarise(rows, clean)
    result.update({"split": s.split, "data": s.spec, "run": str(run_dir), "library": about, "size": s.pre.size,
                   "severities": list(severities), "corruptions": list(names), "n": len(images),
                   "n_split": len(s.images), "limit": limit, "subset_seed": SUBSET_SEED if limit else None,
                   "temperature": temperature, "seconds": round(time.perf_counter() - start, 3)})
    if dist.is_main():
        write_json_atomic(result_path(run_dir, s.split, severities), result)
    return result


def summarise(rows: list[dict], clean: dict) -> dict:
    """Clean, mean corrupted and worst accuracy from the rows of (corruption, severity) scores."""
    per_corruption = {}
    for row in rows:
        per_corruption.setdefault(row["corruption"], []).append(row["top1"])
    per_corruption = {name: float(np.mean(values)) for name, values in per_corruption.items()}
    per_family = {}
    for row in rows:
        per_family.setdefault(row["family"], []).append(row["top1"])
    mean = float(np.mean([row["top1"] for row in rows])) if rows else float("nan")
    worst = min(per_corruption, key=per_corruption.get) if per_corruption else None
    return {"clean": clean, "mean_top1": mean, "drop": clean["top1"] - mean,
            "worst": {"corruption": worst, "top1": per_corruption[worst]} if worst else None,
            "per_corruption": per_corruption, "per_family": {f: float(np.mean(v)) for f, v in per_family.items()},
            "rows": rows}


def result_path(run_dir: str | Path, split: str, severities) -> Path:
    tag = "all" if tuple(severities) == SEVERITIES else f"s{severities[0]}"
    return Path(run_dir) / "eval" / f"{split}_corrupt-{tag}.json"


def load_results(run_dir: str | Path) -> list[dict]:
    """Every corruption eval written into the run (the report's section), in file-name order."""
    out = []
    for path in sorted((Path(run_dir) / "eval").glob("*_corrupt-*.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # a file this version cannot read is left out of the report, not fatal to it
        if isinstance(result, dict) and REQUIRED <= result.keys() and result["rows"]:
            out.append(result)
    return out


def severity_columns(result: dict) -> list[int]:
    return sorted({row["severity"] for row in result["rows"]})


def by_corruption(result: dict) -> dict:
    """``{corruption: {severity: top1}}`` in the result's order."""
    table = {}
    for row in result["rows"]:
        table.setdefault(row["corruption"], {})[row["severity"]] = row["top1"]
    return table


def describe(result: dict) -> str:
    """One line: what was scored, how many images, at what size, by which library."""
    severities = result["severities"]
    level = "severities 1-5" if len(severities) > 1 else f"severity {severities[0]}"
    n = f"{result['n']:,} images" + (f" (a stratified sample of {result['n_split']:,})" if result["n"] < result["n_split"] else "")
    return (f"{result['split']} split of {result['data']} under {len(result['corruptions'])} ImageNet-C corruptions at "
            f"{level}: {n}, corrupted at {result['size']} px ({result['library']})")


def format_table(result: dict) -> str:
    columns = severity_columns(result)
    cost, families = {}, {row["corruption"]: row["family"] for row in result["rows"]}
    for row in result["rows"]:
        cost.setdefault(row["corruption"], []).append(row["corrupt_seconds_per_image"])
    worst = result["worst"]
    lines = [describe(result),
             f"clean top1 {result['clean']['top1']:.4f} | mean corrupted top1 {result['mean_top1']:.4f} "
             f"({-100 * result['drop']:+.1f} points) | worst {worst['corruption']} {worst['top1']:.4f}",
             "", f"{'corruption':<20}{'family':<9}" + "".join(f"{'s' + str(c):>8}" for c in columns)
             + (f"{'mean':>8}" if len(columns) > 1 else "") + f"{'s/img':>9}"]
    for name, accs in by_corruption(result).items():
        cells = "".join(f"{accs[c]:>8.4f}" if c in accs else f"{'':>8}" for c in columns)
        mean = f"{result['per_corruption'][name]:>8.4f}" if len(columns) > 1 else ""
        lines.append(f"{name:<20}{families[name]:<9}{cells}{mean}{float(np.mean(cost[name])):>9.4f}")
    return "\n".join(lines)
