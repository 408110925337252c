"""Data at scale: memory, time to the first step and loader throughput as the data set grows.

Makes N photo-like JPEGs (500x375, 4 classes, an ImageFolder tree; kept in --work between runs)
and measures, for each N, at 224 px:

  train     `transferkit train --model tiny.py:Tiny --weights none --freeze none --no-cache
            --image-size 224 --epochs 1 --feed auto` under /usr/bin/time -v: peak RSS and the time from
            starting the command to the end of the first optimizer step, for a first run (empty
            cache folder) and a second run (the same command again). The same for today's
            in-memory path (`--no-data-cache`: decode every file into one uint8 tensor on every
            run), skipped where it would not fit in memory.
  loader    images/s through the loader for one shuffled epoch of the training split, batch 64,
            output = normalised float batches at 224 px: transferkit (decoded cache, --feed),
            today's in-memory tensors, and torchvision ImageFolder + PIL transforms +
            DataLoader(num_workers=2) on the same files (first --imagefolder-limit images).
  torchrun  (--torchrun) the first run again as 2 processes: how many images each decoded.

    python benchmarks/data_scale.py --sizes 10000 50000 100000 --torchrun --work /tmp/data_scale
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))
CLASSES = ("bird", "boat", "flower", "house")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TINY = """import torch.nn as nn


class Tiny(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 7, stride=4, padding=3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))
"""
LOADER_EPOCHS = 5
# `python -c FIRST_STEP train ...`: transferkit's CLI, with the wall-clock time of the end of the
# first optimizer step written to $FIRST_STEP_FILE (a global optimizer hook: no change to the trainer).
FIRST_STEP = """
import os, sys, time
from torch.optim.optimizer import register_optimizer_step_post_hook
from transferkit.cli import main

def _first(optimizer, args, kwargs):
    path = os.environ["FIRST_STEP_FILE"]
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(repr(time.time()))

register_optimizer_step_post_hook(_first)
sys.exit(main(sys.argv[1:]))
"""


def _photo(args) -> None:
    """One photo-like JPEG: a smooth random background, a class-coloured shape, sensor noise."""
    path, seed, k = args
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    image = Image.fromarray(low).resize((500, 375), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    hue = np.array([(200, 60, 40), (40, 80, 200), (220, 200, 40), (90, 160, 70)][k]) + rng.integers(-30, 30, 3)
    x, y, r = rng.integers(100, 400), rng.integers(90, 285), rng.integers(40, 90)
    (draw.ellipse if k % 2 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in hue.clip(0, 255)))
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 8, (375, 500, 3)).astype(np.int16)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_images(root: Path, n: int) -> Path:
    """``root/<class>/img_XXXXXX.jpg``, n images in all; reused when already complete."""
    if (root / ".complete").is_file() and (root / ".complete").read_text() == str(n):
        return root
    shutil.rmtree(root, ignore_errors=True)
    jobs = []
    for i in range(n):
        k = i % len(CLASSES)
        (root / CLASSES[k]).mkdir(parents=True, exist_ok=True)
        jobs.append((root / CLASSES[k] / f"img_{i:06d}.jpg", i, k))
    with Pool(os.cpu_count()) as pool:
        for _ in pool.imap_unordered(_photo, jobs, chunksize=64):
            pass
    (root / ".complete").write_text(str(n))
    return root


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(SRC))


def train_once(data: Path, work: Path, cache: Path, extra: list[str], tag: str) -> dict:
    """One `transferkit train` under /usr/bin/time -v: peak RSS (MB), seconds to the first step, total."""
    out, marker = work / f"run-{tag}", work / f"first-step-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    marker.unlink(missing_ok=True)
    (work / "tiny.py").write_text(TINY)
    command = ["/usr/bin/time", "-v", sys.executable, "-c", FIRST_STEP, "train", "--data", str(data),
               "--model", str(work / "tiny.py") + ":Tiny", "--weights", "none", "--freeze", "none", "--no-cache",
               "--image-size", "224", "--epochs", "1", "--out", str(out), "--cache-dir", str(cache), "--quiet", *extra]
    start = time.time()
    done = subprocess.run(command, env=dict(_env(), FIRST_STEP_FILE=str(marker)), capture_output=True, text=True)
    total = time.time() - start
    if done.returncode != 0:
        return {"error": done.stderr[:done.stderr.rfind("Command being timed")][-800:]}
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    feeding = next((line for line in done.stderr.splitlines() if line.startswith("data: ")), "")
    return {"peak_rss_mb": rss_kb / 1024, "first_step_s": float(marker.read_text()) - start, "total_s": total,
            "feeding": feeding}


def loader(kind: str, data: str, cache: str, limit: int, feed: str = "auto") -> dict:
    """images/s of a shuffled epoch (median of LOADER_EPOCHS), normalised float batches of 64 at 224 px (run in its own process)."""
    import torch

    from transferkit.core.cputuning import tune_malloc
    from transferkit.data.imagesets import DataCache, decode_splits
    from transferkit.data.specs import load_data
    from transferkit.data.transforms import Preprocess, prepare
    from transferkit.engine.batches import Batches

    tune_malloc()  # as the transferkit command does
    if kind == "imagefolder":
        from torch.utils.data import DataLoader, Subset
        from torchvision import datasets, transforms

        dataset = datasets.ImageFolder(data, transforms.Compose([
            transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]))
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit]
        batches = DataLoader(Subset(dataset, order.tolist()), batch_size=64, num_workers=2)
        start, n = time.perf_counter(), 0
        for x, _ in batches:
            n += len(x)
        return {"images": n, "images_per_s": n / (time.perf_counter() - start)}
    pre = Preprocess(224, MEAN, STD)
    train = load_data(data, 0).train
    cached = DataCache(Path(cache), feed) if kind == "ours" else None
    source = decode_splits({"train": train}, 224, cache=cached, announce=False)["train"]
    # An epoch of 10k images lasts about a second: the median of LOADER_EPOCHS shuffled epochs,
    # so one stall of the machine does not decide the comparison.
    rates, n = [], 0
    for epoch in range(LOADER_EPOCHS):
        start, n = time.perf_counter(), 0
        for _b, _index, raw, _labels in Batches(source, 64, shuffle=True, seed=0)(epoch):
            n += len(prepare(raw, pre, "cpu"))
        rates.append(n / (time.perf_counter() - start))
    return {"images": n, "images_per_s": statistics.median(rates), "epochs_images_per_s": [round(r) for r in rates],
            "source": type(source).__name__}


def loader_in_process(kind: str, data: Path, cache: Path, limit: int, feed: str = "auto") -> dict:
    done = subprocess.run([sys.executable, __file__, "_loader", kind, str(data), str(cache), str(limit), feed],
                          env=_env(), capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-800:]}


def torchrun_decode(data: Path, work: Path) -> dict:
    """The first run as 2 processes: each decodes its share (read back from the cache entries' meta)."""
    cache, out = work / "cache-torchrun", work / "run-torchrun"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    (work / "tiny.py").write_text(TINY)
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "transferkit", "train", "--data", str(data), "--model", str(work / "tiny.py") + ":Tiny",
                           "--weights", "none", "--freeze", "none", "--no-cache", "--image-size", "224", "--epochs", "1",
                           "--batch-size", "64", "--out", str(out), "--cache-dir", str(cache), "--quiet"],
                          env=dict(_env(), OMP_NUM_THREADS="1"), capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr[-800:]}
    metas = [json.loads(p.read_text()) for p in sorted((cache / "images").glob("*/meta.json"))]
    per_rank = [sum(m["decoded_by"][r] for m in metas) for r in range(2)]
    return {"decoded_per_process": per_rank, "decoded_total": sum(per_rank), "images": sum(m["n"] for m in metas),
            "total_s": time.time() - start}


# The least any PyTorch training process takes to its first step: import torch, make an AdamW
# (which imports torch._dynamo), take one step. The second run cannot beat this.
BARE_STEP = """
import time
import torch
model = torch.nn.Linear(4, 2)
optimizer = torch.optim.AdamW(model.parameters())
model(torch.zeros(1, 4)).sum().backward()
optimizer.step()
print(repr(time.time()))
"""


def bare_pytorch_first_step(repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.time()  # to the end of the step, as for the runs (not the process's exit)
        done = subprocess.run([sys.executable, "-c", BARE_STEP], check=True, capture_output=True, text=True)
        times.append(float(done.stdout) - start)
    return statistics.median(times)


def measure(n: int, args) -> dict:
    work = Path(args.work)
    data = make_images(work / f"photos-{n}", n)
    result = {"n": n}
    cache = work / f"cache-{n}"
    shutil.rmtree(cache, ignore_errors=True)  # the first run starts from an empty cache folder
    feed = ["--feed", args.feed]
    result["ours_first"] = train_once(data, work, cache, feed, f"{n}-first")
    result["ours_second"] = train_once(data, work, cache, feed, f"{n}-second")
    ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    if n * 0.25 < ram_mb * 0.6:  # today's path holds ~0.2 MB per image at 224 px (measured before the decoded-image cache)
        result["memory_path"] = train_once(data, work, cache, ["--no-data-cache"], f"{n}-memory")
        result["loader_memory"] = loader_in_process("memory", data, cache, 0)
    else:
        result["memory_path"] = {"skipped": f"needs about {n * 0.25 / 1024:.0f} GB"}
    result["loader_ours"] = loader_in_process("ours", data, cache, 0, args.feed)
    result["loader_imagefolder"] = loader_in_process("imagefolder", data, cache, args.imagefolder_limit)
    if args.torchrun and n == min(args.sizes):
        result["torchrun"] = torchrun_decode(data, work)
    if not args.keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    return result


def report(results: list[dict]) -> str:
    def cell(d: dict, key: str, fmt: str) -> str:
        return format(d[key], fmt) if key in d else ("-" if "skipped" in d else "error")
    lines = ["| N | peak RSS first / second run (MB) | today's in-memory path (MB) | time to first step first / "
             "second run (s) | today's (s) | loader img/s: ours / in-memory / ImageFolder+DataLoader(2) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        a, b, m = r["ours_first"], r["ours_second"], r["memory_path"]
        lines.append(f"| {r['n']:,} | {cell(a, 'peak_rss_mb', '.0f')} / {cell(b, 'peak_rss_mb', '.0f')} | "
                     f"{cell(m, 'peak_rss_mb', '.0f')} | {cell(a, 'first_step_s', '.1f')} / {cell(b, 'first_step_s', '.1f')} | "
                     f"{cell(m, 'first_step_s', '.1f')} | {cell(r['loader_ours'], 'images_per_s', ',.0f')} / "
                     f"{cell(r.get('loader_memory', {'skipped': 1}), 'images_per_s', ',.0f')} / "
                     f"{cell(r['loader_imagefolder'], 'images_per_s', ',.0f')} |")
    for r in results:
        if "torchrun" in r:
            lines.append(f"\ntorchrun, 2 processes, N={r['n']:,}: {r['torchrun']}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_loader":
        print(json.dumps(loader(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "transferkit-data-scale"),
                        help="where the images (kept for later runs), caches and runs go")
    parser.add_argument("--imagefolder-limit", type=int, default=10_000, help="images timed for the slow baseline")
    parser.add_argument("--torchrun", action="store_true", help="also the first run as 2 processes (smallest N)")
    parser.add_argument("--feed", choices=("auto", "memory", "stream"), default="auto",
                        help="transferkit's --feed (stream: check the streamed path at sizes that auto holds in memory)")
    parser.add_argument("--keep-cache", action="store_true")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.sizes:
        results.append(measure(n, args))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    floor = bare_pytorch_first_step()
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": results, "bare_pytorch_first_step_s": floor}, indent=2))
    print(report(results))
    print(f"\nA bare PyTorch process to its first AdamW step (import torch, one step; median of 3): {floor:.1f} s")


if __name__ == "__main__":
    main()
