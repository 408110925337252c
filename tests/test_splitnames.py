"""One split-naming rule for every reader (data/splitnames.py): the same images written as a folder,
a CSV, Hub-style parquet files, tar shards named ``name-train-000.tar`` and a ``datasets.DatasetDict``
give the same splits, the same pixels and the same scores; and each names where its splits come from."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_TRAIN, make_image_folder, need_extra
from PIL import Image

import transferkit as tk
from transferkit.cli import main
from transferkit.core.errors import UserError
from transferkit.data.imagesets import decode_splits
from transferkit.data.readers.pyobjects import dataset_splits
from transferkit.data.specs import load_data, split_lines

CLASSES = ("cat", "dog", "fox")
PALETTE = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]
PER_CLASS = {"train": 4, "val": 2, "test": 2}


def png(label: int, seed: int) -> bytes:
    """Lossless bytes, of a size each reader must resize the same way (not square, not 32 px)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(PALETTE[label]) + rng.normal(0, 30, (20, 28, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def pictures() -> dict:
    """``{split: [(file name, class index, png bytes)]}`` in the order a folder is read: by class, then name."""
    out, seed = {}, 0
    for split, n in PER_CLASS.items():
        out[split] = []
        for k in range(len(CLASSES)):
            for i in range(n):
                seed += 1
                out[split].append((f"{split}{i:02d}_{k}.png", k, png(k, seed)))
    return out


def write_folder(root: Path, data: dict) -> Path:
    for split, items in data.items():
        for name, k, raw in items:
            (root / split / CLASSES[k]).mkdir(parents=True, exist_ok=True)
            (root / split / CLASSES[k] / name).write_bytes(raw)
    return root


def write_csv(root: Path, data: dict) -> Path:
    (root / "img").mkdir(parents=True)
    rows, said = ["path,label,split"], {"train": "training", "val": "dev", "test": "Test"}  # words, not fixed names
    for split, items in data.items():
        for name, k, raw in items:
            (root / "img" / name).write_bytes(raw)
            rows.append(f"img/{name},{CLASSES[k]},{said[split]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def write_parquet(root: Path, data: dict) -> Path:
    """The Hub's layout: data/<split>-00000-of-00001.parquet, ClassLabel metadata as ``datasets`` writes it."""
    meta = {b"huggingface": json.dumps({"info": {"features": {
        "image": {"_type": "Image"}, "label": {"names": list(CLASSES), "_type": "ClassLabel"}}}}).encode()}
    (root / "data").mkdir(parents=True)
    for split, items in data.items():
        table = pa.table({"image": [{"bytes": raw, "path": name} for name, _, raw in items],
                          "label": pa.array([k for _, k, _ in items], pa.int64())}).replace_schema_metadata(meta)
        hub_name = {"train": "train", "val": "validation", "test": "test"}[split]
        pq.write_table(table, root / "data" / f"{hub_name}-00000-of-00001.parquet", row_group_size=5)
    return root


def write_shards(root: Path, data: dict) -> Path:
    """WebDataset shards named as timm's are (``imagenet1k-train-0000.tar``): the split after a prefix."""
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for split, items in data.items():
        halves = [items[: len(items) // 2], items[len(items) // 2:]] if split == "train" else [items]
        for number, part in enumerate(halves):
            with tarfile.open(root / f"name-{split}-{number:03d}.tar", "w") as tar:
                for name, k, raw in part:
                    for member, payload in ((f"{name[:-4]}.png", raw), (f"{name[:-4]}.cls", str(k).encode())):
                        info = tarfile.TarInfo(member)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
    return root


def dataset_dict(data: dict):
    datasets = need_extra("datasets", "hf")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    keys = {"train": "train", "val": "validation", "test": "test"}
    return datasets.DatasetDict({keys[split]: datasets.Dataset.from_dict(
        {"image": [{"bytes": raw, "path": None} for _, _, raw in items], "label": [k for _, k, _ in items]},
        features=features) for split, items in data.items()})


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    base, data = tmp_path_factory.mktemp("same"), pictures()
    return {"folder": str(write_folder(base / "folder", data)), "csv": str(write_csv(base / "csv", data)),
            "parquet": str(write_parquet(base / "hub", data)), "shards": str(write_shards(base / "shards", data)),
            "dict": dataset_dict(data)}


def splits_of(source):
    return dataset_splits(source) if not isinstance(source, str) else load_data(source)


def test_every_reader_gives_the_same_splits_and_pixels(written):
    decoded = {}
    for kind, source in written.items():
        splits = splits_of(source)
        assert splits.classes == list(CLASSES), kind
        sets = {s: getattr(splits, s) for s in PER_CLASS}
        assert {s: len(v) if v is not None else None for s, v in sets.items()} == \
            {s: n * len(CLASSES) for s, n in PER_CLASS.items()}, kind
        decoded[kind] = decode_splits(sets, 32, announce=False)
    for kind, sets in decoded.items():
        for split in PER_CLASS:
            assert torch.equal(sets[split].images, decoded["folder"][split].images), (kind, split)
            assert torch.equal(sets[split].labels, decoded["folder"][split].labels), (kind, split)


def test_the_same_scores_and_the_log_names_the_shards_of_each_split(written, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", written["shards"], "--out", str(out), *TINY_TRAIN]) == 0
    err = capsys.readouterr().err
    assert "split train: 12 images from 2 shards (name-train-000.tar, name-train-001.tar)" in err
    assert "split val: 6 images from 1 shard (name-val-000.tar)" in err
    assert "split test: 6 images from 1 shard (name-test-000.tar)" in err
    scores = {}
    for kind, source in written.items():
        for split in ("val", "test"):
            if kind == "dict":
                result = tk.evaluate(out, data=source, split=split)
            else:
                assert main(["eval", str(out), "--data", source, "--split", split, "--format", "json", "--quiet"]) == 0
                result = json.loads(capsys.readouterr().out)
            scores[kind, split] = {k: v for k, v in result.items() if k not in ("data", "run")}
    for (kind, split), result in scores.items():
        assert result["n"] == 6 and result == scores["folder", split], (kind, split)


def test_data_check_lists_the_files_of_each_split(written, capsys):
    assert main(["data", "check", written["parquet"]]) == 0
    out = capsys.readouterr().out
    assert "split train: 12 images from 1 parquet file (data/train-00000-of-00001.parquet)" in out
    assert "split val: 6 images from 1 parquet file (data/validation-00000-of-00001.parquet)" in out
    assert main(["data", "check", written["csv"], "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["sources"] == {
        "train": "12 images from the rows of labels.csv whose split is training",
        "val": "6 images from the rows of labels.csv whose split is dev",
        "test": "6 images from the rows of labels.csv whose split is Test"}


@pytest.mark.parametrize("name, split", [("imagenet-val-000000.tar", "val"), ("cifar10-test-0.tar", "test"),
                                         ("mydata_validation_3.tar", "val"), ("imagenet1k-train-0007.tar", "train"),
                                         ("DevSet-dev.tar", "val"), ("shapes_testing.tar", "test")])
def test_the_split_word_counts_anywhere_in_a_shard_name(tmp_path, name, split):
    root = write_shards(tmp_path / "shards", {"train": pictures()["train"]})
    (root / "name-train-001.tar").rename(root / name)
    splits = load_data(str(root))
    shards = {Path(p).parent.name for p in getattr(splits, split).paths}  # paths: SHARD.tar/KEY.png
    assert shards == ({name, "name-train-000.tar"} if split == "train" else {name})
    assert name in splits.origins[split]


def test_a_shard_without_a_split_word_is_training_data_and_said_so(tmp_path, capsys):
    root = write_shards(tmp_path / "shards", {"train": pictures()["train"]})
    (root / "name-train-001.tar").rename(root / "extra-001.tar")
    lines = split_lines(load_data(str(root)))
    assert "1 shard (extra-001.tar) with no split word in the name, read as training data" in lines[0]
    assert lines[0].startswith("split train: ") and "1 shard (name-train-000.tar)" in lines[0]


def test_a_name_with_two_split_words_is_refused(tmp_path, capsys):
    root = write_shards(tmp_path / "shards", {"train": pictures()["train"]})
    (root / "name-train-001.tar").rename(root / "name-train-val-001.tar")
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'name-train-val-001.tar' names more than one split (train, val)" in err[0]
    csv = write_csv(tmp_path / "csv", {"train": pictures()["train"]})
    csv.write_text(csv.read_text().replace(",training\n", ",train/test\n", 1))
    with pytest.raises(UserError, match="names more than one split"):
        load_data(str(csv))
    datasets = need_extra("datasets", "hf")
    both = dataset_dict({"train": pictures()["train"], "val": pictures()["val"]})
    with pytest.raises(UserError, match="validation and dev are both the val split"):
        dataset_splits(datasets.DatasetDict({**both, "dev": both["validation"]}))


def test_folders_are_split_only_by_their_whole_name(tmp_path):
    plain = make_image_folder(tmp_path / "lab", classes=("test_tubes", "beakers"))  # classes, not a test split
    assert load_data(str(plain)).classes == ["beakers", "test_tubes"]
    named = tmp_path / "named"
    for folder in ("Training", "dev", "Testing"):
        make_image_folder(named / folder, per_class=2)
    splits = load_data(str(named))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 4, 4)
    assert split_lines(splits)[1] == "split val: 4 images from folder dev/"
    odd = tmp_path / "odd"
    for folder in ("images_train", "images_val"):
        make_image_folder(odd / folder, per_class=2)
    with pytest.raises(UserError, match=r"images_train/ looks like a split folder.*it would be read as one class"):
        load_data(str(odd))
