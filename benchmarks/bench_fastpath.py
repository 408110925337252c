"""transferkit's fast path against the plain seed recipe, side by side in one run.

Same data (Fashion-MNIST, the first/stratified N training images, the full 10,000-image test
set), same model and weights (EfficientNet-Lite0, packaged ImageNet weights), same resolution,
epochs and batch size, same machine. Scenarios:

  head      head-only training, end to end (transferkit's feature-cache build included)
  partial   fine-tune the last block + head conv + classifier: seconds per epoch
  pipeline  input pipeline alone: images/s for the same resize + normalise

    python benchmarks/bench_fastpath.py --scenario head --size 64 --train-limit 10000 --epochs 10
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))


def ours(size: int, train_limit: int, epochs: int, freeze: str, batch_size: int) -> dict:
    """`transferkit train` as a user runs it, with an empty feature cache so the build is timed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "transferkit", "train", "--data", "fashion-mnist", "--model", "efficientnet_lite0",
               "--freeze", freeze, "--image-size", str(size), "--epochs", str(epochs), "--batch-size", str(batch_size),
               "--train-limit", str(train_limit), "--cache-dir", str(Path(tmp) / "cache"), "--out", str(out), "--quiet"]
        if freeze != "backbone":
            cmd += ["--backbone-lr-scale", "1.0"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env={**__import__("os").environ, "PYTHONPATH": str(HERE.parent / "src")})
        total = time.perf_counter() - start
        run = json.loads((out / "run.json").read_text())
        with open(out / "metrics.csv") as f:
            epoch_seconds = [float(r["seconds"]) for r in csv.DictReader(f) if r["seconds"]]
    return {"top1": run["metrics"]["top1"], "n_test": run["metrics"]["n"], "total_seconds": total,
            "epoch_seconds": epoch_seconds}


def pipeline(size: int, n: int = 54000, batch_size: int = 256) -> dict:
    """images/s: torchvision dataset + PIL transforms + DataLoader vs uint8 tensors + batched prepare()."""
    import seed_recipe
    import torch

    from transferkit.core.cputuning import tune_malloc
    from transferkit.data.specs import load_data
    from transferkit.data.transforms import Preprocess, prepare
    from transferkit.engine.batches import Batches

    tune_malloc()  # as the transferkit command does at start; both sides get it (see cputuning.py)
    result = {}
    for workers in (0, 2):
        loader, _ = seed_recipe.loaders(size, n, batch_size, workers)
        start, seen = time.perf_counter(), 0
        for x, _y in loader:
            seen += len(x)
        result[f"plain_workers{workers}_img_s"] = seen / (time.perf_counter() - start)
    train = load_data("fashion-mnist").train.subset(range(n))
    pre = Preprocess(size, (0.5,) * 3, (0.5,) * 3, "bilinear")
    prepare(train.batch(torch.arange(batch_size)), pre, "cpu")  # warm-up, as the plain loaders' first batch
    start, seen = time.perf_counter(), 0
    for _b, _i, raw, _t in Batches(train, batch_size, shuffle=True)(0):
        x = prepare(raw, pre, "cpu")
        seen += len(x)
    result["ours_img_s"] = seen / (time.perf_counter() - start)
    result["ratio_vs_best_plain"] = result["ours_img_s"] / max(result["plain_workers0_img_s"], result["plain_workers2_img_s"])
    return result


def main() -> None:
    import seed_recipe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=("head", "partial", "pipeline"), required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.scenario == "pipeline":
        print(json.dumps(pipeline(args.size), indent=2))
        return
    freeze_ours, freeze_plain = ("backbone", "head") if args.scenario == "head" else ("7", "last")
    mine = ours(args.size, args.train_limit, args.epochs, freeze_ours, args.batch_size)
    plain = seed_recipe.train_and_eval(args.size, args.train_limit, args.epochs, freeze_plain, args.batch_size)
    report = {"scenario": args.scenario, "size": args.size, "train_limit": args.train_limit, "epochs": args.epochs,
              "ours": mine, "plain": plain,
              "speedup_end_to_end": plain["total_seconds"] / mine["total_seconds"],
              "speedup_per_epoch": (sum(plain["epoch_seconds"]) / len(plain["epoch_seconds"]))
              / (sum(mine["epoch_seconds"]) / len(mine["epoch_seconds"])),
              "accuracy_points": 100 * (mine["top1"] - plain["top1"])}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
