"""Augmentation in training: only training batches are augmented, augmented views through the
feature cache train as the plain loop that draws the same views, resumes redraw the same pixels
and mixes, and mistakes are one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import killed_after_first_checkpoint, make_image_folder

from transferkit.cli import main
from transferkit.core.config import TrainConfig
from transferkit.core.safeio import load_torch_file
from transferkit.data.augment.pipeline import Augmentation

BASE = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "2", "--batch-size", "4",
        "--quiet", "--seed", "3"]
# the flag that turns the feature cache off, whatever this version calls it
NO_CACHE = "--no-cache" if "cache" in TrainConfig.__dataclass_fields__ else "--no-feature-cache"


def train(capsys, data, out, *extra) -> str:
    assert main(["train", "--data", str(data), "--out", str(out), *BASE, *extra]) == 0
    return capsys.readouterr().err


def cache_line(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("feature cache"))


def weights(run: Path) -> dict:
    return load_torch_file(run / "checkpoints" / "last.pt")["model"]


def largest_difference(a: Path, b: Path) -> float:
    ours, theirs = weights(a), weights(b)
    return max(float((ours[k].double() - theirs[k].double()).abs().max()) for k in ours if ours[k].is_floating_point())


@pytest.fixture(scope="module")
def splits_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("splits")
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        make_image_folder(root / split, per_class=5 if split == "train" else 2, seed=seed)
    return root


def test_only_training_images_are_augmented(splits_folder, tmp_path, capsys, monkeypatch):
    """Validation (every epoch), the temperature fit and the test scores see the images as they are."""
    seen = []
    real = Augmentation.__call__
    monkeypatch.setattr(Augmentation, "__call__", lambda self, batch, seeds: seen.append(len(batch)) or real(self, batch, seeds))
    err = train(capsys, splits_folder, tmp_path / "run", NO_CACHE, "--augment", "strong")
    assert "augment: crop:0.35,flip:0.5,trivial,erase:0.1 (a new draw per image every epoch)" in err
    assert sum(seen) == 2 * 10  # two epochs of the 10 training images, nothing else
    assert json.loads((tmp_path / "run" / "run.json").read_text())["metrics"]["n"] == 4  # the test split was scored


def test_augmented_views_through_the_cache_train_as_the_plain_loop(image_folder, tmp_path, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    line = cache_line(train(capsys, image_folder, tmp_path / "cached", *cache, "--augment", "light", "--views", "2"))
    assert "2 augmented views per training image" in line and "built 22 images" in line  # 10 train x 2 + 2 val
    more = cache_line(train(capsys, image_folder, tmp_path / "more", *cache, "--augment", "light", "--views", "3"))
    assert "built 10 + reused 22 images" in more  # view 2 is new; views 0 and 1 are the same pixels, reused
    assert "built" not in cache_line(train(capsys, image_folder, tmp_path / "same", *cache, "--augment", "crop,flip",
                                           "--views", "2"))  # the same spec spelled otherwise
    assert "4 augmented views" in cache_line(train(capsys, image_folder, tmp_path / "auto", *cache, "--augment", "light"))
    train(capsys, image_folder, tmp_path / "plain", NO_CACHE, "--augment", "light", "--views", "2")
    train(capsys, image_folder, tmp_path / "unaugmented", *cache)
    fc = {r: weights(tmp_path / r)["fc.weight"] for r in ("cached", "plain", "unaugmented", "more")}
    rounding = (fc["cached"] - fc["plain"]).abs().max()  # fp16 features: tiny rounding only
    assert rounding < 1e-3
    assert (fc["unaugmented"] - fc["plain"]).abs().max() > 10 * rounding  # the views matter: it can fail
    assert (fc["more"] - fc["plain"]).abs().max() > 10 * rounding


def test_feature_augmentation_is_on_by_default_only_where_stages_train_on_cached_features(image_folder, tmp_path, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    partial = train(capsys, image_folder, tmp_path / "auto", *cache, "--freeze", "3")
    assert "feature augmentation brightness:0.5" in partial
    train(capsys, image_folder, tmp_path / "off", *cache, "--freeze", "3", "--feature-augment", "none")
    train(capsys, image_folder, tmp_path / "explicit", *cache, "--freeze", "3", "--feature-augment", "brightness:0.5")
    assert largest_difference(tmp_path / "auto", tmp_path / "explicit") == 0.0  # auto is that, exactly
    assert largest_difference(tmp_path / "auto", tmp_path / "off") > 1e-4
    head_only = train(capsys, image_folder, tmp_path / "head", *cache)
    plain = train(capsys, image_folder, tmp_path / "plain", NO_CACHE, "--freeze", "3")  # auto: nothing to perturb
    assert "feature augmentation" not in head_only and "feature augmentation" not in plain


@pytest.mark.parametrize("flags", [
    [NO_CACHE, "--augment", "strong", "--mixup", "0.2", "--cutmix", "1.0"],
    ["--freeze", "4", "--augment", "crop:0.5,jitter", "--views", "3", "--mixup", "0.4", "--cutmix", "1.0",
     "--feature-augment", "brightness"],
], ids=["plain-fresh-draws", "cached-views"])
def test_a_resumed_run_redraws_the_same_augmentation(image_folder, tmp_path, capsys, monkeypatch, flags):

    args = [*flags, "--checkpoint-every", "2", "--cache-dir", str(tmp_path / "c")]
    train(capsys, image_folder, tmp_path / "whole", *args)
    killed_after_first_checkpoint(monkeypatch, ["train", "--data", str(image_folder), "--out", str(tmp_path / "cut"), *BASE, *args])
    state = load_torch_file(tmp_path / "cut" / "checkpoints" / "last.pt")["state"]
    assert (state["epoch"], state["batch"]) == (0, 2)  # stopped inside the first epoch
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume", "--quiet"]) == 0
    assert largest_difference(tmp_path / "cut", tmp_path / "whole") <= 1e-6
    unmixed = [f for f in flags if f not in ("--mixup", "--cutmix", "0.2", "0.4", "1.0", "--feature-augment", "brightness")]
    train(capsys, image_folder, tmp_path / "unmixed", *unmixed, "--checkpoint-every", "2", "--cache-dir", str(tmp_path / "c"))
    assert largest_difference(tmp_path / "unmixed", tmp_path / "whole") > 1e-4  # the mixing did something


@pytest.mark.parametrize("extra,says", [
    (["--augment", "crop:1.5"], "--augment 'crop:1.5': crop must be in"),
    (["--augment", "flip", "--views", "3"], "flip is already two fixed views"),
    (["--head", "prototype", "--augment", "light"], "would change nothing"),
    (["--augment", "light", "--cutmix", "1"], "holds 512 vectors: use --mixup"),
    ([NO_CACHE, "--feature-augment", "brightness"], "needs the feature cache"),
    (["--mixup", "-1"], "must not be negative"),
])
def test_mistakes_are_one_line(image_folder, tmp_path, capsys, extra, says):
    assert main(["train", "--data", str(image_folder), "--out", str(tmp_path / "r"), *BASE, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1], err[-1]
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_lr_find_sweeps_augmented_mixed_batches(image_folder, tmp_path, capsys):
    out = tmp_path / "lr.png"
    assert main(["lr-find", "--data", str(image_folder), "--out", str(out), "--model", "resnet18", "--weights", "none",
                 "--image-size", "32", "--batch-size", "4", "--steps", "5", "--quiet", NO_CACHE, "--augment", "strong",
                 "--mixup", "0.2"]) == 0
    assert out.is_file()


def test_flipping_digits_is_warned_about(tmp_path, capsys):
    err = train(capsys, "digits", tmp_path / "d", "--train-limit", "40", "--epochs", "1", "--augment", "light", "--views", "1")
    assert "warning: --augment crop:0.35,flip:0.5 mirrors images, and digits is handwritten digits" in err
    assert main(["data", "check", "digits"]) == 0
    assert "do not train it with flips" in capsys.readouterr().out


def test_the_views_source_holds_no_rows_in_memory(image_folder, tmp_path):
    """Eight views of each image stay on disk: the training source holds labels, never a view's rows."""
    import numpy as np

    from transferkit.core.records import Records
    from transferkit.train.start import start

    cfg = TrainConfig(data=str(image_folder), model="resnet18", weights="none", image_size=32, quiet=True,
                      augment="light", views=8, out=str(tmp_path / "r"), cache_dir=str(tmp_path / "c")).validate()
    source = start(cfg).prepared.path.sources["train"]
    assert len(source.views) == 8 and all(isinstance(view.features, Records) for view in source.views)
    held = [x for part in (source, *source.views) for x in vars(part).values() if isinstance(x, (torch.Tensor, np.ndarray))]
    assert held and all(len(x) <= len(source) for x in held)  # the labels, one per image
