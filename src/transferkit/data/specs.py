"""``--data SPEC`` -> train/val/test image sets with one class list.

SPEC is a built-in name (fashion-mnist, cifar10, digits), a CSV of ``path,label[,split]``, a
folder: ``root/<class>/<image>`` (split into train/val by ``--seed``, 20% val per class) or
``root/{train,val,test}/<class>/<image>``, parquet data from the Hugging Face Hub (readers/parquet.py), or
WebDataset-style tar shards (``shards/train-{000000..000099}.tar``, readers/shards.py).
Splits are named by one rule (splitnames.py): the words of a CSV's split value, a parquet file's
or a shard's name; a top-level folder only by its whole name (``train|training``,
``val|valid|validation|dev``, ``test|testing``, any case), so that a class called ``test_tubes``
stays a class, and a folder whose name only contains a split word but which holds class folders
(``images_train/cat/``) is refused rather than read as one class. ``DataSplits.origins`` says
where each split's images come from (``split_lines``: ``data check`` and the training log).
Hidden files and folders and empty folders never become classes. A top-level folder that is
neither a split nor a class is not read, and ``DataSplits.ignored`` names it so that ``data check``
and ``train`` can say so. Built-ins hold out a fixed 10% of their training split for validation,
so the val and test sets do not move with ``--seed``. The image paths of a CSV stay inside its
folder unless ``allow_outside_paths`` (as a parquet file's, readers/parquet.py).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferkit.core.errors import UserError
from transferkit.data.images import is_image_file
from transferkit.data.imagesets import FileImages, TensorImages
from transferkit.data.readers import parquet
from transferkit.data.readers.builtin_sets import BUILTINS, LOADERS
from transferkit.data.readers.shards import is_shard_spec, read_shards
from transferkit.data.splitnames import SAID, SPLITS, split_in, splits_named, whole_name

SPLIT_NAMES = SPLITS
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
    origins: dict = field(default_factory=dict)  # split -> where its images come from (split_lines)

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


def _split_folders(root: Path, subdirs: list[str]) -> dict[str, str]:
    """``{split: folder name}`` of the top-level folders whose whole name is a split word; refuses two
    folders of one split (val/ and valid/)."""
    found: dict[str, list[str]] = {}
    for name in subdirs:
        if split := whole_name(name):
            found.setdefault(split, []).append(name)
    for split, names in found.items():
        if len(names) > 1:
            what = "validation" if split == "val" else split
            raise UserError(f"{root} has both {' and '.join(f'{n}/' for n in names)}; all of them would be the {what} "
                            "split: keep one (or merge them)")
    return {split: names[0] for split, names in found.items()}


def _holds_class_folders(folder: Path) -> bool:
    """No image of its own, but visible sub-folders: the shape of a split folder, not of a class."""
    entries = list(os.scandir(folder))
    return not any(e.is_file() and is_image_file(e.name) for e in entries) and \
        any(e.is_dir() and _visible(e.name) for e in entries)


def _from_folder(spec: str, root: Path, seed: int) -> DataSplits:
    subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and _visible(e.name))
    folders = _split_folders(root, subdirs)
    if "train" in folders:
        train_map = scan_class_folders(root / folders["train"])
        if not train_map:
            raise UserError(f"{root}/{folders['train']} has no class folders with images in them")
        classes = sorted(train_map)
        sets = {s: (_file_set(scan_class_folders(root / folders[s]), classes, f"{spec}/{folders[s]}")
                    if s in folders else None) for s in ("val", "test")}
        train = _file_set(train_map, classes, f"{spec}/{folders['train']}")
        origins = {s: f"folder {folders[s]}/" for s in folders}
        if sets["val"] is None or len(sets["val"]) == 0:
            keep, held = stratified_split(train.labels.numpy(), VAL_FRACTION, seed)
            train, sets["val"] = train.subset(keep), train.subset(held)
            origins["val"] = held_out_from("train", seed)
        ignored = {str(root / d): count_images(root / d) for d in subdirs if d not in folders.values()}
        return DataSplits(spec, classes, train, sets["val"], sets["test"], ignored, origins)
    if folders:
        # Read as classes they would mix the splits into one another: refuse rather than guess.
        raise UserError(f"{root} has {', '.join(d + '/' for d in folders.values())} but no train/ folder, so they would "
                        f"be read as classes; put the training images in {root}/train/<class>/ (split folders are "
                        f"{SAID}), or rename the folder if it is a class")
    shaped = [d for d in subdirs if splits_named(d) and _holds_class_folders(root / d)]
    if shaped:
        raise UserError(f"{root / shaped[0]}/ looks like a split folder: its name says "
                        f"{'/'.join(sorted(splits_named(shaped[0])))} and its images sit in sub-folders, so it would be "
                        f"read as one class; name split folders by the split alone ({SAID}), or, if it is a class, "
                        "rename it")
    by_class = scan_class_folders(root)
    if len(by_class) < 2:
        raise UserError(f"{root} needs at least two class folders with images (root/<class>/<image>); "
                        f"found {len(by_class)}")
    classes = sorted(by_class)
    everything = _file_set(by_class, classes, spec)
    keep, held = stratified_split(everything.labels.numpy(), VAL_FRACTION, seed)
    ignored = {str(root / d): 0 for d in subdirs if d not in by_class}  # no images: never a class
    origins = {"train": f"the class folders of {root}", "val": held_out_from("train", seed)}
    return DataSplits(spec, classes, everything.subset(keep), everything.subset(held), None, ignored, origins)


def held_out_from(split: str, seed: int) -> str:
    return f"{split}, held out by --seed {seed} ({VAL_FRACTION:.0%} of each class)"


def split_sources(splits: DataSplits) -> dict[str, str]:
    """``{split: "N images from <files or folders>"}``: which files went to which split."""
    return {name: f"{len(imageset):,} images from {splits.origins[name]}" for name in SPLIT_NAMES
            if (imageset := getattr(splits, name)) is not None and name in splits.origins}


def split_lines(splits: DataSplits) -> list[str]:
    """One line per split saying where its images come from (``data check`` and the training log)."""
    return [f"split {name}: {text}" for name, text in split_sources(splits).items()]


def ignored_note(splits: DataSplits) -> str | None:
    """One line naming the top-level folders that were not read (for ``train`` and ``lr-find``)."""
    if not splits.ignored:
        return None
    listed = ", ".join(f"{p} ({n} images)" if n else f"{p} (no images)" for p, n in splits.ignored.items())
    return f"note: not read, neither a split ({SAID}) nor a class folder with images: {listed}"


def _from_csv(spec: str, path: Path, seed: int, allow_outside_paths: bool = False) -> DataSplits:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() == "path":
        rows = rows[1:]
    if not rows or any(len(r) < 2 for r in rows):
        raise UserError(f"{path}: every row needs at least 'path,label' (optionally ',split')")
    base = path.parent
    classes = sorted({r[1].strip() for r in rows})
    grouped: dict[str, tuple[list, list]] = {}
    values: dict[str, set] = {}  # split -> the split column's values that named it
    for row in rows:
        value = row[2].strip() if len(row) > 2 else ""
        split = split_in(value, str(path)) if value else "train"
        if split is None:
            raise UserError(f"{path}: split '{value}' names no split; use {SAID} (or nothing: train)")
        file = row[0].strip()
        full = os.path.normpath(os.path.join(base, file))  # what is checked is what is opened (an absolute path stays)
        if not allow_outside_paths and parquet.outside(full, base):
            raise UserError(f"{path}: the image path '{file}' leads outside the CSV's folder {base}; move the CSV to "
                            "a folder holding all its images, or pass --allow-outside-paths if you trust this list")
        grouped.setdefault(split, ([], []))
        grouped[split][0].append(full)
        grouped[split][1].append(classes.index(row[1].strip()))
        values.setdefault(split, set()).add(value or "(none)")
    make = lambda s: FileImages(*grouped[s], classes, f"{spec}:{s}") if s in grouped else None  # noqa: E731
    if "train" not in grouped:
        raise UserError(f"{path}: no rows for the train split")
    origins = {s: f"the rows of {path.name} whose split is {', '.join(sorted(v))}" for s, v in values.items()}
    return with_val(spec, classes, {s: make(s) for s in SPLIT_NAMES}, origins, seed)


def with_val(spec: str, classes: list[str], sets: dict, origins: dict, seed: int) -> DataSplits:
    """DataSplits from ``{split: image set}``; without val, ``VAL_FRACTION`` of each class of train by ``seed``."""
    if sets.get("val") is None and sets.get("train") is not None:
        keep, held = stratified_split(sets["train"].labels.numpy(), VAL_FRACTION, seed)
        sets = {**sets, "train": sets["train"].subset(keep), "val": sets["train"].subset(held)}
        origins = {**origins, "val": held_out_from("train", seed)}
    return DataSplits(spec, classes, sets.get("train"), sets.get("val"), sets.get("test"), origins=origins)


def _from_builtin(name: str) -> DataSplits:
    (xtr, ytr), (xte, yte), classes = LOADERS[name]()
    train = TensorImages(xtr, ytr, classes, f"{name}/train")
    keep, held = stratified_split(ytr.numpy(), BUILTIN_VAL_FRACTION, seed=0)
    origins = {"train": f"{name}'s training split, less a fixed {BUILTIN_VAL_FRACTION:.0%} of each class",
               "val": f"that fixed {BUILTIN_VAL_FRACTION:.0%} of {name}'s training split", "test": f"{name}'s test split"}
    return DataSplits(name, classes, train.subset(keep), train.subset(held), TensorImages(xte, yte, classes, f"{name}/test"),
                      origins=origins)


def load_data(spec: str, seed: int = 0, allow_outside_paths: bool = False) -> DataSplits:
    """The splits of ``spec``; ``allow_outside_paths``: follow a parquet file's or a CSV's image paths that
    lead out of its folder (absolute paths, ``../``)."""
    if spec in BUILTINS:
        return _from_builtin(spec)
    if parquet.claims(spec):
        return with_val(spec, *parquet.read_spec(spec, allow_outside_paths), seed)
    if is_shard_spec(spec):  # WebDataset-style tar shards (data/readers/shards.py)
        return with_val(spec, *read_shards(spec), seed)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"data '{spec}' not found: give an existing folder, a .csv file, "
                        f"or one of {', '.join(BUILTINS)}")
    if path.is_dir():
        return _from_folder(spec, path, seed)
    if path.suffix.lower() == ".csv":
        return _from_csv(spec, path, seed, allow_outside_paths)
    raise UserError(f"data '{spec}' is a file but not a .csv of path,label rows")
