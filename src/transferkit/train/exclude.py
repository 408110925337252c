"""``train --exclude FILE``: leave out the images a list names, in every split.

FILE is a CSV with a ``path`` column (``data audit``'s audit.csv, after deleting the rows to keep)
or a text file of one entry a line (``#`` starts a comment). An entry is an image file's path
(relative ones are tried against the current folder and FILE's folder), a parquet row's name
(``file.parquet#12``), or, for data held in memory without files (the built-in sets), the
image's id ``SPEC:SPLIT:ROW`` (``fashion-mnist:train:123``: row 123 of the training split as
``--data fashion-mnist`` loads it, before ``--train-limit`` or ``--shots`` choose from it).

Excluding from every split, not only the training one, is the safe reading: a wrong label or a
duplicate in the test split distorts the score as much as one in training misleads the model.
Entries that match no image are a warning, never silence (a renamed folder, another data set).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from transferkit.core.errors import UserError
from transferkit.core.progress import log
from transferkit.data.specs import SPLIT_NAMES, DataSplits


def image_id(spec: str, split: str, row: int) -> str:
    """The name of an image without a file: its data spec, split and row."""
    return f"{spec}:{split}:{row}"


def read_listing(file: str) -> list[str]:
    """The entries of an exclude list: the ``path`` column of a CSV, or the lines of a text file."""
    path = Path(file)
    if not path.is_file():
        raise UserError(f"--exclude {file}: no such file (give audit.csv from `transferkit data audit`, or a text "
                        "file of image paths, one a line)")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if "path" not in (reader.fieldnames or []):
            raise UserError(f"--exclude {file}: a CSV needs a 'path' column (it has: {', '.join(reader.fieldnames or [])})")
        return [row["path"].strip() for row in reader if (row.get("path") or "").strip()]
    return [s for line in text.splitlines() if (s := line.split("#", 1)[0].strip())]


def _keys(entry: str, base: Path) -> set[str]:
    keys = {entry, os.path.abspath(entry)}
    if not os.path.isabs(entry):
        keys.add(os.path.abspath(base / entry))
    return keys


def exclude_images(splits: DataSplits, file: str) -> DataSplits:
    """``splits`` without the images ``file`` lists; logs what was left out and what matched nothing."""
    entries = read_listing(file)
    base = Path(file).resolve().parent
    wanted = {}
    for entry in entries:
        for key in _keys(entry, base):
            wanted.setdefault(key, entry)
    matched, counts = set(), {}
    for name in SPLIT_NAMES:
        images = getattr(splits, name)
        if images is None:
            continue
        paths = getattr(images, "paths", None)
        names = ([os.path.abspath(p) for p in paths] if paths else
                 [image_id(splits.spec, name, row) for row in range(len(images))])
        hits = [wanted[n] for n in names if n in wanted]
        keep = [row for row, n in enumerate(names) if n not in wanted]
        if len(keep) < len(names):
            setattr(splits, name, images.subset(keep))
            counts[name] = len(names) - len(keep)
        matched.update(hits)
    total = sum(counts.values())
    where = ", ".join(f"{name} {n:,}" for name, n in counts.items())
    log(f"--exclude: excluded {total:,} image(s) listed in {Path(file).name}" + (f" ({where})" if where else ""))
    missing = [e for e in dict.fromkeys(entries) if e not in matched]
    if missing:
        log(f"warning: --exclude: {len(missing):,} of the {len(set(entries)):,} entries in {Path(file).name} match no "
            f"image of {splits.spec}, e.g. {missing[0]}")
    if splits.train is not None and len(splits.train) == 0:
        raise UserError(f"--exclude {file} leaves no training images")
    return splits
