"""Folder layouts: the usual names of the validation folder, and folders that are neither a split
nor a class, named by `data check` and `train` instead of being skipped without a word."""
from __future__ import annotations

import json

import pytest
from conftest import TINY_TRAIN, make_image_folder

from transferkit.cli import main
from transferkit.data.specs import load_data


def split_root(root, splits=("train", "valid", "test")):
    for i, split in enumerate(splits):
        make_image_folder(root / split, per_class=5 if split == "train" else 2, seed=i)
    return root


@pytest.mark.parametrize("name", ["val", "valid", "validation"])
def test_every_usual_validation_folder_name_is_the_val_split(tmp_path, name, capsys):
    root = split_root(tmp_path / "data", ("train", name, "test"))
    splits = load_data(str(root))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 4, 4)  # nothing split off train
    assert all(f"/{name}/" in p for p in splits.val.paths) and splits.ignored == {}
    assert main(["data", "check", str(root), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["val"] == {"cat": 2, "dog": 2} and report["clean"]


def test_two_validation_folders_are_a_user_error(tmp_path, capsys):
    root = split_root(tmp_path / "data", ("train", "val", "valid"))
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert "val/ and valid/" in err and len(err.strip().splitlines()) == 1


def test_folders_that_are_neither_split_nor_class_are_named(tmp_path, capsys):
    root = split_root(tmp_path / "data")
    make_image_folder(root / "extra", per_class=1)  # 2 images that belong to no split
    (root / "notes").mkdir()
    (root / ".cache").mkdir()  # hidden: not mentioned
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"not read: {root / 'extra'} (2 images)" in out and f"not read: {root / 'notes'} (0 images)" in out
    assert ".cache" not in out and "1 folder(s) of images not read" in out
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY_TRAIN]) == 0
    note = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("note: not read"))
    assert f"{root / 'extra'} (2 images)" in note and f"{root / 'notes'} (no images)" in note


def test_a_plain_class_folder_names_its_empty_folders(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data")
    (root / "unsorted").mkdir()
    assert main(["data", "check", str(root)]) == 0  # nothing left unread: still clean
    assert f"not read: {root / 'unsorted'} (0 images)" in capsys.readouterr().out


@pytest.mark.parametrize("stray", ["test", "Valid", "testing"])
def test_split_folders_without_train_are_not_read_as_classes(tmp_path, capsys, stray):
    root = make_image_folder(tmp_path / "data")
    make_image_folder(root / stray, per_class=1)
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{stray}/ but no train/ folder" in err and len(err.strip().splitlines()) == 1


def test_a_csv_says_valid_or_validation_too(tmp_path):
    root = make_image_folder(tmp_path / "data")
    rows = ["path,label,split"] + [f"{p.relative_to(root)},{p.parent.name},{split}"
                                   for p, split in zip(sorted(root.rglob("*.png")), ["train", "valid", "validation"] * 4)]
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    splits = load_data(str(root / "list.csv"))
    assert (len(splits.train), len(splits.val), splits.test) == (4, 8, None)
