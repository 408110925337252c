"""``transferkit data check``: what a data set holds and what in it cannot be used.

Reports which files or folders make each split (one line per split), classes and counts per
split, class imbalance, duplicate files by content hash (within
a split and across splits: a test image that is also a training image inflates accuracy), and
every unusable file with its reason, and every top-level folder that was not read (neither a
split nor a class). The dataset is clean when nothing unusable, no cross-split duplicate and
no unread folder holding images was found.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

from transferkit.data.augment.spec import mirror_note
from transferkit.data.images import DEFAULT_MAX_PIXELS, BadImage, open_rgb
from transferkit.data.specs import load_data, split_sources
from transferkit.data.splitnames import SAID

IMBALANCE_WARN = 10.0  # largest/smallest class count above this is worth a warning


def _file_hash(path) -> str:
    if hasattr(path, "getvalue"):  # encoded bytes from a parquet row
        return hashlib.sha256(path.getvalue()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _inspect(item, max_pixels: int):
    """``item``: a file path, or ``(name, path | BytesIO | BadImage)`` from a set's ``encoded()``."""
    path, source = item if isinstance(item, tuple) else (item, item)
    try:
        if isinstance(source, BadImage):
            raise source
        open_rgb(source, max_pixels)
        return path, None, _file_hash(source)
    except BadImage as bad:
        return path, bad.reason, None
    except OSError as exc:
        return path, f"unreadable ({exc.strerror or exc})", None


def check_data(spec: str, max_pixels: int | None = None, allow_outside_paths: bool = False, workers: int = 0) -> dict:
    """The data set's report; ``workers``: threads inspecting files (``--decode-workers``; 0: 4)."""
    splits = load_data(spec, seed=0, allow_outside_paths=allow_outside_paths)
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    report = {"spec": spec, "classes": splits.classes, "sources": split_sources(splits), "splits": {},
              "bad_files": [], "duplicates": [],
              "cross_split_duplicates": [], "warnings": [],
              "ignored_folders": [{"path": p, "images": n} for p, n in splits.ignored.items()]}
    owners = defaultdict(list)  # content hash -> [(split, path)]
    for name in ("train", "val", "test"):
        imageset = getattr(splits, name)
        if imageset is None:
            continue
        counts = Counter(imageset.labels.tolist())
        report["splits"][name] = {splits.classes[i]: counts.get(i, 0) for i in range(len(splits.classes))}
        if not hasattr(imageset, "paths") or not getattr(imageset, "paths", None) or not hasattr(imageset, "decode"):
            continue  # built-ins: in-memory tensors, nothing on disk to inspect
        with ThreadPoolExecutor(max_workers=workers or 4) as pool:
            items = iter(imageset.encoded(max_pixels) if hasattr(imageset, "encoded") else imageset.paths)
            # In chunks: pool.map takes its whole input at once, and parquet rows hold their bytes.
            while chunk := list(islice(items, 256)):
                for path, reason, digest in pool.map(lambda p: _inspect(p, max_pixels), chunk):
                    if reason:
                        report["bad_files"].append({"split": name, "path": path, "reason": reason})
                    else:
                        owners[digest].append((name, path))
    for digest, where in owners.items():
        if len(where) > 1:
            entry = {"sha256": digest[:16], "files": [f"{s}:{p}" for s, p in where]}
            report["duplicates"].append(entry)
            if len({s for s, _ in where}) > 1:
                report["cross_split_duplicates"].append(entry)
    train_counts = [c for c in report["splits"].get("train", {}).values()]
    if train_counts and min(train_counts) == 0:
        report["warnings"].append("a class has no training images")
    elif train_counts and max(train_counts) / min(train_counts) > IMBALANCE_WARN:
        report["warnings"].append(f"class imbalance: largest/smallest training class = "
                                  f"{max(train_counts) / min(train_counts):.1f}; consider train --class-weights balanced "
                                  "or --sampler balanced, and judge by balanced accuracy and macro-F1 (eval shows both)")
    if note := mirror_note(spec):
        report["warnings"].append(note)
    unread = [f for f in report["ignored_folders"] if f["images"]]
    report["clean"] = not report["bad_files"] and not report["cross_split_duplicates"] and not unread
    return report


def format_report(report: dict) -> str:
    lines = [f"data {report['spec']}: {len(report['classes'])} classes"]
    lines += [f"split {name}: {text}" for name, text in report["sources"].items()]
    header = f"  {'class':<24}" + "".join(f"{s:>8}" for s in report["splits"])
    lines.append(header)
    for cls in report["classes"]:
        lines.append(f"  {cls[:23]:<24}" + "".join(f"{report['splits'][s][cls]:>8}" for s in report["splits"]))
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    for dup in report["duplicates"]:
        lines.append(f"duplicate ({'across splits' if dup in report['cross_split_duplicates'] else 'same split'}): "
                     + ", ".join(dup["files"]))
    for bad in report["bad_files"]:
        lines.append(f"unusable: {bad['path']}: {bad['reason']}")
    for folder in report["ignored_folders"]:
        lines.append(f"not read: {folder['path']} ({folder['images']} images): neither a split ({SAID}) "
                     "nor a class folder with images")
    unread = sum(1 for f in report["ignored_folders"] if f["images"])
    lines.append("clean" if report["clean"] else
                 f"NOT clean: {len(report['bad_files'])} unusable file(s), "
                 f"{len(report['cross_split_duplicates'])} duplicate(s) across splits"
                 + (f", {unread} folder(s) of images not read" if unread else ""))
    return "\n".join(lines)
