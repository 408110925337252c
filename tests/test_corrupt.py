"""The ImageNet-C shift test: the 15 corruptions, their seeding, the worker pool, ``eval --corrupt`` and the report."""
from __future__ import annotations

import importlib.metadata
import json
import sys
import types
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, make_image_folder, need_extra, own_cache
from PIL import Image
from sklearn.datasets import load_sample_image

from transferkit.cli import main
from transferkit.core.errors import UserError
from transferkit.data.corrupt import imagenet_c
from transferkit.data.corrupt.imagenet_c import NAMES, corrupt_image, parse_corruptions, parse_severity
from transferkit.data.corrupt.views import Corrupted, CorruptionPool, rgb_at_size
from transferkit.data.imagesets import TensorImages
from transferkit.data.transforms import Preprocess, prepare
from transferkit.runs import shift

need_extra("imagecorruptions", "corrupt")

# Corruptions that draw random numbers (the others are fixed functions of the image and severity).
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
          "elastic_transform"}
# ImageNet-C's own parameters do not make these strictly stronger at every step in pixel terms:
# glass blur's severity 2 shuffles once where 1 shuffles twice, fog and frost dim the image while
# raising the overlay. Each is still further from the clean image at 5 than at 1.
NOT_STEPWISE = {"glass_blur", "fog", "frost"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-epoch run whose validation split (no test split) has 2 images of each of 2 classes."""
    root = tmp_path_factory.mktemp("corrupt")
    with own_cache(root / "cache"):
        folder = make_image_folder(root / "images", per_class=10)
        assert main(["train", "--data", str(folder), "--out", str(root / "run"), *TINY_TRAIN]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph at 64 px, (H, W, 3) uint8: blur and noise both have something to change."""
    return np.asarray(Image.fromarray(load_sample_image("china.jpg")).resize((64, 64), Image.BILINEAR))


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


@pytest.mark.parametrize("name", NAMES)
def test_each_corruption_changes_pixels_keeps_shape_and_follows_its_seed(photo, name):
    out = corrupt_image(photo, name, 3, seed=11)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert _distance(out, photo) > 1.0, f"{name} left the image (almost) as it was"
    assert np.array_equal(out, corrupt_image(photo, name, 3, seed=11)), f"{name} is not deterministic for a seed"
    if name in RANDOM:
        assert not np.array_equal(out, corrupt_image(photo, name, 3, seed=12)), f"{name} ignores its seed"


def test_severity_makes_each_corruption_stronger(photo):
    distances = {name: [_distance(corrupt_image(photo, name, s, seed=7), photo) for s in range(1, 6)] for name in NAMES}
    for name, d in distances.items():
        assert d[4] > d[0], f"{name}: severity 5 is no further from the clean image than 1 ({d})"
        if name not in NOT_STEPWISE:
            assert all(a < b for a, b in zip(d, d[1:])), f"{name}: not stronger at every step ({d})"


def test_the_callers_random_state_is_left_alone(photo):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    corrupt_image(photo, "gaussian_noise", 3, seed=5)
    assert np.random.rand() == expected


def test_small_images_are_corrupted_too():
    """The library's own entry point refuses images under 32 px; runs at 28 px or less still get a shift test."""
    tiny = np.full((16, 16, 3), 120, dtype=np.uint8)
    for name in NAMES:
        assert corrupt_image(tiny, name, 5, seed=0).shape == (16, 16, 3)


def test_clean_pixels_are_what_prepare_sees():
    """A 1-channel 28-px built-in is resized and given 3 channels before the corruption, exactly as
    ``prepare`` would have seen it: with no corruption the two paths agree to the bit."""
    pre = Preprocess(40, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    raw = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rgb = rgb_at_size(raw, pre)
    assert rgb.shape == (3, 3, 40, 40) and rgb.dtype == torch.uint8
    assert torch.equal(prepare(rgb, pre), prepare(raw, pre))


def _set(n: int = 6, size: int = 36) -> TensorImages:
    images = torch.from_numpy(np.stack([np.asarray(Image.fromarray(load_sample_image("flower.jpg")).resize(
        (size + i, size + i)))[:size, :size] for i in range(n)])).permute(0, 3, 1, 2)
    return TensorImages(images, torch.arange(n) % 2, ["a", "b"], "flowers")


def test_worker_processes_give_the_same_images_and_a_subset_keeps_its_seeds():
    images, pre = _set(), Preprocess(36, (0.5,) * 3, (0.5,) * 3)
    index = torch.arange(len(images))
    with CorruptionPool(workers=1) as here:
        alone = Corrupted(images, "gaussian_noise", 3, pre, here).batch(index)
        subset = Corrupted(images.subset([1, 4]), "gaussian_noise", 3, pre, here, positions=[1, 4]).batch(torch.arange(2))
    with CorruptionPool(workers=2) as pool:
        view = Corrupted(images, "gaussian_noise", 3, pre, pool)
        parallel = view.batch(index)
        assert view.seconds > 0
    assert torch.equal(alone, parallel)
    assert torch.equal(subset, alone[[1, 4]])
    twins = TensorImages(images.images[[0, 0]], torch.tensor([0, 0]), ["a", "b"], "twins")
    first, second = Corrupted(twins, "gaussian_noise", 3, pre, CorruptionPool(1)).batch(torch.arange(2))
    assert not torch.equal(first, second), "every place in the split has its own noise"


def test_names_and_severities_are_checked():
    assert parse_corruptions(None) == NAMES and len(NAMES) == 15
    assert parse_corruptions("fog,noise") == ("gaussian_noise", "shot_noise", "impulse_noise", "fog")
    assert parse_severity("all") == (1, 2, 3, 4, 5) and parse_severity(3) == (3,)
    for bad in ("0", "6", "high"):
        with pytest.raises(UserError, match="severity 1-5"):
            parse_severity(bad)
    with pytest.raises(UserError, match="unknown corruption 'rain'"):
        parse_corruptions("rain")


def test_a_missing_library_is_one_line_naming_the_extra(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(imagenet_c.importlib.metadata, "version", missing)
    with pytest.raises(UserError, match=r"transferkit\[corrupt\]"):
        imagenet_c.library()


def test_the_unmaintained_original_is_named_not_crashed_on(monkeypatch):
    """imagecorruptions 1.1.2 installs the same module; its glass blur takes no seed (and fails on NumPy 2)."""
    original = types.ModuleType("imagecorruptions")
    original.corruptions = types.SimpleNamespace(glass_blur=lambda x, severity=1: x)
    monkeypatch.setitem(sys.modules, "imagecorruptions", original)
    with pytest.raises(UserError, match="pip uninstall -y imagecorruptions"):
        imagenet_c.load.__wrapped__()


class _Section(HTMLParser):
    """The rows of the report's corruption table."""

    def __init__(self):
        super().__init__()
        self.heading = False
        self.in_table, self.rows, self.cells = False, [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "h2" and attrs.get("id") == "corruptions":
            self.heading = True
        if tag == "table" and attrs.get("class") == "corruptions":
            self.in_table = True
        if self.in_table and tag == "tr":
            self.cells = []

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_table = False
        if self.in_table and tag == "tr" and self.cells:
            self.rows.append(self.cells)
            self.cells = None

    def handle_data(self, data):
        if self.in_table and self.cells is not None and data.strip():
            self.cells.append(data.strip())


def test_eval_corrupt_scores_the_run_and_the_report_shows_it(tiny_run, capsys, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_DECODE_WORKERS", "1")  # a few images: corrupted here (the pool is tested above)
    assert main(["eval", str(tiny_run), "--format", "json", "--quiet"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["eval", str(tiny_run), "--corrupt", "--format", "json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["clean"]["top1"] == plain["top1"] and result["n"] == plain["n"] == result["n_split"]
    assert result["clean"]["nll"] == plain["nll"] and result["clean"]["ece"] == plain["ece"]  # the very same logits
    assert result["split"] == plain["split"] == "val" and result["severities"] == [3]
    rows = result["rows"]
    assert [r["corruption"] for r in rows] == list(NAMES) and all(r["severity"] == 3 for r in rows)
    assert result["mean_top1"] == pytest.approx(np.mean([r["top1"] for r in rows]))
    worst = min(rows, key=lambda r: r["top1"])
    assert result["worst"] == {"corruption": worst["corruption"], "top1": worst["top1"]}
    assert result["library"].startswith("imagecorruptions-imaug ")
    written = tiny_run / "eval" / "val_corrupt-s3.json"
    assert json.loads(written.read_text()) == result

    parser = _Section()
    parser.feed((tiny_run / "report.html").read_text())
    assert parser.heading and [row[0] for row in parser.rows[1:]] == list(NAMES)
    assert parser.rows[0][:3] == ["corruption", "family", "severity 3"]
    assert float(parser.rows[1][2]) == pytest.approx(rows[0]["top1"], abs=5e-4)

    assert main(["report", str(tiny_run)]) == 0  # `transferkit report` re-renders it from the file
    again = _Section()
    again.feed((tiny_run / "report.html").read_text())
    assert again.rows == parser.rows


def test_limit_severity_all_and_a_table(tiny_run, capsys, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_DECODE_WORKERS", "1")
    assert main(["eval", str(tiny_run), "--corrupt", "all", "--corruptions", "shot_noise,fog", "--corrupt-limit", "2",
                 "--quiet"]) == 0
    table = capsys.readouterr().out
    result = json.loads((tiny_run / "eval" / "val_corrupt-all.json").read_text())
    assert result["n"] == 2 < result["n_split"] and result["limit"] == 2
    assert sorted(set(result["rows"][0]) & {"top1", "ece", "nll"}) == ["ece", "nll", "top1"]
    assert len(result["rows"]) == 2 * 5 and result["severities"] == [1, 2, 3, 4, 5]
    for name, mean in result["per_corruption"].items():
        assert mean == pytest.approx(np.mean([r["top1"] for r in result["rows"] if r["corruption"] == name]))
    assert result["worst"]["top1"] == min(result["per_corruption"].values())
    assert "a stratified sample of" in table and "shot_noise" in table and "mean" in table
    assert main(["eval", str(tiny_run), "--corrupt", "all", "--corruptions", "shot_noise,fog", "--corrupt-limit", "2",
                 "--format", "json", "--quiet"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [r["top1"] for r in again["rows"]] == [r["top1"] for r in result["rows"]]  # same run, same numbers
    assert again["rows"][0]["nll"] == result["rows"][0]["nll"]


@pytest.mark.parametrize("argv, message", [
    (["--corrupt", "7"], "severity 1-5"),
    (["--corrupt", "3", "--corruptions", "rain"], "unknown corruption 'rain'"),
    (["--corruptions", "fog"], "go with --corrupt"),
    (["--corrupt", "3", "--tta", "flip"], "drop --tta"),
    (["--corrupt", "3", "--corrupt-limit", "0"], "positive number"),
])
def test_mistakes_are_one_line(tiny_run, capsys, argv, message):
    assert main(["eval", str(tiny_run), *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_summary_is_consistent_with_its_rows():
    rows = [{"corruption": c, "family": f, "severity": s, "top1": a} for c, f, s, a in (
        ("fog", "weather", 1, 0.8), ("fog", "weather", 5, 0.4), ("pixelate", "digital", 1, 0.7),
        ("pixelate", "digital", 5, 0.6))]
    summary = shift.summarise(rows, {"top1": 0.9})
    assert summary["mean_top1"] == pytest.approx(0.625) and summary["drop"] == pytest.approx(0.275)
    # the worst by its mean over severities (fog 0.6), not by its worst single severity (also fog here: 0.4)
    assert summary["worst"] == {"corruption": "fog", "top1": pytest.approx(0.6)}
    assert summary["per_family"] == {"weather": pytest.approx(0.6), "digital": pytest.approx(0.65)}
