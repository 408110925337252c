"""Tar shards that lie or vanish, and decoding workers that die (data/imagecache.py): each is one line
(a broken file with its reason, or a UserError), never a MemoryError or a traceback."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.cli import main
from transferkit.core.errors import UserError
from transferkit.data import imagecache
from transferkit.data.imagesets import DataCache, decode_splits
from transferkit.data.specs import load_data


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def member(name: str, payload: bytes, claimed: int | None = None) -> bytes:
    """One tar member, header and data, as a tar writer lays it out; ``claimed``: the size its header says."""
    info = tarfile.TarInfo(name)
    info.size = len(payload) if claimed is None else claimed
    return info.tobuf(tarfile.GNU_FORMAT) + payload + b"\0" * (-len(payload) % 512)


def write_shard(path: Path, samples: int, start: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = b"".join(member(f"s{i:03d}.png", png(i)) + member(f"s{i:03d}.cls", str(i % 2).encode())
                   for i in range(start, start + samples))
    path.write_bytes(raw + b"\0" * 1024)
    return path


def test_a_member_whose_header_claims_a_terabyte_is_refused_unread(tmp_path, capsys):
    """The shard is as long as its header says (sparse: no disk used), so indexing accepts it; reading
    the member whole would ask for 1 TB of memory."""
    shard = tmp_path / "shards" / "name-train-000.tar"
    raw = b"".join(member(f"s{i}.png", png(i)) + member(f"s{i}.cls", str(i % 2).encode()) for i in range(4))
    raw += member("big.cls", b"1") + member("big.png", b"", claimed=1 << 40)
    shard.parent.mkdir()
    with open(shard, "wb") as f:
        f.write(raw)
        f.truncate(len(raw) + (1 << 40) + 1024)
    splits = load_data(str(shard.parent))
    with pytest.raises(UserError, match=r"big.png \(its tar header claims 1,099,511,627,776 bytes, more than an image"):
        decode_splits({"train": splits.train, "val": splits.val}, 16, cache=DataCache(tmp_path / "cache"))
    assert main(["data", "check", str(shard.parent)]) == 1
    assert "big.png: its tar header claims 1,099,511,627,776 bytes" in capsys.readouterr().out


@pytest.mark.parametrize("cached", [True, False])
def test_a_shard_deleted_or_cut_short_after_indexing_is_a_list_of_broken_files(tmp_path, cached):
    root = tmp_path / "shards"
    write_shard(root / "name-train-000.tar", 6)
    write_shard(root / "name-train-001.tar", 6, start=6)
    cut = write_shard(root / "name-val-000.tar", 4, start=12)
    splits = load_data(str(root))
    (root / "name-train-001.tar").unlink()
    with open(cut, "r+b") as f:
        f.truncate(cut.stat().st_size // 2)
    cache = DataCache(tmp_path / "cache") if cached else None
    with pytest.raises(UserError) as error:
        decode_splits({"train": splits.train, "val": splits.val}, 16, cache=cache)
    line = str(error.value)
    assert "\n" not in line and "unusable image(s)" in line
    assert "name-train-001.tar/s006.png (its shard cannot be read (No such file or directory); was it moved or deleted" \
        in line
    assert "name-val-000.tar/s015.png (truncated (the shard ends before this member does))" in line
    kept = decode_splits({"train": splits.train, "val": splits.val}, 16, cache=cache, skip_bad=True, announce=False)
    assert len(kept["train"]) == 6 and 0 < len(kept["val"]) < 4


def test_a_decoding_worker_that_dies_is_one_line_and_leaves_no_entry(tmp_path, monkeypatch, capsys):
    root = tmp_path / "shards"
    write_shard(root / "name-train-000.tar", 12)
    parent, load = os.getpid(), imagecache.load_item

    def crashing(item, *args):
        if item[0].endswith("s007.png"):
            assert os.getpid() != parent, "decoded in the main process: no worker to kill"
            os._exit(9)  # what the kernel's out-of-memory killer or a decoder crash leaves behind
        return load(item, *args)
    monkeypatch.setattr(imagecache, "load_item", crashing)  # forked workers inherit it
    monkeypatch.setattr(imagecache, "CHUNK", 2)
    monkeypatch.setenv(imagecache.WORKERS_ENV, "2")
    cache = tmp_path / "cache"
    assert main(["data", "check", str(root)]) == 0  # check decodes in threads; nothing dies there
    capsys.readouterr()
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--cache-dir", str(cache),
                 "--model", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "a decoding worker process died while decoding" in err[-1] and "transferkit data check" in err[-1]
    assert not [p for p in (cache / "images").iterdir() if p.is_dir()]  # the unfinished entry is gone
    monkeypatch.setattr(imagecache, "load_item", load)
    splits = load_data(str(root))
    assert len(decode_splits({"train": splits.train}, 16, cache=DataCache(cache), announce=False)["train"]) == len(
        splits.train)
