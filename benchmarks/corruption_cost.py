"""What `eval --corrupt` costs: CPU seconds per image of each ImageNet-C corruption, on one core.

    python benchmarks/corruption_cost.py                 # 64 and 224 px, severity 3, 20 images each
    python benchmarks/corruption_cost.py --sizes 32,96 --severity 5 --images 50

Each corruption runs exactly as `eval --corrupt` runs it (data/corrupt/imagenet_c.corrupt_image,
seeded per image) on real photographs (scikit-learn's two sample photos, resized and cropped into
varied images), after one warm-up call (the library's imports and numba's compile of glass blur);
CPU time (time.process_time), so that a busy machine's neighbours do not count.
`eval --corrupt` splits images between one worker per core, so a machine with C free cores
corrupts about C times faster; the model's forward passes come on top.
Prints a Markdown table; --json also writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image

from transferkit.data.corrupt.imagenet_c import NAMES, corrupt_image, image_seed, library


def photos(size: int, count: int) -> list[np.ndarray]:
    """``count`` different ``size``-px crops of the sample photos."""
    out = []
    for i in range(count):
        source = Image.fromarray(load_sample_image(("china.jpg", "flower.jpg")[i % 2]))
        side = min(source.size) - 8 * (i // 2)
        left, top = (i * 13) % (source.width - side + 1), (i * 7) % (source.height - side + 1)
        out.append(np.asarray(source.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,224")
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    seconds, wall = {}, {}
    for size in sizes:
        images = photos(size, args.images)
        for name in NAMES:
            corrupt_image(images[0], name, args.severity, 0)  # warm-up: imports, numba
            start, cpu = time.perf_counter(), time.process_time()
            for i, image in enumerate(images):
                corrupt_image(image, name, args.severity, image_seed(0, name, args.severity, i))
            seconds[(size, name)] = (time.process_time() - cpu) / len(images)
            wall[(size, name)] = (time.perf_counter() - start) / len(images)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{library()}, severity {args.severity}, {args.images} images per cell, one core: CPU time per image "
          f"(wall time {sum(wall.values()) / sum(seconds.values()):.2f}x that; load average {load:.1f} on "
          f"{os.cpu_count()} CPUs)\n")
    print("| corruption | " + " | ".join(f"{s} px (CPU ms/img)" for s in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for name in NAMES:
        print(f"| {name} | " + " | ".join(f"{1000 * seconds[(s, name)]:.1f}" for s in sizes) + " |")
    print("| **all 15** | " + " | ".join(f"{1000 * sum(seconds[(s, n)] for n in NAMES):.0f}" for s in sizes) + " |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"library": library(), "severity": args.severity, "images": args.images, "load": load,
                       "cpu_seconds_per_image": {f"{s}/{n}": seconds[(s, n)] for s, n in seconds},
                       "wall_seconds_per_image": {f"{s}/{n}": wall[(s, n)] for s, n in wall}}, f, indent=2)


if __name__ == "__main__":
    main()
