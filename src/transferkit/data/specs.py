"""``--data SPEC`` -> train/val/test image sets with one class list.

SPEC is a built-in name (fashion-mnist, cifar10, digits), a CSV of ``path,label[,split]``, a
folder: ``root/<class>/<image>`` (split into train/val by ``--seed``, 20% val per class) or
``root/{train,val,test}/<class>/<image>``, where the validation folder may also be called
``valid`` (fastai, Keras) or ``validation``, parquet data from the Hugging Face Hub (parquet.py), or
WebDataset-style tar shards (``shards/train-{000000..000099}.tar``, shards.py).
Hidden files and folders and empty folders never become classes. A top-level folder that is
neither a split nor a class is not read, and ``DataSplits.ignored`` names it so that ``data check``
and ``train`` can say so. Built-ins hold out a fixed 10% of their training split for validation,
so the val and test sets do not move with ``--seed``.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferkit.core.errors import UserError
from transferkit.data import parquet
from transferkit.data.builtin_sets import BUILTINS, LOADERS
from transferkit.data.images import is_image_file
from transferkit.data.imagesets import FileImages, TensorImages
from transferkit.data.shards import is_shard_spec, read_shards

SPLIT_NAMES = ("train", "val", "test")
VAL_FOLDERS = ("val", "valid", "validation")  # the names the common layouts give the validation folder
VAL_FRACTION = 0.2
BUILTIN_VAL_FRACTION = 0.1


@dataclass
class DataSplits:
    spec: str
    classes: list[str]
    train: object
    val: object | None
    test: object | None
    ignored: dict = field(default_factory=dict)  # top-level folder -> images in it: neither a split nor a class

    def split(self, name: str):
        chosen = getattr(self, name, None)
        if chosen is None and name == "test":
            chosen = self.val  # a folder without a test split is evaluated on its val split
        if chosen is None:
            raise UserError(f"data '{self.spec}' has no '{name}' split (it has "
                            f"{', '.join(n for n in SPLIT_NAMES if getattr(self, n) is not None)})")
        return chosen


def _visible(name: str) -> bool:
    return not name.startswith((".", "__"))


def scan_class_folders(root: Path) -> dict[str, list[str]]:
    """``{class: [image paths]}`` for the visible, non-empty class folders under ``root``."""
    found = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir() or not _visible(entry.name):
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(entry.path):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            files += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f)]
        if files:
            found[entry.name] = files
    return found


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of each class held out, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_held = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        n_held = max(n_held, 1) if len(idx) > 1 else 0
        held += idx[:n_held].tolist()
        keep += idx[n_held:].tolist()
    return np.sort(np.array(keep, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


def _file_set(by_class: dict[str, list[str]], classes: list[str], name: str) -> FileImages:
    paths, labels = [], []
    for cls, files in by_class.items():
        if cls not in classes:
            raise UserError(f"{name}: class folder '{cls}' is not among the training classes {classes}")
        paths += files
        labels += [classes.index(cls)] * len(files)
    return FileImages(paths, labels, classes, name)


def count_images(folder: Path) -> int:
    return sum(1 for _, _, files in os.walk(folder) for f in files if is_image_file(f))


def _split_folders(root: Path, subdirs: set[str]) -> dict[str, str]:
    """``{split: folder name}`` of a root with a train/ folder; refuses two validation folders."""
    vals = [n for n in VAL_FOLDERS if n in subdirs]
    if len(vals) > 1:
        raise UserError(f"{root} has both {' and '.join(f'{v}/' for v in vals)}; all of them would be the validation "
                        "split: keep one (or merge them)")
    return {"train": "train", **({"val": vals[0]} if vals else {}), **({"test": "test"} if "test" in subdirs else {})}


def _from_folder(spec: str, root: Path, seed: int) -> DataSplits:
    subdirs = {e.name for e in os.scandir(root) if e.is_dir() and _visible(e.name)}
    if "train" in subdirs:
        folders = _split_folders(root, subdirs)
        train_map = scan_class_folders(root / "train")
        if not train_map:
            raise UserError(f"{root}/train has no class folders with images in them")
        classes = sorted(train_map)
        sets = {s: (_file_set(scan_class_folders(root / folders[s]), classes, f"{spec}/{folders[s]}")
                    if s in folders else None) for s in ("val", "test")}
        train = _file_set(train_map, classes, f"{spec}/train")
        if sets["val"] is None or len(sets["val"]) == 0:
            keep, held = stratified_split(train.labels.numpy(), VAL_FRACTION, seed)
            train, sets["val"] = train.subset(keep), train.subset(held)
        ignored = {str(root / d): count_images(root / d) for d in sorted(subdirs - set(folders.values()))}
        return DataSplits(spec, classes, train, sets["val"], sets["test"], ignored)
    split_like = sorted(d for d in subdirs if d.lower() in ("train", "training", *VAL_FOLDERS, "test", "testing"))
    if split_like:
        # Read as classes they would mix the splits into one another: refuse rather than guess.
        raise UserError(f"{root} has {', '.join(d + '/' for d in split_like)} but no train/ folder, so they would be "
                        f"read as classes; put the training images in {root}/train/<class>/ (split folders are "
                        "train, val|valid|validation and test), or rename the folder if it is a class")
    by_class = scan_class_folders(root)
    if len(by_class) < 2:
        raise UserError(f"{root} needs at least two class folders with images (root/<class>/<image>); "
                        f"found {len(by_class)}")
    classes = sorted(by_class)
    everything = _file_set(by_class, classes, spec)
    keep, held = stratified_split(everything.labels.numpy(), VAL_FRACTION, seed)
    ignored = {str(root / d): 0 for d in sorted(subdirs - set(by_class))}  # no images: never a class
    return DataSplits(spec, classes, everything.subset(keep), everything.subset(held), None, ignored)


def ignored_note(splits: DataSplits) -> str | None:
    """One line naming the top-level folders that were not read (for ``train`` and ``lr-find``)."""
    if not splits.ignored:
        return None
    listed = ", ".join(f"{p} ({n} images)" if n else f"{p} (no images)" for p, n in splits.ignored.items())
    return (f"note: not read, neither a split (train, val|valid|validation, test) nor a class folder with images: "
            f"{listed}")


def _from_csv(spec: str, path: Path, seed: int) -> DataSplits:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() == "path":
        rows = rows[1:]
    if not rows or any(len(r) < 2 for r in rows):
        raise UserError(f"{path}: every row needs at least 'path,label' (optionally ',split')")
    base = path.parent
    classes = sorted({r[1].strip() for r in rows})
    grouped: dict[str, tuple[list, list]] = {}
    for row in rows:
        split = row[2].strip() if len(row) > 2 and row[2].strip() else "train"
        split = "val" if split in VAL_FOLDERS else split  # valid, validation: as for folders
        if split not in SPLIT_NAMES:
            raise UserError(f"{path}: split '{split}' must be one of train, val (or valid, validation), test")
        file = row[0].strip()
        full = file if os.path.isabs(file) else str(base / file)
        grouped.setdefault(split, ([], []))
        grouped[split][0].append(full)
        grouped[split][1].append(classes.index(row[1].strip()))
    make = lambda s: FileImages(*grouped[s], classes, f"{spec}:{s}") if s in grouped else None  # noqa: E731
    train, val, test = make("train"), make("val"), make("test")
    if train is None:
        raise UserError(f"{path}: no rows for the train split")
    if val is None:
        keep, held = stratified_split(train.labels.numpy(), VAL_FRACTION, seed)
        train, val = train.subset(keep), train.subset(held)
    return DataSplits(spec, classes, train, val, test)


def with_val(spec: str, classes: list[str], sets: dict, seed: int) -> DataSplits:
    """DataSplits from ``{split: image set}``; without val, ``VAL_FRACTION`` of each class of train by ``seed``."""
    if sets.get("val") is None and sets.get("train") is not None:
        keep, held = stratified_split(sets["train"].labels.numpy(), VAL_FRACTION, seed)
        sets = {**sets, "train": sets["train"].subset(keep), "val": sets["train"].subset(held)}
    return DataSplits(spec, classes, sets.get("train"), sets.get("val"), sets.get("test"))


def _from_builtin(name: str) -> DataSplits:
    (xtr, ytr), (xte, yte), classes = LOADERS[name]()
    train = TensorImages(xtr, ytr, classes, f"{name}/train")
    keep, held = stratified_split(ytr.numpy(), BUILTIN_VAL_FRACTION, seed=0)
    return DataSplits(name, classes, train.subset(keep), train.subset(held), TensorImages(xte, yte, classes, f"{name}/test"))


def load_data(spec: str, seed: int = 0) -> DataSplits:
    if spec in BUILTINS:
        return _from_builtin(spec)
    if parquet.claims(spec):
        return with_val(spec, *parquet.read_spec(spec), seed)
    if is_shard_spec(spec):  # WebDataset-style tar shards (data/shards.py)
        return with_val(spec, *read_shards(spec), seed)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"data '{spec}' not found: give an existing folder, a .csv file, "
                        f"or one of {', '.join(BUILTINS)}")
    if path.is_dir():
        return _from_folder(spec, path, seed)
    if path.suffix.lower() == ".csv":
        return _from_csv(spec, path, seed)
    raise UserError(f"data '{spec}' is a file but not a .csv of path,label rows")
