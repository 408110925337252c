"""The demo's time/accuracy frontier: candidate recipes for >= 94.5% top-1 on the full Fashion-MNIST
test set in <= 10 minutes on 2 CPU cores, under 4 GB.

Each candidate runs as a user would run it: `transferkit train` (and `transferkit eval --tta` when
the candidate uses test-time augmentation) as separate processes, from an empty feature cache
(a fresh XDG_CACHE_HOME per candidate, like a first-time `transferkit demo`), timed end to end, with
the peak RSS of each process. The table goes to stdout (markdown) and, with --json, the raw rows.

    python benchmarks/demo_frontier.py                           # every candidate (hours on 2 cores)
    python benchmarks/demo_frontier.py --only demo-96,96-flip    # a few
    python benchmarks/demo_frontier.py --only demo-96,96-flip --data mnist-5k --epochs 1   # a cheap check of the script

--train-limit, --epochs and --data override every candidate (for checking the script, not for the table).
Run it on an otherwise idle machine: the times are the point.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

# name: train settings (flags without --) plus "tta" for eval. The demo today is demo-96.
BASE = {"data": "fashion-mnist", "model": "efficientnet_lite0", "weights": "imagenet", "batch-size": "128",
        "lr": "1e-3", "backbone-lr-scale": "1.0"}
CANDIDATES = {
    "demo-96": {"image-size": 96, "freeze": "7", "epochs": 5},
    "96-flip": {"image-size": 96, "freeze": "7", "epochs": 5, "tta": "flip"},
    "96-lpft": {"image-size": 96, "freeze": "7", "epochs": 5, "recipe": "lpft", "lr": "3e-4"},
    "112": {"image-size": 112, "freeze": "7", "epochs": 5},
    "128": {"image-size": 128, "freeze": "7", "epochs": 5},
    "128-flip": {"image-size": 128, "freeze": "7", "epochs": 5, "tta": "flip"},
    "128-freeze6": {"image-size": 128, "freeze": "6", "epochs": 4},
    "128-freeze6-flip": {"image-size": 128, "freeze": "6", "epochs": 4, "tta": "flip"},
    "160": {"image-size": 160, "freeze": "7", "epochs": 4},
    "160-flip-lpft": {"image-size": 160, "freeze": "7", "epochs": 4, "recipe": "lpft", "lr": "3e-4", "tta": "flip"},
    "96-lite1": {"image-size": 96, "freeze": "7", "epochs": 5, "model": "efficientnet_lite1"},
    # --augment flip through the cache (mirrored features cached too): less over-fitting, more epochs
    "96-augflip-8": {"image-size": 96, "freeze": "7", "epochs": 8, "augment": "flip"},
    "128-augflip-6": {"image-size": 128, "freeze": "7", "epochs": 6, "augment": "flip"},
    "128-freeze6-augflip-5": {"image-size": 128, "freeze": "6", "epochs": 5, "augment": "flip"},
    # blocks.5 trains too; the front's cache in bf16 (kept only if the accuracy guard passes)
    "96-freeze6-augflip-5-bf16": {"image-size": 96, "freeze": "6", "epochs": 5, "augment": "flip",
                                  "precision": "bf16"},
    # one epoch fewer, to fit 10 minutes, and flip TTA at eval
    "96-freeze6-augflip-4-bf16-tta": {"image-size": 96, "freeze": "6", "epochs": 4, "augment": "flip",
                                      "precision": "bf16", "tta": "flip"},
    # augmented views through the cache: crops and flips at the cache's epoch speed, V x the build
    "96-freeze7-light-v2-6": {"image-size": 96, "freeze": "7", "epochs": 6, "augment": "crop:0.5,flip", "views": 2},
    "96-freeze6-light-v2-5-bf16": {"image-size": 96, "freeze": "6", "epochs": 5, "augment": "crop:0.5,flip", "views": 2,
                                   "precision": "bf16"},
}


def _flags(settings: dict) -> list[str]:
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))]


def run_timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(seconds, peak RSS in GB of that process, stdout)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage, not all children's
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read()[-2000:]}")
        return seconds, usage.ru_maxrss / 1024 / 1024, out.read()


def candidate(name: str, settings: dict, args, work: Path) -> dict:
    train_settings = {**BASE, **{k: v for k, v in settings.items() if k != "tta"}}
    if args.train_limit:
        train_settings["train-limit"] = args.train_limit
    if args.epochs:
        train_settings["epochs"] = args.epochs
    if args.data:
        train_settings["data"] = args.data
    out = work / name
    env = dict(os.environ, PYTHONPATH=str(SRC), XDG_CACHE_HOME=str(work / f"{name}-cache"))
    python = [sys.executable, "-m", "transferkit"]
    train_s, train_rss, _ = run_timed([*python, "train", *_flags(train_settings), "--out", str(out), "--quiet"], env)
    run = json.loads((out / "run.json").read_text())
    row = {"candidate": name, **train_settings, "tta": settings.get("tta", "none"), "train_seconds": train_s,
           "top1": run["metrics"]["top1"], "ece": run["metrics"]["ece"], "peak_rss_gb": train_rss}
    if settings.get("tta"):
        eval_s, eval_rss, text = run_timed([*python, "eval", str(out), "--tta", settings["tta"], "--format", "json",
                                            "--quiet"], env)
        scored = json.loads(text)
        row.update(top1_tta=scored["top1"], eval_seconds=eval_s, peak_rss_gb=max(train_rss, eval_rss))
    row["seconds"] = row["train_seconds"] + row.get("eval_seconds", 0.0)
    row["final_top1"] = row.get("top1_tta", row["top1"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated candidate names (default: all): " + ", ".join(CANDIDATES))
    parser.add_argument("--train-limit", type=int, default=0, help="override: training images (script check only)")
    parser.add_argument("--epochs", type=int, default=0, help="override: epochs (script check only)")
    parser.add_argument("--data", help="override: another data set, e.g. mnist-5k (script check only)")
    parser.add_argument("--work", help="folder for runs and caches (default: a new temporary one)")
    parser.add_argument("--json", help="also write the raw rows here")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; known: {', '.join(CANDIDATES)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="tk-frontier-"))
    print(f"# work folder {work}; {os.cpu_count()} CPUs visible", flush=True)
    print("| candidate | size | model | freeze | epochs | augment | recipe | lr | TTA | top-1 | train + eval time | "
          "peak RSS | 94.5% in 10 min? |")
    print("|---|---:|---|---:|---:|---|---|---:|---|---:|---:|---:|---|")
    rows = []
    for name in names:
        row = candidate(name, CANDIDATES[name], args, work)
        rows.append(row)
        ok = row["final_top1"] >= 0.945 and row["seconds"] <= 600 and row["peak_rss_gb"] < 4
        minutes, seconds = divmod(round(row["seconds"]), 60)
        print(f"| {name} | {row['image-size']} | {row['model']} | {row['freeze']} | {row['epochs']} | "
              f"{row.get('augment', 'none')} | {row.get('recipe', 'standard')} | {row['lr']} | {row['tta']} | {100 * row['final_top1']:.2f}% | "
              f"{minutes} min {seconds:02d} s | {row['peak_rss_gb']:.2f} GB | {'yes' if ok else 'no'} |", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
