"""A full disk (core/cachedir.build): the decoded-image and feature caches know their size before
they are written, so too little free space stops the command with one line saying how much is
needed, how much is free and where; a disk that fills up all the same, even under a decoding
worker process, is one line too, and the unfinished entry is removed."""
from __future__ import annotations

import errno
import shutil
from collections import namedtuple

import pytest
from conftest import TINY_TRAIN, make_image_folder

from transferkit.cli import main
from transferkit.core import cachedir
from transferkit.core.errors import UserError
from transferkit.data import imagecache
from transferkit.data.imagesets import DataCache, decode_splits
from transferkit.data.specs import load_data
from transferkit.engine import feature_cache

Usage = namedtuple("Usage", "total used free")


def entries(cache) -> list:
    """Entry folders (built or not) left in a cache folder; lock files do not count."""
    return [p for kind in ("images", "features") if (cache / kind).is_dir() for p in (cache / kind).iterdir() if p.is_dir()]


def no_space(*_args):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_too_little_free_space_is_said_before_decoding(tmp_path, monkeypatch, capsys):
    images = make_image_folder(tmp_path / "images")  # 12 images: 10 train + 2 val at 32 px
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 20_000, 20_000))
    decoded = []
    monkeypatch.setattr(imagecache, "_decode_rows", lambda *a: decoded.append(a) or [])
    cache = tmp_path / "cache"
    assert main(["train", "--data", str(images), "--out", str(tmp_path / "run"), "--cache-dir", str(cache),
                 *TINY_TRAIN]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "not enough disk space for the decoded-image cache: it needs 30,880 bytes" in err  # 10 x (3 x 32 x 32 + a 16-byte pixel digest)
    assert f"in {cache / 'images'}, and 20,000 bytes are free there" in err
    assert "--cache-dir" in err and "XDG_CACHE_HOME" in err
    assert not decoded and not entries(cache)


def test_the_feature_cache_checks_its_size_too(tmp_path, monkeypatch, capsys):
    images = make_image_folder(tmp_path / "images")
    free = {"bytes": 10**12}
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 0, free["bytes"]))
    original = feature_cache.build_features

    def after_the_images(*args, **kwargs):  # decoded images fit; then the disk has 1 kB left
        free["bytes"] = 1000
        return original(*args, **kwargs)
    monkeypatch.setattr("transferkit.train.features.build_features", after_the_images)
    cache = tmp_path / "cache"
    assert main(["train", "--data", str(images), "--out", str(tmp_path / "run"), "--cache-dir", str(cache),
                 *TINY_TRAIN]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "not enough disk space for the feature cache: it needs" in err and "1,000 bytes are free" in err
    assert {p.parent.name for p in entries(cache)} == {"images"}  # the image cache stays; no feature entry


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_disk_that_fills_up_while_decoding_is_one_line_and_no_entry(tmp_path, monkeypatch, workers):
    splits = load_data(str(make_image_folder(tmp_path / "images", per_class=20)))
    monkeypatch.setattr(imagecache, "write_rows", no_space)  # in the worker processes too: they are forked
    monkeypatch.setattr(imagecache, "CHUNK", 4)
    monkeypatch.setenv(imagecache.WORKERS_ENV, workers)
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as error:
        decode_splits({"train": splits.train}, 32, cache=DataCache(cache))
    line = str(error.value)
    assert "\n" not in line and "the disk filled up while the decoded-image cache was being written" in line
    assert "No space left on device; it needs 98,816 bytes" in line and "--cache-dir" in line  # 32 x (3 x 32 x 32 + 16)
    assert not entries(cache)


def test_a_disk_that_fills_up_while_caching_features_is_one_line(tmp_path, monkeypatch, capsys):
    images = make_image_folder(tmp_path / "images")
    monkeypatch.setattr(feature_cache, "write_rows", no_space)
    cache = tmp_path / "cache"
    assert main(["train", "--data", str(images), "--out", str(tmp_path / "run"), "--cache-dir", str(cache),
                 *TINY_TRAIN]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the disk filled up while the feature cache was being written" in err
    assert {p.parent.name for p in entries(cache)} == {"images"}


def test_a_build_that_fails_for_a_bug_keeps_its_traceback_and_leaves_no_entry(tmp_path, monkeypatch):
    splits = load_data(str(make_image_folder(tmp_path / "images")))
    monkeypatch.setattr(imagecache, "write_rows", lambda *a: 1 / 0)
    monkeypatch.setenv(imagecache.WORKERS_ENV, "1")
    with pytest.raises(ZeroDivisionError):
        decode_splits({"train": splits.train}, 32, cache=DataCache(tmp_path / "cache"))
    assert not entries(tmp_path / "cache") and cachedir.KINDS  # nothing half-built is left to clean up later
