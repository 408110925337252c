"""WebDataset-style tar shards as a data source: ``--data 'shards/train-{000000..000099}.tar'``.

The format large image sets ship in (WebDataset, ``img2dataset``): plain POSIX tar files in which
one sample is the set of members sharing a key (the path up to the first "." of the file name),
e.g. ``000123.jpg`` + ``000123.cls``. Each sample needs one image member (.jpg .jpeg .png .webp
.bmp .gif .tif .tiff .ppm) and one label member, looked for in this order:
- ``.cls``: the class index as text (``3``);
- ``.json``: a number or a name, or an object with one under "label", "cls", "class" or "class_name";
- ``.txt``: the class name.
Class names come from ``classes.txt`` (one per line, in index order) beside the shards, else from
the labels themselves: names sorted (as folders are), or indices ``0..K-1`` named by their numbers.

Splits: every shard the spec matches belongs to the split a word of its file name names, anywhere
in it (``imagenet1k-train-0000.tar``, ``cifar10-test-0.tar``, ``mydata_validation_3.tar``; the one
rule of data/splitnames.py), else a word of its folders below the shards' common folder; a shard
with no split word is training data, and the split listing says so. A name naming two splits is
refused. A folder stands for all its ``*.tar`` files. Without validation shards, 20% of each
class is held out by ``--seed``, as for a single image folder.

Safety: members are only ever read as bytes and decoded as images, numbers, text or JSON. Nothing
is extracted to disk, and members such as ``.pyd``/``.pkl``/``.pth`` (which ``webdataset``'s
default decoders unpickle) are never read at all. The shards are indexed once per run (headers
only, plus the small label members); images are read at their byte offsets when the decoded
cache is built, and each torchrun process decodes a contiguous share of the samples, so it
reads its own shards.
"""
from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from pathlib import Path, PurePath

from braceexpand import braceexpand

from transferkit.core.errors import UserError
from transferkit.data.imagesets import FileImages
from transferkit.data.splitnames import by_split, split_of_path

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
LABEL_EXTENSIONS = ("cls", "json", "txt")  # the first one a sample has is its label
LABEL_KEYS = ("label", "cls", "class", "class_name")
MAX_LABEL_BYTES = 1 << 16
CLASSES_FILE = "classes.txt"
_KEY = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]*)$")  # WebDataset's rule: key up to the first "." of the name


def is_shard_spec(spec: str) -> bool:
    """A tar file or pattern of them (braces, globs), or a folder holding ``*.tar`` files and no sub-folders."""
    path = Path(spec).expanduser()
    if not path.is_dir():
        return ".tar" in spec.lower()
    entries = list(os.scandir(path))
    return any(e.name.endswith(".tar") for e in entries) and not any(e.is_dir() for e in entries)


def expand(spec: str) -> list[Path]:
    """The shard files of a spec: brace expansion (``{000000..000099}``), then globs, sorted."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return sorted(path.glob("*.tar"))
    found, missing = [], []
    for pattern in braceexpand(str(path)):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else ([pattern] if os.path.exists(pattern) else [])
        if not matches:
            missing.append(pattern)
        found += matches
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"data '{spec}': no shard {missing[0]}{more}; check the pattern (e.g. 'shards/train-{{000000..000099}}.tar')")
    return sorted({Path(f) for f in found})


def shard_splits(spec: str, shards: list[Path]) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """``({split: [shard]}, {split: listing line})``: each shard's split from the words of its path below
    the shards' common folder (data/splitnames.py)."""
    base = Path(os.path.commonpath([str(s.parent) for s in shards]))
    relative = {str(s.relative_to(base)): s for s in shards}
    grouped, lines = by_split(list(relative), "shard", lambda r: split_of_path(PurePath(r), f"data '{spec}'"))
    return {split: [relative[r] for r in names] for split, names in grouped.items()}, lines


def _label(shard: Path, key: str, ext: str, data: bytes):
    """An int index or a str name from a label member."""
    where = f"{shard}: sample '{key}'"
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UserError(f"{where}: its .{ext} label is not UTF-8 text") from None
    if ext == "cls":
        if not re.fullmatch(r"\d+", text):
            raise UserError(f"{where}: its .cls label must be a class index (a whole number), got '{text[:40]}'")
        return int(text)
    if ext == "txt":
        if not text:
            raise UserError(f"{where}: its .txt label is empty")
        return text
    try:
        value = json.loads(text)
    except ValueError:
        raise UserError(f"{where}: its .json label is not valid JSON") from None
    if isinstance(value, dict):
        value = next((value[k] for k in LABEL_KEYS if k in value), None)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, int) and value < 0):
        raise UserError(f"{where}: its .json label needs a class index or name (alone, or under one of "
                        f"{', '.join(LABEL_KEYS)})")
    return value


def index_shard(shard: Path) -> list[tuple[str, tuple, object]]:
    """``[(name, (shard, offset, size), label)]`` for the samples of one shard, in order. Only tar headers
    and label members are read; image bytes are left where they are."""
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                match = _KEY.match(member.name)
                if not member.isfile() or not match or os.path.basename(member.name).startswith("__"):
                    continue
                key, ext = match.group(1), match.group(2).lower()
                sample = samples.setdefault(key, {})
                if ext in IMAGE_EXTENSIONS and "image" not in sample:
                    sample["image"] = (member.name, member.offset_data, member.size)
                elif ext in LABEL_EXTENSIONS and ext not in sample and member.size <= MAX_LABEL_BYTES:
                    sample[ext] = tar.extractfile(member).read()
    except tarfile.ReadError as exc:
        raise UserError(f"{shard} is not a readable uncompressed tar file ({exc}); compressed shards cannot be "
                        "read at random offsets: decompress them (e.g. gunzip)") from None
    out = []
    for key, sample in samples.items():
        label_ext = next((ext for ext in LABEL_EXTENSIONS if ext in sample), None)
        if "image" not in sample or label_ext is None:
            missing = "image member (" + ", ".join(f".{e}" for e in IMAGE_EXTENSIONS[:4]) + ", ...)" if "image" not in sample \
                else "label member (.cls, .json or .txt)"
            raise UserError(f"{shard}: sample '{key}' has no {missing}")
        name, offset, size = sample["image"]
        out.append((f"{shard}/{name}", (str(shard), offset, size), _label(shard, key, label_ext, sample[label_ext])))
    return out


def _class_names(shards: list[Path], labels: list) -> list[str]:
    classes_file = shards[0].parent / CLASSES_FILE
    kinds = {type(v) for v in labels}
    if len(kinds) > 1:
        raise UserError(f"shards in {shards[0].parent} mix class indices (.cls) and class names (.txt/.json); use one kind")
    if classes_file.is_file():
        names = [line.strip() for line in classes_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        unknown = sorted({v for v in labels if (v >= len(names) if isinstance(v, int) else v not in names)}, key=str)
        if unknown:
            raise UserError(f"labels {unknown[:5]} are not in {classes_file} ({len(names)} classes)")
        return names
    if kinds == {int}:
        return [str(i) for i in range(max(labels) + 1)]
    return sorted(set(labels))


def read_shards(spec: str) -> tuple[list[str], dict, dict]:
    """``(class names, {split: FileImages}, {split: which shards})`` of the samples in the shards of ``spec``."""
    shards = expand(spec)
    if not shards:
        raise UserError(f"data '{spec}': no .tar shards found")
    grouped, origins = shard_splits(spec, shards)
    samples_of = {split: [sample for shard in group for sample in index_shard(shard)] for split, group in grouped.items()}
    if not samples_of.get("train"):
        raise UserError(f"data '{spec}': no training samples (shards with train or training in their names, or "
                        "with no split word)")
    classes = _class_names(shards, [label for samples in samples_of.values() for _, _, label in samples])
    index = {name: i for i, name in enumerate(classes)}
    sets = {}
    for split, samples in samples_of.items():
        labels = [label if isinstance(label, int) else index[label] for _, _, label in samples]
        sets[split] = FileImages([name for name, _, _ in samples], labels, classes, f"{spec}:{split}",
                                 [member for _, member, _ in samples])
    return classes, sets, origins
