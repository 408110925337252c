"""Collections of labelled images that hand out uint8 batches.

Built-in data sets live in memory as uint8 tensors (no per-image PIL); image files (and members
of tar shards) are decoded once, at the model's input size, into the same uint8 form: into the
on-disk decoded cache (imagecache.py), then held in memory when small or streamed from disk
when not, or straight into memory without the cache. Everything after that (resize, normalise,
3 channels) happens on whole batches on the training device (transforms.py).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferkit.core.cachedir import cache_root
from transferkit.core.progress import log
from transferkit.data import pixels
from transferkit.data.imagecache import DiskImages, decode_cached, load_item, open_item
from transferkit.data.images import DEFAULT_MAX_PIXELS, BadImage, unusable

MEMORY_FEED_BYTES = 512 << 20  # --feed auto: decoded images up to this size are held in memory


class TensorImages:
    """Images already in memory: ``images`` is uint8 (N, C, H, W) with C = 1 or 3."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], name: str,
                 paths: list[str] | None = None, digests: np.ndarray | None = None):
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.permute(0, 3, 1, 2)
        self.images = images.contiguous()
        self.labels = labels.long()
        self.classes = list(classes)
        self.name = name
        self.paths = paths
        self.digests = digests  # per image (data/pixels.py): given by the decoded cache, else computed on first use

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index]

    def subset(self, index) -> "TensorImages":
        index = torch.as_tensor(index, dtype=torch.long)
        paths = [self.paths[i] for i in index.tolist()] if self.paths else None
        digests = self.digests[index.numpy()] if self.digests is not None else None
        return TensorImages(self.images[index], self.labels[index], self.classes, self.name, paths, digests)

    def fingerprint(self, labels: bool = True) -> str:
        """Hash of the images' pixels (data/pixels.py), and of the labels unless ``labels=False``
        (the feature cache's key: a relabelled image has the same features)."""
        if self.digests is None:
            self.digests = pixels.row_digests(self.images)
        return pixels.fingerprint(self.images.shape[1:], self.digests, self.labels if labels else None)


class FileImages:
    """Image files with labels. ``members`` (tar shards) gives each image's ``(shard, offset, size)``
    inside its shard; ``paths`` then name them ``shard.tar/key.jpg``."""

    def __init__(self, paths: list[str], labels: list[int], classes: list[str], name: str, members: list | None = None):
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.classes = list(classes)
        self.name = name
        self.members = list(members) if members is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def item(self, i: int):
        """What the decoder opens (imagecache.open_item): a path, or ``(name, shard, offset, size)``."""
        return self.paths[i] if self.members is None else (self.paths[i], *self.members[i])

    def encoded(self, max_pixels: int = DEFAULT_MAX_PIXELS):
        """What ``data check`` inspects, undecoded: each file's path, or ``(name, its bytes | BadImage)``
        for a member of a tar shard (read here, in order, so a shard is read front to back)."""
        for i in range(len(self)):
            if self.members is None:
                yield self.paths[i]
                continue
            try:
                yield self.paths[i], open_item(self.item(i), max_pixels)
            except BadImage as bad:
                yield self.paths[i], bad

    def subset(self, index) -> "FileImages":
        index = list(index)
        members = [self.members[i] for i in index] if self.members is not None else None
        return FileImages([self.paths[i] for i in index], self.labels[index].tolist(), self.classes, self.name, members)

    def decode(self, size: int, interpolation: str = "bilinear", skip_bad: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS, progress=None) -> tuple[TensorImages, list[BadImage]]:
        """Decode every file at ``size`` into memory. Broken files are returned, never swapped for others."""
        def load(i):
            try:
                return load_item(self.item(i), size, interpolation, max_pixels)
            except BadImage as bad:
                return bad

        # PIL releases the GIL while decoding and resizing, so threads use every core.
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
            results = list(progress(pool.map(load, range(len(self))), total=len(self.paths))
                           if progress else pool.map(load, range(len(self))))
        bad = [r for r in results if isinstance(r, BadImage)]
        keep = [i for i, r in enumerate(results) if not isinstance(r, BadImage)]
        if bad and not skip_bad:
            return None, bad
        arrays = [results[i] for i in keep]
        images = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros((0, 3, size, size), dtype=torch.uint8)
        return TensorImages(images, self.labels[keep], self.classes, self.name,
                            [self.paths[i] for i in keep]), bad

    def fingerprint(self, labels: bool = True) -> str:
        """Paths, sizes, modification times (of the files, or of the shards with each member's
        place) and labels: changes when any file does. A file gone since the data was listed is
        keyed as missing; decoding then names it as a broken file."""
        digest, stats = hashlib.sha256(), {}
        for i, path in enumerate(self.paths):
            file = path if self.members is None else self.members[i][0]
            if file not in stats:
                try:
                    stat = os.stat(file)
                    stats[file] = f"{os.path.abspath(file)}|{stat.st_size}|{stat.st_mtime_ns}"
                except OSError as exc:
                    stats[file] = f"{os.path.abspath(file)}|unreadable {exc.errno}"
            place = "" if self.members is None else f"|{path}|{self.members[i][1]}|{self.members[i][2]}"
            label = f"|{int(self.labels[i])}" if labels else ""
            digest.update(f"{stats[file]}{place}{label}\n".encode())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class DataCache:
    """Where decoded images are cached, how they are fed and decoded (``--cache-dir``, ``--feed``, ``--decode-workers``)."""

    root: Path
    feed: str = "auto"          # auto | memory | stream
    pin_memory: bool = False    # streamed batches in page-locked memory (CUDA)
    workers: int = 0            # decoding processes (0: imagecache.decode_workers' default)

    @classmethod
    def from_settings(cls, settings: dict, device, cache_dir: str | None = None, workers: int = 0) -> "DataCache | None":
        """What a run's settings (train flags, or run.json's config) ask for; None: no decoded-image cache.
        ``workers`` is this command's ``--decode-workers``: a property of the machine, not of the run."""
        if not settings.get("data_cache", True):
            return None
        return cls(cache_root(cache_dir or settings.get("cache_dir")), settings.get("feed", "auto"),
                   pin_memory=torch.device(device).type == "cuda", workers=workers)


def decode_splits(sets: dict, size: int, interpolation: str = "bilinear", *, skip_bad: bool = False,
                  max_pixels: int = DEFAULT_MAX_PIXELS, progress=None, consequence: str = "",
                  announce: bool = True, cache: DataCache | None = None, tell=log) -> dict:
    """``{split: image set}`` with every file-backed set decoded into uint8 (the one policy for broken
    files, shared by train, eval, embed and export).

    With ``cache``, files go through the decoded-image cache (decoded once, reused by every later
    command) and are then held in memory or streamed from disk (``cache.feed``); without it they
    are decoded into memory. Broken files are never swapped for other images: without
    ``skip_bad`` they stop the command with one error listing all of them (from every split);
    with it they are dropped and counted. ``announce`` also says how the data is fed, in one line
    handed to ``tell`` (train holds it back until the model has run a batch: a user's mistake
    there is the only line printed).
    """
    out, bad, cached = {}, [], {}
    for name, imageset in sets.items():
        if not hasattr(imageset, "decode"):
            out[name] = imageset  # already uint8 tensors in memory
            continue
        if cache is None or not isinstance(imageset, FileImages):  # Python objects (readers/pyobjects.py): no files to key
            report = progress and (lambda it, total, name=name: progress(it, total=total, desc=f"decoding {name}", unit="img"))
            out[name], broken = imageset.decode(size, interpolation, True, max_pixels, progress=report)
        else:
            cached[name] = decode_cached(imageset, size, interpolation, max_pixels, cache.root, progress, cache.workers)
            broken = [BadImage(imageset.paths[row], reason) for row, reason in cached[name].bad]
        bad += broken
    if bad and not skip_bad:
        raise unusable(bad, consequence, "Fix or remove them, or pass --skip-bad to drop them")
    if bad and announce:
        log(f"--skip-bad: dropped {len(bad)} unusable image(s), e.g. {bad[0].path} ({bad[0].reason})")
    kept = {name: np.setdiff1d(np.arange(len(sets[name])), [row for row, _ in d.bad]) for name, d in cached.items()}
    in_memory = cache is not None and (cache.feed == "memory" or (cache.feed == "auto" and sum(
        len(kept[name]) * d.records.record_bytes for name, d in cached.items()) <= MEMORY_FEED_BYTES))
    for name, decoded in cached.items():
        rows, imageset = kept[name], sets[name]
        labels, paths = imageset.labels[torch.from_numpy(rows)], [imageset.paths[i] for i in rows.tolist()]
        out[name] = (TensorImages(torch.from_numpy(decoded.records.read(rows)), labels, imageset.classes, imageset.name,
                                  paths, decoded.digests.read(rows)) if in_memory else
                     DiskImages(decoded.records, rows, labels, imageset.classes, imageset.name, paths, decoded.digests,
                                pin_memory=cache.pin_memory))
    if announce:
        tell(feeding(out, cached, size, cache, in_memory))
    return out


def feeding(sets: dict, cached: dict, size: int, cache: DataCache | None, in_memory: bool) -> str:
    """The one line that says how the images reach the model."""
    n = sum(len(s) for s in sets.values())
    nbytes = sum(s.images.nbytes if isinstance(s, TensorImages) else s.nbytes for s in sets.values())
    if not cached:
        files = any(getattr(s, "paths", None) for s in sets.values())
        what = f"decoded into memory at {size} px (no decoded-image cache)" if files else "in memory as uint8 tensors"
        return f"data: {n:,} images {what}, {nbytes / 1e6:,.0f} MB"
    built = sum(len(d.records) for d in cached.values() if d.built)
    reused = sum(len(d.records) for d in cached.values() if not d.built)
    done = " + ".join(p for p in (f"decoded {built:,} now" if built else "", f"reused {reused:,}" if reused else "") if p)
    how = (f"held in memory ({nbytes / 1e6:,.0f} MB)" if in_memory else
           f"streamed from disk, {DiskImages.prefetch} batches read ahead{' into pinned memory' if cache.pin_memory else ''}")
    return (f"data: {n:,} images at {size} px from the decoded-image cache ({done}; {nbytes / 1e9:,.2f} GB in "
            f"{cache.root / 'images'}), {how} (--feed {cache.feed})")
