"""Hugging Face data in: parquet files in the Hub's layout for ``--data``, ``datasets`` objects for ``tk.fit``."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import need_extra
from PIL import Image

import transferkit as tk
from transferkit.cli import main
from transferkit.core.errors import UserError
from transferkit.data.check import check_data
from transferkit.data.images import load_uint8
from transferkit.data.readers import parquet
from transferkit.data.specs import load_data
from transferkit.runs.report import load_thumbnails

TINY = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--quiet"]
PALETTE = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]


def png(label: int, seed: int, size=(30, 20)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(PALETTE[label]) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def hub_metadata(features: dict) -> dict:
    """Schema metadata as the ``datasets`` library writes it."""
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def write_split(path: Path, labels: list[int], seed: int, names=("cat", "dog")) -> Path:
    """A Hub-style parquet file: image {bytes, path} and a ClassLabel label."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [{"bytes": png(y, seed + i), "path": f"{seed + i}.png"} for i, y in enumerate(labels)]
    table = pa.table({"image": images, "label": pa.array(labels, pa.int64())})
    table = table.replace_schema_metadata(hub_metadata({"image": {"_type": "Image"},
                                                        "label": {"names": list(names), "_type": "ClassLabel"}}))
    pq.write_table(table, path, row_group_size=4)
    return path


@pytest.fixture
def hub_folder(tmp_path) -> Path:
    root = tmp_path / "pets"
    write_split(root / "data" / "train-00000-of-00002.parquet", [0, 1] * 5, seed=0)
    write_split(root / "data" / "train-00001-of-00002.parquet", [1, 0] * 5, seed=100)
    write_split(root / "data" / "test-00000-of-00001.parquet", [0, 1, 1, 0, 0, 1], seed=200)
    (root / "README.md").write_text("---\nlicense: mit\n---\n")
    return root


def test_a_hub_folder_is_data(hub_folder, tmp_path, capsys):
    splits = load_data(str(hub_folder), seed=0)
    assert splits.classes == ["cat", "dog"] and len(splits.train) + len(splits.val) == 20 and len(splits.test) == 6
    assert check_data(str(hub_folder))["clean"]
    out = tmp_path / "run"
    assert main(["train", "--data", str(hub_folder), "--out", str(out), *TINY]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["classes"] == ["cat", "dog"] and run["metrics"]["split"] == "test" and run["metrics"]["n"] == 6
    capsys.readouterr()
    assert main(["eval", str(out), "--format", "json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 6
    thumbs, problem = load_thumbnails(str(hub_folder), 0, "test", [0, 5])
    assert problem is None and sorted(thumbs) == [0, 5]


def test_decoded_rows_equal_decoded_files_and_memory_holds_one_batch(hub_folder, tmp_path, monkeypatch):
    test = load_data(str(hub_folder)).test
    seen = []
    original = parquet.ParquetRows.batches

    def spy(self, name, rows):
        for positions, cells in original(self, name, rows):
            seen.append(len(cells))
            yield positions, cells
    monkeypatch.setattr(parquet, "BATCH_ROWS", 4)
    monkeypatch.setattr(parquet.ParquetRows, "batches", spy)
    decoded, bad = test.subset([5, 0, 3, 1, 2, 4]).decode(24)
    assert not bad and max(seen) <= 4 and sum(seen) == 6
    for k, row in enumerate([5, 0, 3]):
        file = tmp_path / f"{row}.png"
        file.write_bytes(png([0, 1, 1, 0, 0, 1][row], 200 + row))
        assert torch.equal(decoded.images[k], torch.from_numpy(load_uint8(str(file), 24)))
    assert decoded.paths[0].endswith("test-00000-of-00001.parquet#5")


def test_columns_named_in_the_spec_and_string_labels(tmp_path):
    path = tmp_path / "shapes.parquet"
    labels = ["red", "green", "blue"] * 4
    table = pa.table({"picture_bytes": [png(["red", "green", "blue"].index(y), i) for i, y in enumerate(labels)],
                      "fine_label": labels, "coarse_label": ["warm" if y == "red" else "cold" for y in labels]})
    pq.write_table(table, path)
    with pytest.raises(UserError, match="which column holds the images.*image=COLUMN,label=COLUMN"):
        load_data(str(path))
    splits = load_data(f"{path}:image=picture_bytes,label=fine_label", seed=1)
    assert splits.classes == ["blue", "green", "red"] and splits.test is None and len(splits.val) == 3
    coarse = load_data(f"{path}:label=coarse_label,image=picture_bytes")
    assert coarse.classes == ["cold", "warm"]
    with pytest.raises(UserError, match="no column 'nope'"):
        load_data(f"{path}:image=picture_bytes,label=nope")


def test_image_paths_relative_to_the_file_and_a_broken_row_named(tmp_path, capsys):
    root = tmp_path / "photos"
    (root / "img").mkdir(parents=True)
    paths, labels = [], []
    for i in range(8):
        (root / "img" / f"{i}.png").write_bytes(png(i % 2, i))
        paths.append(f"img/{i}.png")
        labels.append(i % 2)
    paths[3] = "img/missing.png"
    pq.write_table(pa.table({"image": paths, "label": labels}), root / "train.parquet")
    report = check_data(str(root))
    assert not report["clean"] and [b["path"] for b in report["bad_files"]] == [f"{root / 'train.parquet'}#3"]
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "1 unusable image" in err[-1] and "train.parquet#3" in err[-1] and "--skip-bad" in err[-1]


def test_unlabelled_rows_and_missing_train_split_are_user_errors(tmp_path, capsys):
    write_split(tmp_path / "a" / "train-00000-of-00001.parquet", [0, -1, 1, 0], seed=0)
    with pytest.raises(UserError, match="1 rows are unlabelled"):
        load_data(str(tmp_path / "a"))
    only_test = write_split(tmp_path / "b" / "test-00000-of-00001.parquet", [0, 1, 0, 1], seed=0)
    assert load_data(str(only_test)).train is None and len(load_data(str(only_test)).test) == 4
    code = main(["train", "--data", str(only_test), "--out", str(tmp_path / "run"), *TINY])
    assert code == 2 and "has no 'train' split" in capsys.readouterr().err


def test_fit_takes_a_datasets_dataset(tmp_path):
    datasets = need_extra("datasets", "hf")
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["cat", "dog", "fox"])})

    def make(n, seed):
        rows = {"img": [Image.open(io.BytesIO(png(i % 3, seed + i))) for i in range(n)], "y": [i % 3 for i in range(n)]}
        return datasets.Dataset.from_dict(rows, features=features)
    train, test = make(15, 0), make(6, 100)
    result = tk.fit(train, test=test, model="resnet18", weights="none", image_size=32, epochs=1, batch_size=4,
                    quiet=True, out=str(tmp_path / "run"))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["classes"] == ["cat", "dog", "fox"] and result["split"] == "test" and result["metrics"]["n"] == 6
    assert tk.evaluate(result["run_dir"], data=test)["n"] == 6
    both = parquet.hf_sets(datasets.DatasetDict({"train": train.shuffle(seed=0).select(range(9)), "validation": test}))
    assert sorted(both[2]) == ["train", "val"] and len(both[2]["train"]) == 9
    shuffled = both[2]["train"].decode(16)[0]
    expected = [train.shuffle(seed=0)[i]["y"] for i in range(9)]
    assert shuffled.labels.tolist() == expected
