"""Decoding rules and bad files: every odd image comes out right, every broken one is named."""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from transferkit.cli import main
from transferkit.data.images import BadImage, open_rgb


def write_bomb_png(path, width=100_000, height=100_000):
    """A tiny PNG whose header claims 10^10 pixels: must be refused before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.fixture
def odd_folder(tmp_path):
    """Good-but-odd images in class 'good', broken ones in class 'bad'."""
    good, bad = tmp_path / "data" / "good", tmp_path / "data" / "bad"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(good / "cmyk.jpg")  # pure red in CMYK
    gradient = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (8, 1))
    Image.fromarray(gradient).save(good / "gradient16.png")
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(good / "transparent.png")
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    pal.save(good / "palette.png", transparency=0)
    Image.new("LA", (8, 8), (100, 255)).save(good / "la.png")
    wide = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": upright it is 20 wide, 40 tall
    wide.save(good / "rotated.jpg", exif=exif.tobytes())
    Image.new("RGB", (30, 30), (10, 200, 10)).save(bad / "whole.jpg", quality=95)
    full = (bad / "whole.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.png").write_text("this is text, not a picture")
    write_bomb_png(bad / "bomb.png")
    (tmp_path / "data" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / ".ipynb_checkpoints" / "x.png")
    (tmp_path / "data" / "empty_class").mkdir()
    (good / ".DS_Store").write_bytes(b"\x00\x01")
    return tmp_path / "data"


def test_cmyk_becomes_red_rgb(odd_folder):
    pixel = np.asarray(open_rgb(str(odd_folder / "good" / "cmyk.jpg")))[8, 8]
    assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


def test_16bit_gradient_keeps_its_range(odd_folder):
    img = np.asarray(open_rgb(str(odd_folder / "good" / "gradient16.png")))
    assert img.shape[-1] == 3
    assert img[0, 0, 0] == 0 and img[0, -1, 0] == 255
    assert 100 < img[0, 16, 0] < 160  # the middle is grey, not white


def test_transparency_composites_over_white(odd_folder):
    for name in ("transparent.png", "palette.png"):
        assert (np.asarray(open_rgb(str(odd_folder / "good" / name))) == 255).all(), name
    la = np.asarray(open_rgb(str(odd_folder / "good" / "la.png")))
    assert la.shape == (8, 8, 3) and (la == 100).all()


def test_exif_orientation_is_applied(odd_folder):
    assert open_rgb(str(odd_folder / "good" / "rotated.jpg")).size == (20, 40)


@pytest.mark.parametrize("name,reason", [("truncated.jpg", "truncated"), ("empty.png", "empty"),
                                         ("notes.png", "not an image"), ("bomb.png", "too many pixels")])
def test_broken_files_raise_with_reason(odd_folder, name, reason):
    with pytest.raises(BadImage) as info:
        open_rgb(str(odd_folder / "bad" / name))
    assert reason in info.value.reason and name in str(info.value)


def test_data_check_lists_every_unusable_file(odd_folder, capsys):
    assert main(["data", "check", str(odd_folder), "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["bad", "good"]  # hidden and empty folders are not classes
    bad = {b["path"].rsplit("/", 1)[-1]: b["reason"] for b in report["bad_files"]}
    assert set(bad) == {"truncated.jpg", "empty.png", "notes.png", "bomb.png"}
    assert not report["clean"]


def test_data_check_finds_cross_split_duplicates(tmp_path, capsys):
    for split in ("train", "test"):
        for cls, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), colour).save(tmp_path / split / cls / "img.png")
    assert main(["data", "check", str(tmp_path), "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert len(report["cross_split_duplicates"]) == 2


def test_clean_folder_exits_zero(image_folder, capsys):
    assert main(["data", "check", str(image_folder)]) == 0
    assert "clean" in capsys.readouterr().out


def test_training_stops_on_broken_files_then_skip_bad_drops_them(odd_folder, tmp_path, capsys):
    args = ["train", "--data", str(odd_folder), "--model", "resnet18", "--weights", "none", "--image-size", "16",
            "--epochs", "1", "--batch-size", "4", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "r1")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "4 unusable" in errors[0] and "--skip-bad" in errors[0]
    assert all(name in errors[0] for name in ("truncated.jpg", "empty.png", "notes.png", "bomb.png"))
    assert not (tmp_path / "r1" / "checkpoints").exists()  # nothing trained
    assert main([*args, "--out", str(tmp_path / "r2"), "--skip-bad"]) == 0
    assert "dropped" in capsys.readouterr().err
    run = json.loads((tmp_path / "r2" / "run.json").read_text())
    assert run["data"]["train"] + run["data"]["val"] == 7  # 6 good + 1 whole jpg; 4 broken dropped
