"""Hugging Face data in: parquet files (``--data``) and ``datasets`` objects (``tk.fit``).

SPEC is a ``.parquet`` file or a folder of them in the Hub's layout (``data/train-00000-of-00002.parquet``,
``validation-*``, ``test-*``, or ``<config>/<split>/0000.parquet``), optionally followed by
``:image=COLUMN,label=COLUMN`` to name the columns. The split of a file comes from the words of its
name, else of its folders (data/splitnames.py: ``train``, ``validation``/``valid``/``val``/``dev``,
``test``, as the Hub reads them); a file with none is training data (the split listing says so),
and without a validation split 20% of each class of train is held out by ``--seed``, as for folders.

Columns, when not named: the image column is the one the metadata calls ``Image`` (else one
called image/img, else the only ``{bytes, path}`` struct); the label column is the one
``ClassLabel`` column (else one called label/labels). Images are encoded bytes, or paths
(relative to the parquet file); labels are ``ClassLabel`` indices (class names from the metadata
the ``datasets`` library stores in the file), other integers, or class names.

Image paths stay inside the data set's folder (SPEC's folder, or the folder of a single file):
an absolute path or a ``../`` that leaves it makes that row unusable, so a downloaded data set
cannot pull other local files into a run, its embeddings or its report's thumbnails, unless the
user trusts it with ``--allow-outside-paths``. The check is on the path as written (symbolic links
inside the folder are followed). ``datasets`` objects are the user's own: their paths are read.

Memory stays bounded: labels are read whole (one integer per row), images in record batches of
``BATCH_ROWS`` rows while they are decoded into the run's uint8 array, never the whole column.
pyarrow (and ``datasets`` for ``tk.fit``) are optional: ``pip install 'transferkit[hf]'``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePath

import numpy as np
import torch

from transferkit.core.errors import UserError
from transferkit.data.images import DEFAULT_MAX_PIXELS, BadImage, open_rgb, resize_center_crop, to_chw
from transferkit.data.imagesets import TensorImages
from transferkit.data.splitnames import by_split, split_in, split_of_path

IMAGE_COLUMNS = ("image", "img", "images", "picture", "photo")
LABEL_COLUMNS = ("label", "labels", "class", "target", "category")
OPTIONS = re.compile(r"(?:image|label)=[^,=:]+(?:,(?:image|label)=[^,=:]+)*")
BATCH_ROWS = 256  # images read (still encoded) at a time


def _pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading parquet needs pyarrow: pip install 'transferkit[hf]'") from None
    return pq


def split_spec(spec: str) -> tuple[str, dict]:
    """``path:image=a,label=b`` -> ``(path, {"image": "a", "label": "b"})``."""
    path, _, tail = spec.rpartition(":")
    if path and OPTIONS.fullmatch(tail):
        return path, dict(part.split("=", 1) for part in tail.split(","))
    return spec, {}


def _parquet_files(root: Path):
    """Parquet files up to two folders deep (the Hub's layouts: ``data/train-*.parquet``,
    ``<config>/<split>/0000.parquet``), hidden ones skipped, in no particular order."""
    for pattern in ("*.parquet", "*/*.parquet", "*/*/*.parquet"):
        for path in root.glob(pattern):
            if not any(part.startswith(".") for part in path.relative_to(root).parts):
                yield path


def claims(spec: str) -> bool:
    """Whether SPEC is parquet data: a .parquet file, or a folder holding parquet files."""
    path = Path(split_spec(spec)[0]).expanduser()
    if path.is_file():
        return path.suffix.lower() == ".parquet"
    return path.is_dir() and next(_parquet_files(path), None) is not None


class ParquetRows:
    """The rows of some parquet files, in order, as one table."""

    def __init__(self, files: list[Path], inside: Path | None = None):
        pq = _pyarrow()
        self.files, self.inside = files, inside  # inside: the folder image paths must stay in (None: anywhere)
        try:
            metas = [pq.ParquetFile(f) for f in files]
        except Exception as exc:  # ArrowInvalid and friends: not a parquet file
            raise UserError(f"cannot read parquet file: {exc}") from None
        self.starts = np.cumsum([0] + [m.metadata.num_rows for m in metas])
        self.schema = metas[0].schema_arrow
        for f, m in zip(files[1:], metas[1:]):
            if m.schema_arrow.names != self.schema.names:
                raise UserError(f"{f} has columns {m.schema_arrow.names}, {files[0]} has {self.schema.names}")
        metadata = (self.schema.metadata or {}).get(b"huggingface")
        self.features = json.loads(metadata).get("info", {}).get("features", {}) if metadata else {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def column(self, name: str) -> list:
        pq = _pyarrow()
        return [v for f in self.files for v in pq.read_table(f, columns=[name]).column(name).to_pylist()]

    def batches(self, name: str, rows: np.ndarray):
        """``(positions in rows, cells)`` for the sorted ``rows``, read one record batch at a time."""
        pq = _pyarrow()
        for k, path in enumerate(self.files):
            first, last = np.searchsorted(rows, [self.starts[k], self.starts[k + 1]])
            if first == last:
                continue  # none of this file's rows are wanted
            offset = int(self.starts[k])
            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=[name]):
                lo, hi = np.searchsorted(rows, [offset, offset + batch.num_rows])
                if hi > lo:
                    cells = batch.column(0).take((rows[lo:hi] - offset).tolist()).to_pylist()
                    yield np.arange(lo, hi), cells
                offset += batch.num_rows

    def locate(self, row: int) -> tuple[Path, int]:
        k = int(np.searchsorted(self.starts, row, side="right")) - 1
        return self.files[k], row - int(self.starts[k])

    def row_name(self, row: int) -> str:
        path, local = self.locate(row)
        return f"{path}#{local}"

    def base(self, row: int) -> Path:
        return self.locate(row)[0].parent  # image paths in a file are relative to it

    def fingerprint(self) -> str:
        stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in self.files]
        return hashlib.sha256(repr(stats).encode()).hexdigest()


class DatasetRows:
    """A ``datasets.Dataset``'s rows, read through Arrow (images stay encoded until decoded here)."""

    inside = None  # the user's own object: its image paths are read wherever they point

    def __init__(self, dataset, name: str):
        self.dataset, self.name = dataset, name
        self.schema = dataset.features.arrow_schema
        self.features = dataset.features.to_dict()

    def __len__(self) -> int:
        return len(self.dataset)

    def column(self, name: str) -> list:
        return self.dataset.with_format("arrow")[name].to_pylist()

    def batches(self, name: str, rows: np.ndarray):
        chosen = self.dataset.select(rows.tolist()).select_columns([name]).with_format("arrow")
        start = 0
        for table in chosen.iter(batch_size=BATCH_ROWS):
            yield np.arange(start, start + table.num_rows), table.column(0).to_pylist()
            start += table.num_rows

    def row_name(self, row: int) -> str:
        return f"{self.name}[{row}]"

    def base(self, row: int) -> Path:
        return Path.cwd()

    def fingerprint(self) -> str:
        return str(self.dataset._fingerprint)  # datasets' own content fingerprint


def outside(path: str, folder: Path) -> bool:
    """Whether ``path`` leads out of ``folder`` as written (``..`` and absolute paths count; symbolic
    links are not resolved: a data set's own links, such as the Hub cache's, stay usable)."""
    folder = os.path.abspath(folder)
    return os.path.commonpath([os.path.normpath(os.path.abspath(path)), folder]) != folder


def cell_source(cell, base: Path, name: str, inside: Path | None = None):
    """An image cell (``{bytes, path}``, bytes, or a path) as something ``open_rgb`` reads; a path that
    leaves the folder ``inside`` (when given) is refused unread."""
    data, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else \
        (cell, None) if isinstance(cell, (bytes, bytearray)) else (None, cell if isinstance(cell, str) else None)
    if data:
        return io.BytesIO(data)
    if path:
        full = os.path.normpath(os.path.join(base, path))  # what is checked is what is opened: ".." resolved here
        if inside is not None and outside(full, inside):
            raise BadImage(name, f"its image path '{path}' leads outside the data set's folder {inside}; "
                                 "pass --allow-outside-paths if you trust this data set")
        return full
    raise BadImage(name, "no image in this row")


def decode_cell(cell, base: Path, name: str, size: int, interpolation: str, max_pixels: int, inside=None):
    try:
        return to_chw(resize_center_crop(open_rgb(cell_source(cell, base, name, inside), max_pixels), size,
                                         interpolation))
    except BadImage as bad:
        return BadImage(name, bad.reason)  # named by file and row, not by a buffer in memory


class ArrowImages:
    """Rows of a parquet table or ``datasets.Dataset`` with labels; ``decode(size)`` turns them into
    TensorImages once, like FileImages."""

    def __init__(self, rows_of, column: str, rows: np.ndarray, labels, classes: list[str], name: str):
        self.source, self.column = rows_of, column
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.classes, self.name = list(classes), name

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index) -> "ArrowImages":
        index = np.asarray(list(index), dtype=np.int64)
        return ArrowImages(self.source, self.column, self.rows[index], self.labels[torch.as_tensor(index)],
                           self.classes, self.name)

    @property
    def paths(self) -> list[str]:
        """``file.parquet#row`` for each image: names it in errors, embeddings and reports."""
        return [self.source.row_name(int(r)) for r in self.rows]

    def encoded(self, max_pixels: int = DEFAULT_MAX_PIXELS):
        """``(name, readable source)`` for each image, undecoded (``data check``; cells are in memory already,
        so ``max_pixels`` has nothing to bound here)."""
        order = np.argsort(self.rows, kind="stable")
        for positions, cells in self.source.batches(self.column, self.rows[order]):
            for position, cell in zip(positions, cells):
                row = int(self.rows[order[position]])
                name = self.source.row_name(row)
                try:
                    yield name, cell_source(cell, self.source.base(row), name, self.source.inside)
                except BadImage as bad:
                    yield name, bad

    def decode(self, size: int, interpolation: str = "bilinear", skip_bad: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS, progress=None) -> tuple[TensorImages, list[BadImage]]:
        order = np.argsort(self.rows, kind="stable")  # files are read front to back
        out = np.empty((len(self.rows), 3, size, size), dtype=np.uint8)
        ok = np.zeros(len(self.rows), dtype=bool)

        def load(item):
            position, cell = item
            row = int(self.rows[order[position]])
            return order[position], decode_cell(cell, self.source.base(row), self.source.row_name(row), size,
                                                interpolation, max_pixels, self.source.inside)

        # PIL releases the GIL while decoding and resizing, so threads use every core.
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
            def results():
                for positions, cells in self.source.batches(self.column, self.rows[order]):
                    yield from pool.map(load, zip(positions, cells))
            bad = []
            for index, result in (progress(results(), total=len(self.rows)) if progress else results()):
                if isinstance(result, BadImage):
                    bad.append(result)
                else:
                    out[index], ok[index] = result, True
        if bad and not skip_bad:
            return None, bad
        images = torch.from_numpy(out if ok.all() else out[ok])
        paths = [self.source.row_name(int(r)) for r in self.rows[ok]]
        return TensorImages(images, self.labels[torch.from_numpy(ok)], self.classes, self.name, paths), bad

    def fingerprint(self, labels: bool = True) -> str:
        digest = hashlib.sha256(f"{self.source.fingerprint()}|{self.column}".encode())
        digest.update(self.rows.tobytes())
        if labels:
            digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()[:16]


def pick_columns(source, options: dict, where: str) -> tuple[str, str]:
    """The image and label columns: as named in SPEC, else found by the metadata or by name."""
    names, features = source.schema.names, source.features
    how = f"name them: {where}:image=COLUMN,label=COLUMN" if where else "pick them with dataset.select_columns([...])"

    def typed(kind):
        return [c for c in names if (features.get(c) or {}).get("_type") == kind]

    def is_struct_image(c):
        kind = source.schema.field(c).type
        return getattr(kind, "num_fields", 0) and {kind.field(i).name for i in range(kind.num_fields)} >= {"bytes", "path"}

    image = options.get("image") or next(iter(typed("Image") or [c for c in IMAGE_COLUMNS if c in names] or
                                              [c for c in names if is_struct_image(c)][:1]), None)
    labelled = typed("ClassLabel")
    label = options.get("label") or (labelled[0] if len(labelled) == 1 else
                                     next((c for c in LABEL_COLUMNS if c in (labelled or names)), None))
    for role, column in (("image", image), ("label", label)):
        if column is None:
            extra = f" (label columns: {', '.join(labelled)})" if role == "label" and labelled else ""
            raise UserError(f"{where or 'the dataset'}: which column holds the {role}s? Columns: {', '.join(names)}"
                            f"{extra}; {how}")
        if column not in names:
            raise UserError(f"{where or 'the dataset'} has no column '{column}'; columns: {', '.join(names)}")
    return image, label


def _classes_and_labels(sources: dict, column: str, where: str) -> tuple[list[str], dict]:
    """Class names (ClassLabel's, else the integers or strings found) and each split's label indices."""
    raw = {split: source.column(column) for split, source in sources.items()}
    first = next(iter(sources.values()))
    names = (first.features.get(column) or {}).get("names")
    values = [v for labels in raw.values() for v in labels]
    if any(v is None for v in values):
        raise UserError(f"{where}: some rows have no {column}")
    if all(isinstance(v, str) for v in values):
        reference = raw.get("train") or values
        classes = sorted(set(reference))
        unknown = sorted(set(values) - set(classes))
        if unknown:
            raise UserError(f"{where}: labels {unknown[:5]} of other splits are not among the training classes")
        lookup = {c: i for i, c in enumerate(classes)}
        return classes, {s: np.array([lookup[v] for v in labels], dtype=np.int64) for s, labels in raw.items()}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UserError(f"{where}: the {column} column holds neither class indices nor class names")
    classes = list(names) if names else [str(i) for i in range(max(values) + 1)]
    if min(values) < 0 or max(values) >= len(classes):
        unlabelled = sum(v < 0 for v in values)
        detail = f"{unlabelled} rows are unlabelled (-1)" if unlabelled else f"labels must be 0..{len(classes) - 1}"
        raise UserError(f"{where}: {detail}; give labelled rows only")
    return classes, {s: np.array(labels, dtype=np.int64) for s, labels in raw.items()}


def tables(spec: str, sources: dict, options: dict, where: str) -> tuple[list[str], dict]:
    """``(classes, {split: ArrowImages})`` from ``{split: rows}``, one class list for every split."""
    image, label = pick_columns(next(iter(sources.values())), options, where)
    classes, labels = _classes_and_labels(sources, label, where or "the dataset")
    return classes, {s: ArrowImages(src, image, np.arange(len(src)), labels[s], classes, f"{spec}/{s}")
                     for s, src in sources.items()}


def read_spec(spec: str, allow_outside_paths: bool = False) -> tuple[list[str], dict, dict]:
    """``(classes, {split: ArrowImages}, {split: which files})`` of a parquet SPEC (see the module's docstring)."""
    location, options = split_spec(spec)
    root = Path(location).expanduser()
    folder = root.parent if root.is_file() else root
    files = {str(f.relative_to(folder)): f for f in ([root] if root.is_file() else sorted(_parquet_files(root)))}
    grouped, origins = by_split(list(files), "parquet file", lambda name: split_of_path(PurePath(name), location))
    inside = None if allow_outside_paths else folder
    classes, sets = tables(spec, {split: ParquetRows([files[n] for n in names], inside) for split, names in grouped.items()},
                           options, location)
    return classes, sets, origins


def is_hf_dataset(obj) -> bool:
    """A ``datasets.Dataset`` or ``DatasetDict`` (checked by type, so ``datasets`` is never imported here)."""
    return type(obj).__module__.startswith("datasets.") and type(obj).__name__ in ("Dataset", "DatasetDict")


def hf_sets(train, val=None, test=None) -> tuple[str, list[str], dict, dict]:
    """``(spec, classes, {split: ArrowImages}, {split: where from})`` from ``datasets`` objects: a Dataset
    per split, or a DatasetDict whose keys name the splits (the words of data/splitnames.py)."""
    if type(train).__name__ == "DatasetDict":
        keys = {k: split_in(k, "DatasetDict") for k in train}
        unknown = [k for k, s in keys.items() if s is None]
        if unknown or val is not None or test is not None:
            raise UserError(f"a DatasetDict brings its splits (train, validation, test){'; it also has ' + ', '.join(unknown) if unknown else ''}: "
                            "pass DatasetDict({...}) with those only, and no val=/test=")
        for split in set(keys.values()):
            if len(same := [k for k, s in keys.items() if s == split]) > 1:
                raise UserError(f"DatasetDict keys {' and '.join(same)} are both the {split} split; keep one (or merge them)")
        given = {keys[k]: d for k, d in train.items()}
        origins = {keys[k]: f"DatasetDict['{k}']" for k in train}
    else:
        given = {s: d for s, d in (("train", train), ("val", val), ("test", test)) if d is not None}
        origins = {s: f"the Dataset given as {s}" for s in given}
    for split, dataset in given.items():
        if not is_hf_dataset(dataset) or type(dataset).__name__ != "Dataset":
            raise UserError(f"{split}: give a datasets.Dataset like the others, not a {type(dataset).__name__}")
    spec = "python:datasets.Dataset"
    classes, sets = tables(spec, {s: DatasetRows(d, s) for s, d in given.items()}, {}, "")
    return spec, classes, sets, origins
