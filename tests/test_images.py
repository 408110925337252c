"""Decoding rules and bad files: every odd image comes out right, every broken one is named."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN, make_image_folder
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


def test_max_pixels_above_pillows_own_limit_takes_effect(tmp_path, monkeypatch):
    """Pillow refuses files over twice its MAX_IMAGE_PIXELS while opening them, before our check:
    a --max-pixels above that must still let them through."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow alone would refuse anything over 2000 pixels
    path = tmp_path / "big.png"
    Image.new("RGB", (60, 60), (1, 2, 3)).save(path)  # 3600 pixels
    assert open_rgb(str(path), max_pixels=5000).size == (60, 60)
    with pytest.raises(BadImage, match="too many pixels"):
        open_rgb(str(path), max_pixels=3000)


def thin_png(path, long_side: int = 20_000):
    """A strip 1 px high: under any pixel limit, but its short side scaled to the input size
    multiplies the long one (1 x 5,000,000 at 224 px would be a gigapixel)."""
    Image.new("L", (long_side, 1), 90).save(path)
    return path


def test_thin_images_are_refused_everywhere_with_their_reason(tmp_path, capsys):
    """train, eval, predict and embed name a 1 x 20,000 px strip as unusable (extreme aspect ratio),
    and --skip-bad drops it in train, eval and embed; serve answers 422 (test_serve.py)."""
    from transferkit.data.images import load_uint8

    for split, per_class in (("train", 5), ("test", 3)):
        make_image_folder(tmp_path / "data" / split, per_class=per_class, seed=len(split))
    thin_png(tmp_path / "data" / "train" / "cat" / "thin.png")
    thin_png(tmp_path / "data" / "test" / "dog" / "strip.png")
    with pytest.raises(BadImage, match="aspect ratio"):
        load_uint8(str(tmp_path / "data" / "train" / "cat" / "thin.png"), 16)
    data, run = str(tmp_path / "data"), str(tmp_path / "run")
    args = ["--model", "resnet18", "--weights", "none", "--image-size", "16", "--epochs", "1", "--batch-size", "4", "--quiet"]

    def one_error() -> str:
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1
        return errors[0]

    assert main(["train", "--data", data, "--out", run, *args]) == 2
    assert "thin.png (extreme aspect ratio (20000x1" in one_error()
    assert main(["train", "--data", data, "--out", run, *args, "--skip-bad"]) == 0
    capsys.readouterr()
    assert main(["eval", run, "--format", "json"]) == 2
    assert "strip.png (extreme aspect ratio" in one_error()
    assert main(["eval", run, "--format", "json", "--skip-bad", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 6  # 6 test images once the strip is dropped
    assert main(["predict", run, str(tmp_path / "data" / "test" / "dog"), "--format", "json", "--quiet"]) == 1
    results = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert "aspect ratio" in results["strip.png"]["error"] and len(results) == 4
    assert all("predictions" in r for name, r in results.items() if name != "strip.png")
    out = str(tmp_path / "e.npz")
    assert main(["embed", run, data, "--out", out, "--quiet"]) == 2
    assert "aspect ratio" in one_error()
    assert main(["embed", run, data, "--out", out, "--quiet", "--skip-bad"]) == 0
    embedded = np.load(out)
    assert len(embedded["label"]) == 10 + 6 and not {"thin.png", "strip.png"} & {Path(p).name for p in embedded["path"]}


def test_embed_splits_a_folder_by_the_runs_seed(image_folder, tmp_path, capsys):
    """The split column of `embed` on a plain folder is the run's own train/val split (its --seed),
    unless --seed says otherwise."""
    from transferkit.data.specs import load_data

    run = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--out", str(run), *TINY_TRAIN, "--seed", "5"]) == 0
    val = {seed: sorted(load_data(str(image_folder), seed).val.paths) for seed in (0, 5)}
    assert val[0] != val[5]
    for flags, seed in (([], 5), (["--seed", "0"], 0)):
        out = tmp_path / f"e{seed}.npz"
        assert main(["embed", str(run), str(image_folder), "--out", str(out), "--quiet", *flags]) == 0
        embedded = np.load(out)
        assert sorted(p for p, s in zip(embedded["path"], embedded["split"]) if s == "val") == val[seed]
