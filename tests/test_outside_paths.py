"""Image paths written in a data set (parquet cells, CSV rows) stay inside the data set's folder
unless the user passes --allow-outside-paths: a downloaded data set cannot pull other local files
into training, embeddings, or the report's thumbnails."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY_TRAIN
from PIL import Image

from transferkit.cli import main
from transferkit.core.errors import UserError
from transferkit.data.check import check_data
from transferkit.data.imagesets import decode_splits
from transferkit.data.specs import load_data
from transferkit.runs.report import load_thumbnails


def png(label: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array([(220, 40, 40), (40, 60, 220)][label]) + rng.normal(0, 20, (20, 24, 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def planted(tmp_path: Path) -> tuple[Path, Path]:
    """A real image outside the data set (the 'private' file) and a data set folder of 12 images."""
    private = tmp_path / "home" / "private.png"
    private.parent.mkdir(parents=True)
    private.write_bytes(png(0, 99))
    root = tmp_path / "downloaded"
    (root / "img").mkdir(parents=True)
    for i in range(12):
        (root / "img" / f"{i}.png").write_bytes(png(i % 2, i))
    return root, private


def parquet_set(tmp_path: Path) -> tuple[Path, list[str]]:
    """Hub-style parquet whose rows 3 and 7 point at the private file: absolute, and by ../."""
    root, private = planted(tmp_path)
    paths = [f"img/{i}.png" for i in range(12)]
    paths[3], paths[7] = str(private), "../../home/private.png"
    (root / "data").mkdir()
    pq.write_table(pa.table({"image": [{"bytes": None, "path": p} for p in paths], "label": [i % 2 for i in range(12)]}),
                   root / "data" / "train-00000-of-00001.parquet")
    for i in range(12):  # paths are relative to the parquet file: the images sit beside it
        (root / "data" / "img").mkdir(exist_ok=True)
        (root / "data" / "img" / f"{i}.png").write_bytes((root / "img" / f"{i}.png").read_bytes())
    return root, paths


def test_parquet_paths_outside_the_folder_are_refused_unread(tmp_path, capsys):
    root, paths = parquet_set(tmp_path)
    report = check_data(str(root))
    bad = {b["path"].rsplit("#", 1)[1]: b["reason"] for b in report["bad_files"]}
    assert sorted(bad) == ["3", "7"] and all("outside the data set's folder" in r for r in bad.values())
    assert "--allow-outside-paths" in bad["3"] and not report["clean"]
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "no"), *TINY_TRAIN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "2 unusable image(s)" in err[-1] and "--allow-outside-paths" in err[-1]
    splits = load_data(str(root), seed=0)
    rows = [int(p.rsplit("#", 1)[1]) for p in splits.train.paths]
    thumbs, problem = load_thumbnails(str(root), 0, "train", list(range(len(rows))))
    assert problem is None and {rows[r] for r in thumbs} == set(range(12)) - {3, 7} - set(
        int(p.rsplit("#", 1)[1]) for p in splits.val.paths)
    assert check_data(str(root), allow_outside_paths=True)["clean"]  # the user trusts it: read
    assert main(["data", "check", str(root), "--allow-outside-paths"]) == 0


def test_a_run_trained_with_the_flag_reads_its_own_data_again_and_nothing_else(tmp_path, capsys):
    root, _ = parquet_set(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--allow-outside-paths", *TINY_TRAIN]) == 0
    assert json.loads((out / "run.json").read_text())["config"]["allow_outside_paths"] is True
    assert main(["eval", str(out), "--split", "train", "--format", "json", "--quiet"]) == 0  # its own data, as trained
    capsys.readouterr()
    other = shutil.copytree(root, tmp_path / "other")  # another data set, with the same planted rows
    assert main(["eval", str(out), "--data", str(other), "--split", "train", "--quiet"]) == 2
    assert "outside the data set's folder" in capsys.readouterr().err
    assert main(["eval", str(out), "--data", str(other), "--split", "train", "--quiet", "--allow-outside-paths"]) == 0
    assert main(["embed", str(out), str(other), "--out", str(tmp_path / "e.npz"), "--quiet"]) == 2
    assert main(["embed", str(out), str(other), "--out", str(tmp_path / "e.npz"), "--quiet",
                 "--allow-outside-paths"]) == 0


@pytest.mark.parametrize("where", ["absolute", "parent"])
def test_csv_paths_outside_its_folder_are_refused(tmp_path, where):
    root, private = planted(tmp_path)
    rows = ["path,label"] + [f"img/{i}.png,{'ab'[i % 2]}" for i in range(12)]
    rows[4] = f"{private if where == 'absolute' else '../home/private.png'},a"
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"list.csv: the image path '.*private.png' leads outside the CSV's folder"):
        load_data(str(root / "list.csv"))
    splits = load_data(str(root / "list.csv"), allow_outside_paths=True)
    assert str(private) in splits.train.paths + splits.val.paths
    sets = decode_splits({"train": splits.train, "val": splits.val}, 16, announce=False)
    assert len(sets["train"]) + len(sets["val"]) == 12


def test_paths_inside_the_folder_may_climb_back_into_it(tmp_path):
    root, _ = planted(tmp_path)
    rows = ["path,label"] + [f"img/../img/{i}.png,{'ab'[i % 2]}" for i in range(12)]
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    splits = load_data(str(root / "list.csv"))
    assert all(p.startswith(str(root / "img")) and ".." not in p for p in splits.train.paths)
