"""rank and train --budget, measured as a user would run them: one command per table of benchmarks/RESULTS.md.

    python benchmarks/choose.py tau      # rank's order against the test accuracy each candidate's full run reaches
    python benchmarks/choose.py budget   # train --budget 2m/5m/10m against the default recipe, per built-in
    python benchmarks/choose.py shift    # choosing under shift: clean validation, --robust, a deployment val split

Data: fashion-mnist (--train-limit 10000), animal-shapes, mnist-5k, digits, and "mnist->digits", a set with a
style shift written by this script: mnist-5k's 28x28 digits to train on, scikit-learn's 8x8 digits (another
scanner, another resolution) to test on. Every number comes from the `transferkit` command run in a fresh
process (`python -m transferkit ...`), its time from start to exit, its accuracy from the run's run.json.

Options: --work DIR (runs, data, one shared cache folder), --sets a,b (a subset; also fashion-mnist-60k, all
of Fashion-MNIST's 60,000 training images, for `budget --budgets 10m`), --json FILE (raw rows),
--sizes (candidates' input sizes, default 64,96,160 for these small images), --budgets (default 2m,5m,10m).
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

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from PIL import Image  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

MODELS = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"
SETS = {"fashion-mnist": ["--train-limit", "10000"], "animal-shapes": [], "mnist-5k": [], "digits": [],
        "mnist->digits": []}
# not in the default tables: all of Fashion-MNIST's training images (the demo's data), for the 10-minute goal
EXTRA_SETS = {"fashion-mnist-60k": []}


def command(args: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(HERE.parent / "src"), **(env or {})})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"transferkit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done, seconds


def write_shift_set(root: Path, with_val: bool) -> str:
    """mnist-5k's digits to train on, scikit-learn's 8x8 digits to test on (30% of them as val with ``with_val``)."""
    from transferkit.data.specs import load_data

    if (root / "done").exists():
        return str(root)
    train = load_data("mnist-5k").train  # its 10% validation hold-out stays out: the folder gets its own val
    images, labels = train.images.numpy(), train.labels.numpy()
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / "train" / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(folder / f"m{i}.png")
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.target))
    n_val = int(0.3 * len(order)) if with_val else 0
    for rank, i in enumerate(order):
        split = "val" if rank < n_val else "test"
        folder = root / split / str(int(digits.target[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"d{i}.png")
    (root / "done").write_text("")
    return str(root)


def data_spec(name: str, work: Path, with_val: bool = False) -> str:
    if name == "mnist->digits":
        return write_shift_set(work / ("shift-val" if with_val else "shift"), with_val)
    return "fashion-mnist" if name == "fashion-mnist-60k" else name


def run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def rank_rows(spec: str, extra: list[str], cache: Path, sizes: str, robust: float = 0.0) -> tuple[dict, float]:
    args = ["rank", "--data", spec, "--models", MODELS, "--sizes", sizes, "--format", "json", "--cache-dir",
            str(cache), "--quiet", "--robust", str(robust)]
    done, seconds = command(args)
    return json.loads(done.stdout), seconds


def full_run(spec: str, extra: list[str], cache: Path, out: Path, row: dict) -> tuple[dict, float]:
    if not (out / "run.json").exists():
        args = ["train", "--data", spec, "--model", row["model"], "--image-size", str(row["size"]), "--head", row["head"],
                "--out", str(out), "--cache-dir", str(cache), "--quiet", *extra]
        _, seconds = command(args)
        (out / "seconds").write_text(str(seconds))
    return run_json(out), float((out / "seconds").read_text())


def tau(args, work: Path) -> list[dict]:
    rows = []
    for name in args.sets:
        spec, extra = data_spec(name, work), {**SETS, **EXTRA_SETS}[name]
        ranked, rank_seconds = rank_rows(spec, extra, work / "cache", args.sizes)
        results, full_seconds = [], 0.0
        for row in ranked["rows"]:
            record, seconds = full_run(spec, extra, work / "cache", work / "runs" / name.replace(">", "") /
                                       f"{row['model']}-{row['size']}-{row['head'].replace(':', '')}", row)
            full_seconds += seconds
            results.append({**row, "test_top1": record["metrics"]["top1"], "full_seconds": seconds})
        expected = [r["expected"] for r in results]
        reached = [r["test_top1"] for r in results]
        summary = {"set": name, "candidates": len(results), "tau": kendalltau(expected, reached).statistic,
                   "tau_logme": kendalltau([r["logme"] for r in results], reached).statistic,
                   "rank_seconds": rank_seconds, "full_seconds": full_seconds,
                   "share": rank_seconds / full_seconds, "picked": f"{results[0]['model']}@{results[0]['size']}",
                   "picked_top1": results[0]["test_top1"], "best_top1": max(reached), "rows": results}
        rows.append(summary)
        print(f"| {name} | {len(results)} | {summary['tau']:.2f} | {summary['tau_logme']:.2f} | {rank_seconds:.0f} s | "
              f"{full_seconds:.0f} s | {summary['share']:.1%} | {summary['picked']} {summary['picked_top1']:.2%} | "
              f"{summary['best_top1']:.2%} |", flush=True)
    return rows


def budget(args, work: Path) -> list[dict]:
    rows = []
    for name in args.sets:
        spec, extra = data_spec(name, work), {**SETS, **EXTRA_SETS}[name]
        default_out = work / "runs" / f"default-{name.replace('>', '')}"
        default = (float("nan"), float("nan"))
        if args.default:
            if not (default_out / "run.json").exists():
                _, seconds = command(["train", "--data", spec, "--out", str(default_out), "--cache-dir",
                                      str(work / f"cache-default-{name.replace('>', '')}"), "--quiet", *extra])
                (default_out / "seconds").write_text(str(seconds))
            default = run_json(default_out)["metrics"]["top1"], float((default_out / "seconds").read_text())
        for limit in args.budgets.split(","):
            out = work / "runs" / f"budget-{limit}-{name.replace('>', '')}"
            cache = work / f"cache-budget-{limit}-{name.replace('>', '')}"  # from an empty cache, as a first run
            _, seconds = command(["train", "--data", spec, "--budget", limit, "--out", str(out), "--cache-dir",
                                  str(cache), "--quiet", *extra])
            record = run_json(out)
            chosen = record["plan"]["chosen"]
            allowed = float(record["plan"]["budget_s"])
            row = {"set": name, "budget": limit, "seconds": seconds, "over": seconds / allowed - 1,
                   "top1": record["metrics"]["top1"], "chosen": chosen, "default_top1": default[0],
                   "default_seconds": default[1], "stopped": record["plan"].get("stopped", "")}
            rows.append(row)
            what = "head only" if chosen["freeze"] == "backbone" else f"freeze {chosen['freeze']}"
            print(f"| {name} | {limit} | {seconds:.0f} s ({row['over']:+.1%}) | {row['top1']:.2%} | "
                  f"{chosen['model']}@{chosen['size']} {what} {chosen['head']} {chosen['epochs']} ep {chosen['augment']} | "
                  f"{default[0]:.2%} in {default[1]:.0f} s |", flush=True)
    return rows


def shift(args, work: Path) -> list[dict]:
    """Which candidate each way of choosing picks on mnist->digits, and the test accuracy its full run reaches."""
    spec, val_spec = data_spec("mnist->digits", work), data_spec("mnist->digits", work, with_val=True)
    rows = []
    for label, data, robust in (("clean validation (cv on mnist)", spec, 0.0), ("--robust 0.5", spec, 0.5),
                                ("--robust 1", spec, 1.0), ("val split from the digits side", val_spec, 0.0)):
        ranked, seconds = rank_rows(data, [], work / "cache", args.sizes, robust)
        best = ranked["rows"][0]
        record, _ = full_run(spec if data == spec else val_spec, [], work / "cache",
                             work / "runs" / "shift" / f"{label.split()[0].strip('-')}-{best['model']}-{best['size']}-"
                                                       f"{best['head'].replace(':', '')}", best)
        rows.append({"way": label, "picked": best, "test_top1": record["metrics"]["top1"], "rank_seconds": seconds})
        print(f"| {label} | {best['model']}@{best['size']} --head {best['head']} | {best['expected']:.2%} | "
              f"{record['metrics']['top1']:.2%} | {seconds:.0f} s |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=("tau", "budget", "shift"))
    parser.add_argument("--work", default=None)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--sizes", default="64,96,160")
    parser.add_argument("--budgets", default="2m,5m,10m")
    parser.add_argument("--json", default=None)
    parser.add_argument("--default", action=argparse.BooleanOptionalAction, default=True,
                        help="budget: also run the default recipe beside it (--no-default: not)")
    args = parser.parse_args()
    args.sets = [s for s in args.sets.split(",") if s]
    work = Path(args.work or tempfile.mkdtemp(prefix="tk-choose-"))
    work.mkdir(parents=True, exist_ok=True)
    headers = {"tau": "| set | candidates | tau (rank) | tau (LogME) | rank | full runs | rank / full | picked | best |",
               "budget": "| set | budget | time (over) | test top-1 | chosen | default recipe |",
               "shift": "| choosing on | picked | expected | test top-1 (digits) | rank time |"}
    print(headers[args.table])
    print("|" + "---|" * (headers[args.table].count("|") - 1))
    rows = {"tau": tau, "budget": budget, "shift": shift}[args.table](args, work)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
