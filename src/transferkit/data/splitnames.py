"""Which split a name stands for: one rule for every reader (folders, a CSV's split column,
parquet files, tar shards, the keys of a ``datasets.DatasetDict``).

The split is read from the *words* of a name, anywhere in it. A name is cut at every character
that is not a letter or a digit and where letters and digits meet (``imagenet1k-train-0001.tar``
-> imagenet, 1, k, train, 0001, tar), lower-cased, and the words mean:

- ``train``, ``training``: train
- ``val``, ``valid``, ``validation``, ``dev``: val
- ``test``, ``testing``: test

A name whose words name two splits (``train-val-000.tar``) is refused: either guess would train
on held-out images or score on training ones. A name with none is left to the reader: shards and
parquet files are then training data, and the split listing (``data check``, the training log)
says so. Top-level folders are stricter (specs.py): a folder is a split only when its whole name
is one of these words, so a class folder called ``test_tubes`` stays a class.
"""
from __future__ import annotations

import re
from pathlib import PurePath

from transferkit.core.errors import UserError

SPLITS = ("train", "val", "test")
WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
         "test": "test", "testing": "test"}
SAID = "train|training, val|valid|validation|dev, test|testing"  # the words, as messages list them
_WORD = re.compile(r"[a-z]+|[0-9]+")


def words(name: str) -> list[str]:
    return _WORD.findall(name.lower())


def splits_named(name: str) -> set[str]:
    """Every split the words of ``name`` name (none, one, or a conflict)."""
    return {WORDS[w] for w in words(name) if w in WORDS}


def split_in(name: str, where: str) -> str | None:
    """The split the words of ``name`` name, or None; a name naming two is a UserError about ``where``."""
    found = splits_named(name)
    if len(found) > 1:
        said = ", ".join(w for w in words(name) if w in WORDS)
        raise UserError(f"{where}: '{name}' names more than one split ({said}); rename it so that its name says one "
                        f"split ({SAID}), or none for training data")
    return next(iter(found), None)


def split_of_path(relative: PurePath, where: str) -> str | None:
    """The split of a file: from its own name, else from its folders (innermost first), as the Hugging
    Face Hub lays parquet files out (``data/train-00000-of-00002.parquet``, ``default/test/0000.parquet``).
    ``relative`` is the path below the data set's folder, so the folders above it never count."""
    for part in [relative.name, *reversed(relative.parts[:-1])]:
        split = split_in(part, f"{where}: {relative}")
        if split:
            return split
    return None


def whole_name(name: str) -> str | None:
    """The split a folder stands for: only when its whole name is one of the split words."""
    return WORDS.get(name.lower())


def listing(names: list[str], noun: str, shown: int = 3) -> str:
    """``3 shards (a-train-000.tar, a-train-001.tar, a-train-002.tar)``, the first ``shown`` named."""
    more = ", ..." if len(names) > shown else ""
    return f"{len(names)} {noun}{'' if len(names) == 1 else 's'} ({', '.join(names[:shown])}{more})"


def by_split(names: list[str], noun: str, split_of) -> tuple[dict, dict]:
    """``({split: [name]}, {split: listing line})`` for files whose split ``split_of(name)`` gives (None:
    no split word, so training data, and the line says so)."""
    grouped: dict[str, list] = {}
    unnamed: list[str] = []
    for name in names:
        split = split_of(name)
        grouped.setdefault(split or "train", []).append(name)
        if split is None:
            unnamed.append(name)
    lines, plain = {}, set(unnamed)
    for split, members in grouped.items():
        named = [n for n in members if n not in plain]
        parts = [listing(named, noun)] if named else []
        if split == "train" and unnamed:
            parts.append(f"{listing(unnamed, noun)} with no split word in the name, read as training data")
        lines[split] = "; ".join(parts)
    return grouped, lines
