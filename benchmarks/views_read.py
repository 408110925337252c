"""What a training batch with cached views costs to read, against a plain cached batch.

    python benchmarks/views_read.py [--n 10000] [--dim 1280] [--batch 256] [--repeats 7]

Writes V cache files of ``n`` fp16 rows (head-only features of efficientnet_lite0 are 1280 wide),
then times one shuffled epoch of batch reads: the plain cache (``FeatureSet.batch``), V views
through ``FeatureViews.draw`` (each row read straight from its view's file into place), and the
earlier way of drawing (one pass per view, then a scatter into the batch) as the reference. The
best of ``--repeats`` epochs each, the files in the OS page cache (as after the cache build).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from transferkit.core.records import Records  # noqa: E402
from transferkit.data.augment.pipeline import view_picks  # noqa: E402
from transferkit.engine.feature_cache import FeatureSet, FeatureViews  # noqa: E402


def per_view_pass(views: FeatureViews, index: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
    """The earlier draw: each view's rows in one read call, scattered into the batch."""
    picks = views.pick(index, epoch, b)
    out = None
    for view in picks.unique().tolist():
        rows = (picks == view).nonzero().squeeze(1)
        part = views.views[view].batch(index[rows])
        if out is None:
            out = torch.empty((len(index), *part.shape[1:]), dtype=part.dtype)
        out[rows] = part
    return out


def epoch_seconds(read, n: int, batch: int, repeats: int) -> float:
    best = float("inf")
    for r in range(repeats):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(r))
        start = time.perf_counter()
        for b, first in enumerate(range(0, n, batch)):
            read(order[first:first + batch], r, b)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tk-views-read-"))
    sets = []
    for v in range(8):
        path = folder / f"view{v}.npy"
        np.save(path, np.random.default_rng(v).random((args.n, args.dim), dtype=np.float32).astype(np.float16))
        offset = np.load(path, mmap_mode="r").offset
        sets.append(FeatureSet(Records(path, args.n, (args.dim,), np.float16, offset),
                               torch.zeros(args.n, dtype=torch.long), path, False))
    plain = epoch_seconds(lambda index, e, b: sets[0].batch(index), args.n, args.batch, args.repeats)
    print(f"{args.n:,} rows of {args.dim} fp16, batches of {args.batch}: plain cached epoch {plain * 1e3:.1f} ms\n")
    print("| views | draw, ms | ratio to plain | one pass per view + scatter, ms | ratio to plain |")
    print("|---:|---:|---:|---:|---:|")
    for count in (1, 4, 8):
        views = FeatureViews(sets[:count], lambda i, e, b, c=count: view_picks(0, e, b, i, c), tuple(range(count)))
        draw = epoch_seconds(views.draw, args.n, args.batch, args.repeats)
        old = epoch_seconds(lambda i, e, b, v=views: per_view_pass(v, i, e, b), args.n, args.batch, args.repeats)
        print(f"| {count} | {draw * 1e3:.1f} | {draw / plain:.2f}x | {old * 1e3:.1f} | {old / plain:.2f}x |")


if __name__ == "__main__":
    main()
