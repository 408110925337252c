"""Augmentation that keeps the cache's speed, measured: one command prints every table.

    python benchmarks/augment.py                # the tables: fashion-mnist (--train-limit), animal-shapes,
                                                # mnist-5k, digits
    python benchmarks/augment.py --quick        # a tiny smoke run (digits, 200 images, 1 epoch, 32 px)
    python benchmarks/augment.py --crop-source  # only the crop-source measurement (seconds)

For each data set and augmentation (none, flip, light, strong, light + mixup 0.2) and each path:
head only on the feature cache with V = 1, 4, 8 augmented views (none and flip have no views:
one row), and ``--freeze 7`` (the demo's cut; views by default, and the plain loop's fresh draws
as ``f7:fresh``). Columns: clean test top-1, mean top-1 under the ImageNet-C corruptions at
severity 3, ECE, seconds per epoch, seconds building the feature cache in that run (entries it
reused cost nothing: the views of V = 1 are reused by V = 4 and 8), and the epoch-time ratio of
V views against the plain cached epoch of the same data (the target: <= 1.2).

The corrupted column comes from ``transferkit eval RUN --corrupt SEVERITY --format json`` (run
as a subprocess); where that command is not available the column reads n/a and says why.

``--crop-source`` measures the decision behind "augmentation crops from the decoded pixels at the
run's size": how close a RandomResizedCrop taken from that decode comes to the same crop taken from
the full-resolution photo (PSNR), against a decode 1.14x (256 for 224) or 1.5x larger, and what a
larger decode costs (decoding time and bytes per image). Two photos shipped with scikit-learn.

Options: --size (64), --epochs (3), --seeds (0), --train-limit (10000, Fashion-MNIST), --data,
--augments, --paths, --work DIR, --json FILE.
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
sys.path.insert(0, str(HERE.parent / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from transferkit.core.config import TrainConfig  # noqa: E402
from transferkit.core.cputuning import tune_malloc  # noqa: E402
from transferkit.runs.history import read_history  # noqa: E402
from transferkit.train import features as front_features  # noqa: E402
from transferkit.train.trainer import train  # noqa: E402

MODEL = {"model": "efficientnet_lite0", "weights": "imagenet", "batch_size": "64", "quiet": True}
DATA = ["fashion-mnist", "animal-shapes", "mnist-5k", "digits"]
AUGMENTS = {"none": {"augment": "none"}, "flip": {"augment": "flip"}, "light": {"augment": "light"},
            "strong": {"augment": "strong"}, "light+mixup": {"augment": "light", "mixup": 0.2},
            # beyond the five: photometric only (no crop), what the corruptions resemble most
            "trivial": {"augment": "trivial"}, "flip+trivial": {"augment": "flip,trivial"},
            # feature-space augmentation on the cached features (FroFA's channel-wise brightness)
            "frofa": {"augment": "none", "feature_augment": "brightness"}}
TABLE_AUGMENTS = ("none", "flip", "light", "strong", "light+mixup")  # the default rows
# path name -> settings; "head:V" is --freeze backbone with V views, "f7:V" --freeze 7 (the demo's cut,
# trained at the demo's lr), "f7:fresh" --freeze 7 through the plain loop (new draws every epoch).
PATHS = ["head:1", "head:4", "head:8", "f7:4", "f7:fresh"]
NO_CACHE = "cache" if "cache" in TrainConfig.__dataclass_fields__ else "feature_cache"


def path_settings(path: str, random: bool) -> dict | None:
    """The settings of a path, or None where it means nothing (views of a non-random augmentation)."""
    kind, _, views = path.partition(":")
    base = {"freeze": "backbone"} if kind == "head" else {"freeze": "7", "lr": "1e-3", "backbone_lr_scale": 1.0}
    if views == "fresh":
        return {**base, NO_CACHE: False} if random else None
    if not random:  # none and flip: one row per kind of path (the first V listed)
        return base
    return {**base, "views": int(views)}


def corrupted_top1(run_dir: Path, severity: int, limit: int) -> tuple[float | None, str]:
    """Mean top-1 over the 15 ImageNet-C corruptions at ``severity`` on a stratified ``limit`` of the test
    split, from ``transferkit eval RUN --corrupt SEVERITY --corrupt-limit N --format json``."""
    command = [sys.executable, "-m", "transferkit", "eval", str(run_dir), "--corrupt", str(severity), "--format", "json",
               "--quiet", "--corrupt-limit", str(limit)]
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"n/a (eval --corrupt: {last[:80]})"
    return float(json.loads(done.stdout)["mean_top1"]), ""


class BuildClock:
    """Seconds spent in the feature cache's builds of one run (entries reused cost ~0)."""

    def __init__(self):
        self.seconds, self.built = 0.0, 0
        real = front_features.FrontCache.features

        def timed(cache, images):
            start = time.perf_counter()
            entry = real(cache, images)
            if entry.built:
                self.seconds += time.perf_counter() - start
                self.built += 1
            return entry
        front_features.FrontCache.features = timed

    def take(self) -> tuple[float, int]:
        taken, self.seconds, self.built = (self.seconds, self.built), 0.0, 0
        return taken


def limit(args, data: str) -> int:
    """--train-limit: Fashion-MNIST's in the tables, every set's in --quick."""
    return args.train_limit if data == "fashion-mnist" or args.quick else 0


def tables(args, work: Path) -> list[dict]:
    clock, rows, count = BuildClock(), [], 0
    print("| data | augment | path | clean top-1 | corrupted top-1 (s3) | ECE | s/epoch | cache build s (entries) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for data in args.data.split(","):
        for augment in args.augments.split(","):
            settings = AUGMENTS[augment]
            random = settings["augment"] not in ("none", "flip")
            done_kinds = set()
            for path in args.paths.split(","):
                extra = path_settings(path, random)
                kind = path.split(":")[0]
                if extra is None or (not random and kind in done_kinds):
                    continue
                done_kinds.add(kind)
                for seed in [int(s) for s in args.seeds.split(",")]:
                    count += 1
                    out = work / "runs" / f"{count:03d}-{data}-{augment}-{path.replace(':', '')}"
                    cfg = TrainConfig(**{**MODEL, "data": data, "image_size": args.size, "epochs": args.epochs,
                                         "seed": seed, "train_limit": limit(args, data),
                                         "cache_dir": str(work / "cache"), "out": str(out), **settings,
                                         **extra}).validate()
                    clock.take()
                    result = train(cfg)
                    build, entries = clock.take()
                    epochs = read_history(out)
                    per_epoch = float(np.median([float(r["seconds"]) for r in epochs]))
                    corrupted, why = corrupted_top1(out, args.severity, args.corrupt_limit)
                    m = result["metrics"]
                    row = {"data": data, "augment": augment, "path": path if random else kind, "seed": seed,
                           "top1": m["top1"], "corrupted_top1": corrupted, "ece": m["ece"], "epoch_s": per_epoch,
                           "build_s": build, "built_entries": entries, "cached": result["cached"]}
                    rows.append(row)
                    shown = f"{100 * corrupted:.2f}%" if corrupted is not None else why
                    print(f"| {data} | {augment} | {row['path']} (seed {seed}) | {100 * m['top1']:.2f}% | {shown} | "
                          f"{m['ece']:.4f} | {per_epoch:.1f} | {build:.0f} ({entries}) |", flush=True)
    return rows


def ratio_table(rows: list[dict]) -> None:
    """Epoch time of V cached views against the plain cached epoch (augment none, head only) of the same data."""
    print("\n| data | augment | path | s/epoch | plain cached s/epoch | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for row in rows:
        if not row["path"].startswith("head:") or not row["cached"]:
            continue
        plain = [r["epoch_s"] for r in rows if r["data"] == row["data"] and r["augment"] == "none" and r["path"] == "head"]
        if plain:
            print(f"| {row['data']} | {row['augment']} | {row['path']} | {row['epoch_s']:.2f} | {np.mean(plain):.2f} | "
                  f"{row['epoch_s'] / np.mean(plain):.2f}x |")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def crop_source(sizes=(96, 192), crops: int = 200, repeats: int = 5) -> None:
    """PSNR of light's crops from the run-size decode and from larger decodes, against the same crops of
    the photo decoded at 432 px (about its full resolution). Crop boxes lie on a grid of 1/12 of the side,
    so that they fall on whole pixels at every size compared (96, 108, 144, 192, 216, 288, 432)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as F

    from transferkit.data.images import load_uint8

    grid, full = 12, 432
    photos = load_sample_images().images  # two 427 x 640 photos, cut to their centre squares: every decode
    with tempfile.TemporaryDirectory() as tmp:  # below is then a plain resize, aligned with the others
        files = []
        for k, photo in enumerate(photos):
            side = min(photo.shape[:2])
            left = (photo.shape[1] - side) // 2
            files.append(Path(tmp) / f"{k}.png")
            Image.fromarray(np.ascontiguousarray(photo[:side, left:left + side])).save(files[-1])
        originals = [torch.from_numpy(load_uint8(f, full, "bilinear", 10**9)) for f in files]
        with torch.random.fork_rng():
            torch.manual_seed(0)  # light's RandomResizedCrop boxes, on the grid
            boxes = [tuple(round(v / 1000 * grid) for v in v2.RandomResizedCrop.get_params(
                torch.zeros(1, 1000, 1000), [0.35, 1.0], [3 / 4, 4 / 3])) for _ in range(crops)]
        boxes = [(i, j, max(1, h), max(1, w)) for i, j, h, w in boxes]
        print("\n| input size | decoded at | PSNR of light's crops vs the full-resolution crop (dB) | decode ms/img | bytes/img |")
        print("|---:|---:|---:|---:|---:|")
        for size in sizes:
            for scale in (1.0, 1.125, 1.5):  # 1.125: 252 for 224, the references' 256/224
                decode = round(size * scale)
                start = time.perf_counter()
                for _ in range(repeats):
                    decoded = [torch.from_numpy(load_uint8(f, decode, "bilinear", 10**9)) for f in files]
                ms = (time.perf_counter() - start) / (repeats * len(files)) * 1e3

                def crop(img, box):
                    unit = img.shape[-1] // grid
                    i, j, h, w = (v * unit for v in box)
                    return F.resized_crop(img, i, j, h, w, [size, size], antialias=True)
                scores = [_psnr(crop(source, box), crop(original, box))
                          for original, source in zip(originals, decoded) for box in boxes]
                print(f"| {size} | {decode} | {np.mean(scores):.2f} | {ms:.1f} | {3 * decode * decode:,} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run: digits, 200 images, 1 epoch, 32 px")
    parser.add_argument("--crop-source", action="store_true", help="only the crop-source measurement")
    parser.add_argument("--size", type=int, default=64, help="input size in pixels (default 64)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--severity", type=int, default=3, help="ImageNet-C severity of the corrupted column (default 3)")
    parser.add_argument("--corrupt-limit", type=int, default=500,
                        help="test images (a stratified sample, the same for every run) of the corrupted column (default 500)")
    parser.add_argument("--train-limit", type=int, default=10000, help="Fashion-MNIST training images (default 10000)")
    parser.add_argument("--data", default=",".join(DATA))
    parser.add_argument("--augments", default=",".join(TABLE_AUGMENTS), help="among " + ", ".join(AUGMENTS))
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--work", help="folder for run directories and the feature cache (default: a new temporary one)")
    parser.add_argument("--json", help="also write the raw rows to this file")
    args = parser.parse_args()
    tune_malloc()
    if args.crop_source:
        crop_source()
        return
    if args.quick:
        args.data, args.size, args.epochs, args.paths = "digits", 32, 1, "head:1,head:2,f7:2,f7:fresh"
        args.augments, args.train_limit = "none,light,light+mixup", 200
        MODEL["batch_size"] = "32"
    work = Path(args.work or tempfile.mkdtemp(prefix="tk-augment-"))
    print(f"# augmentation: {args.size} px, {args.epochs} epochs, seeds {args.seeds}, work folder {work}", flush=True)
    start = time.perf_counter()
    rows = tables(args, work)
    ratio_table(rows)
    if args.quick:
        crop_source(sizes=(96,), crops=20, repeats=1)
    print(f"# total {time.perf_counter() - start:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
