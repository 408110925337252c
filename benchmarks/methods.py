"""The methods beyond the anchors (calibration, few-shot, imbalance, TTA, LP-FT), measured side by side: one command per table of
benchmarks/RESULTS.md. Every row of a table uses the same data, seeds, backbone (EfficientNet-Lite0
with its packaged ImageNet weights) and input size; runs share one feature cache (built by the
first run that needs it), so the seconds of a row are its own training and scoring.

    python benchmarks/methods.py calibration   # ECE before/after temperature scaling, every built-in
    python benchmarks/methods.py fewshot       # 1/5/10/20-shot: prototype, k-NN, linear head, fine-tuning
                                               # (validation: 50 images per class)
    python benchmarks/methods.py imbalance     # a 10:1 long-tailed Fashion-MNIST: plain, weights, sampler
    python benchmarks/methods.py tta           # test-time augmentation: eval of one run with each set of views
    python benchmarks/methods.py lpft          # LP-FT against the plain recipe, at lr 1e-3 and 3e-4

Options: --size (64), --seeds (0), --work DIR (run directories and feature cache; default a fresh
temporary folder), --json FILE (the raw rows). Everything stays small enough for a shared 2-core CPU;
--train-limit and --epochs say how small (see each table's defaults below).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from transferkit.core.config import TrainConfig  # noqa: E402
from transferkit.core.cputuning import tune_malloc  # noqa: E402
from transferkit.data.specs import DataSplits, load_data  # noqa: E402
from transferkit.runs.evaluate import evaluate_run  # noqa: E402
from transferkit.train.trainer import train  # noqa: E402

MODEL = {"model": "efficientnet_lite0", "weights": "imagenet", "batch_size": "64", "quiet": True}
# The demo's recipe (cli/demo.py) at benchmark cost: last block + head conv + classifier trained on the cache.
DEMO = {"freeze": "7", "batch_size": "128", "lr": "1e-3", "backbone_lr_scale": 1.0}


def timed(call, *args, **kwargs):
    """``(call(*args, **kwargs), seconds it took)``."""
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return result, time.perf_counter() - start


class Bench:
    def __init__(self, args):
        self.args, self.work = args, Path(args.work or tempfile.mkdtemp(prefix="tk-methods-"))
        self.rows: list[dict] = []
        runs = self.work / "runs"
        self.count = len(list(runs.iterdir())) if runs.is_dir() else 0  # never reuse a run directory name

    def fit(self, name: str, splits: DataSplits | None = None, **settings) -> tuple[dict, dict, float]:
        """Train one run; (result, run.json, seconds)."""
        self.count += 1
        out = self.work / "runs" / f"{self.count:03d}-{name}"
        cfg = TrainConfig(**{**MODEL, "image_size": self.args.size, "cache_dir": str(self.work / "cache"),
                             "out": str(out), **settings}).validate()
        result, seconds = timed(train, cfg, splits)
        return result, json.loads((out / "run.json").read_text()), seconds

    def add(self, table: str, **row) -> None:
        row = {"table": table, **row}
        self.rows.append(row)
        print(json.dumps(row), flush=True)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def calibration(b: Bench) -> None:
    """ECE before/after on the demo recipe (reduced: --train-limit, --epochs) and every offline built-in."""
    sets = ["fashion-mnist", "digits", "animal-shapes", "mnist-5k", "lfw-faces"]
    print("| data | train images | epochs | test top-1 | balanced acc | T | ECE before | ECE after | NLL before | NLL after | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for data in sets:
        limit = b.args.train_limit if data == "fashion-mnist" else 0
        for seed in b.seeds:
            result, run, seconds = b.fit(f"cal-{data}", data=data, train_limit=limit, epochs=b.args.epochs, seed=seed, **DEMO)
            m = result["metrics"]
            b.add("calibration", data=data, seed=seed, train=run["data"]["train"], top1=m["top1"],
                  balanced_accuracy=m["balanced_accuracy"], temperature=m["temperature"], ece_before=m["ece_uncalibrated"],
                  ece_after=m["ece"], nll_before=m["loss"], nll_after=m["nll"], seconds=seconds)
            print(f"| {data} (seed {seed}) | {run['data']['train']:,} | {b.args.epochs} | {_pct(m['top1'])} | "
                  f"{_pct(m['balanced_accuracy'])} | {m['temperature']:.3f} | {m['ece_uncalibrated']:.4f} | "
                  f"**{m['ece']:.4f}** | {m['loss']:.4f} | {m['nll']:.4f} | {seconds:.0f} |", flush=True)


def fewshot(b: Bench) -> None:
    """K images per class; prototype and k-NN (no gradient steps) against a linear head and fine-tuning
    the last block, trained for about ``steps`` optimizer steps whatever K is. Validation (best epoch,
    temperature) uses ``val_per_class`` images of each class; the test split is whole."""
    steps, val_per_class = 100, 50
    print("| data | K | prototype | knn:5 | linear head | fine-tune last block | seconds (proto / knn / linear / ft) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for data in ("fashion-mnist", "animal-shapes"):
        full = load_data(data)
        classes = len(full.classes)
        labels = full.val.labels.numpy()
        full.val = full.val.subset(np.sort(np.concatenate(
            [np.flatnonzero(labels == c)[:val_per_class] for c in range(classes)])))
        for shots in (1, 5, 10, 20):
            epochs = max(10, math.ceil(steps / math.ceil(shots * classes / int(MODEL["batch_size"]))))
            methods = {"prototype": {"head": "prototype"}, "knn:5": {"head": "knn:5"},
                       "linear": {"head": "linear", "epochs": epochs},
                       "finetune": {"head": "linear", "epochs": epochs, "freeze": "7", "backbone_lr_scale": 1.0}}
            accs, secs = {m: [] for m in methods}, {m: [] for m in methods}
            for seed in b.seeds:
                for method, settings in methods.items():
                    splits = DataSplits(full.spec, full.classes, full.train, full.val, full.test)  # train() cuts its copy
                    result, _run, seconds = b.fit(f"fs-{data}-{shots}-{method}", splits=splits, data=data, shots=shots,
                                                  seed=seed, **settings)
                    accs[method].append(result["metrics"]["top1"])
                    secs[method].append(seconds)
                    b.add("fewshot", data=data, shots=shots, method=method, seed=seed, top1=result["metrics"]["top1"],
                          ece=result["metrics"]["ece"], seconds=seconds, epochs=settings.get("epochs", 1))
            mean = {m: float(np.mean(v)) for m, v in accs.items()}
            best = max(mean.values())
            cells = [(f"**{_pct(v)}**" if v == best else _pct(v)) for v in mean.values()]
            print(f"| {data} | {shots} | {' | '.join(cells)} | "
                  f"{' / '.join(f'{np.mean(v):.0f}' for v in secs.values())} |", flush=True)


def long_tail(splits: DataSplits, ratio: float, seed: int) -> DataSplits:
    """Class c keeps a share ratio^(-c / (C - 1)) of its images in train, val and test (10:1 from the
    first class to the last), chosen by seed: top-1 then mostly measures the head classes."""
    rng = np.random.default_rng(seed)

    def cut(part):
        labels = part.labels.numpy()
        top = np.bincount(labels).max()
        keep = []
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            keep.append(members[: max(1, round(top * ratio ** (-c / (len(splits.classes) - 1))))])
        return part.subset(np.sort(np.concatenate(keep)))

    return DataSplits(splits.spec, splits.classes, cut(splits.train), cut(splits.val), cut(splits.test))


def imbalance(b: Bench) -> None:
    """A 10:1 long-tailed Fashion-MNIST (train, val and test alike): plain vs class weights vs sampler."""
    print("| run | train images (largest / smallest class) | test top-1 | balanced accuracy | macro-F1 | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    for seed in b.seeds:
        full = load_data("fashion-mnist")
        if b.args.train_limit:  # the same share of every class, before the tail is cut
            keep = np.flatnonzero(np.arange(len(full.train)) % max(1, len(full.train) // b.args.train_limit) == 0)
            full.train = full.train.subset(keep)
        splits = long_tail(full, 10.0, seed)
        counts = torch.bincount(splits.train.labels)
        for name, settings in (("plain", {}), ("--class-weights balanced", {"class_weights": "balanced"}),
                               ("--sampler balanced", {"sampler": "balanced"})):
            result, _run, seconds = b.fit("lt-" + name.strip("-").replace(" ", "-"), splits=splits, data="fashion-mnist",
                                          epochs=b.args.epochs, seed=seed, **DEMO, **settings)
            m = result["metrics"]
            b.add("imbalance", run=name, seed=seed, train=len(splits.train), top1=m["top1"],
                  balanced_accuracy=m["balanced_accuracy"], macro_f1=m["macro_f1"], seconds=seconds)
            print(f"| {name} (seed {seed}) | {len(splits.train):,} ({int(counts.max())} / {int(counts.min())}) | "
                  f"{_pct(m['top1'])} | {_pct(m['balanced_accuracy'])} | {m['macro_f1']:.4f} | {seconds:.0f} |", flush=True)


def compared_rows(b: Bench, table: str, seed: int, reference: tuple, others: list) -> None:
    """Record and print a reference row, then rows compared with it: test top-1, gain, ECE, seconds (extra).

    ``reference`` is ``(label, metrics, seconds, fields)``; ``others`` a list of the same.
    ``fields`` go into the recorded row (e.g. ``views="flip"``)."""
    label, ref, ref_seconds, fields = reference
    b.add(table, seed=seed, top1=ref["top1"], ece=ref["ece"], seconds=ref_seconds, **fields)
    print(f"| {label} | {_pct(ref['top1'])} | - | {ref['ece']:.4f} | {ref_seconds:.0f} |", flush=True)
    for label, m, seconds, fields in others:
        gain = m["top1"] - ref["top1"]
        b.add(table, seed=seed, top1=m["top1"], gain=gain, ece=m["ece"], seconds=seconds, **fields)
        print(f"| {label} | {_pct(m['top1'])} | {100 * gain:+.2f} | {m['ece']:.4f} | "
              f"{seconds:.0f} ({seconds - ref_seconds:+.0f}) |", flush=True)


def tta(b: Bench) -> None:
    """The demo recipe (reduced), scored plain and with each set of test-time views."""
    print("| eval of the same run | test top-1 | gain (points) | ECE | seconds (extra) |")
    print("|---|---:|---:|---:|---:|")
    common = dict(data="fashion-mnist", train_limit=b.args.train_limit, epochs=b.args.epochs, **DEMO)
    for seed in b.seeds:
        result, _run, _seconds = b.fit("plain", seed=seed, **common)
        plain, plain_seconds = timed(evaluate_run, result["run_dir"])  # without views: what TTA adds time to
        views = [(f"`--tta {v}`", *timed(evaluate_run, result["run_dir"], tta=v), {"views": v})
                 for v in ("flip", "crops", "flip,crops")]
        compared_rows(b, "tta", seed, (f"no TTA (seed {seed})", plain, plain_seconds, {"views": "none"}), views)


def lpft(b: Bench) -> None:
    """The demo recipe (reduced) trained plainly and with --recipe lpft, at the default and a small lr."""
    print("| run | test top-1 | gain (points) | ECE | seconds (extra) |")
    print("|---|---:|---:|---:|---:|")
    common = dict(data="fashion-mnist", train_limit=b.args.train_limit, epochs=b.args.epochs, **DEMO)
    for seed in b.seeds:
        for lr in ("1e-3", "3e-4"):
            ref, _, ref_seconds = b.fit(f"plain-{lr}", seed=seed, **{**common, "lr": lr})
            lp, run, seconds = b.fit(f"lpft-{lr}", seed=seed, recipe="lpft", **{**common, "lr": lr})
            probe = run["recipe"]["linear_probe"]
            label = (f"`--recipe lpft`, lr {lr} (probe: val {_pct(probe['val_acc'])}, L2 {probe['l2']:g}, "
                     f"{probe['seconds']:.0f} s)")
            compared_rows(b, "lpft", seed, (f"plain, lr {lr} (seed {seed})", ref["metrics"], ref_seconds,
                                            {"run": f"plain lr {lr}"}),
                          [(label, lp["metrics"], seconds, {"run": f"lpft lr {lr}", "probe": probe})])


TABLES = {"calibration": calibration, "fewshot": fewshot, "imbalance": imbalance, "tta": tta, "lpft": lpft}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=TABLES)
    parser.add_argument("--size", type=int, default=64, help="input size in pixels (default 64)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; rows are per seed, few-shot cells their mean")
    parser.add_argument("--train-limit", type=int, default=10000,
                        help="training images of Fashion-MNIST in the calibration, imbalance, tta and lpft tables "
                             "(0: all 54,000; default 10000)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the demo recipe in those tables (default 3)")
    parser.add_argument("--work", help="folder for run directories and the feature cache (default: a new temporary one)")
    parser.add_argument("--json", help="also write the raw rows to this file")
    args = parser.parse_args()
    tune_malloc()
    bench = Bench(args)
    bench.seeds = [int(s) for s in args.seeds.split(",")]
    print(f"# {args.table}: {args.size} px, seeds {args.seeds}, work folder {bench.work}", flush=True)
    start = time.perf_counter()
    TABLES[args.table](bench)
    print(f"# total {time.perf_counter() - start:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(bench.rows, indent=1))


if __name__ == "__main__":
    main()
