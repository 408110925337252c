"""The learning-rate range test: the suggestion rule, state restored, lr-find CLI, train --lr auto."""
from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN
from PIL import Image

from transferkit.cli import main
from transferkit.engine.batches import Batches
from transferkit.train.lrfind import END_LR, START_LR, range_test, suggest


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = np.logspace(-7, 0, 100)
    x = np.log10(lrs)
    # Flat, a descent centred at lr 1e-3, a minimum near 1e-1, then divergence.
    losses = 2.3 - 1.5 / (1 + np.exp(-(x + 3) * 2)) + np.where(x > -1, (x + 1) ** 2 * 20, 0)
    assert suggest(lrs, losses) == pytest.approx(1e-3, rel=0.25)


def test_suggestion_falls_back_when_the_loss_only_rises():
    lrs = np.logspace(-7, 0, 20)
    assert suggest(lrs, np.linspace(1, 5, 20)) == pytest.approx(lrs[0] / 10)


class _Data:
    """A linearly separable toy set with the ``labels``/``batch`` interface of an image set."""

    def __init__(self, n=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 3
        self.x = torch.randn(n, 8, generator=g) + torch.nn.functional.one_hot(self.labels, 8).float() * 3

    def batch(self, index):
        return self.x[index]


def test_range_test_restores_model_optimizer_and_rng():
    torch.manual_seed(0)
    # BatchNorm: its running statistics move during the sweep and must come back too.
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Dropout(0.1),
                                torch.nn.Linear(16, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # One real step first, so the optimizer has state worth restoring.
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_opt = json.dumps(optimizer.state_dict()["param_groups"])
    before_step = optimizer.state_dict()["state"][0]["step"].clone()
    rng = torch.get_rng_state()

    finding = range_test(model, Batches(_Data(), 16, shuffle=True), lambda raw, _s, _b, _i: raw, optimizer,
                         set_train=model.train, steps=60)
    assert all(torch.equal(before_model[k], v) for k, v in model.state_dict().items())
    assert json.dumps(optimizer.state_dict()["param_groups"]) == before_opt
    assert torch.equal(optimizer.state_dict()["state"][0]["step"], before_step)
    assert torch.equal(torch.get_rng_state(), rng)
    assert math.isfinite(finding.suggestion) and START_LR <= finding.suggestion <= END_LR
    assert 3 <= len(finding.lrs) <= 60 and finding.lrs == sorted(finding.lrs)


def test_range_test_keeps_the_ratio_between_parameter_groups():
    head, body = torch.nn.Linear(8, 3), torch.nn.Linear(8, 8)
    optimizer = torch.optim.SGD([{"params": head.parameters(), "lr": 1.0}, {"params": body.parameters(), "lr": 0.1}])
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.body = head, body

        def forward(self, x):
            seen.append([g["lr"] for g in optimizer.param_groups])
            return self.head(self.body(x))

    range_test(Spy(), Batches(_Data(), 16), lambda raw, _s, _b, _i: raw, optimizer, set_train=lambda: None, steps=10)
    assert all(b == pytest.approx(a * 0.1) for a, b in seen)
    assert [g["lr"] for g in optimizer.param_groups] == [1.0, 0.1]  # restored


def test_lr_find_command_prints_a_suggestion_and_writes_the_plot(image_folder, tmp_path, capsys):
    plot = tmp_path / "lr.png"
    args = [a for a in TINY_TRAIN if a not in ("--epochs", "1")]
    assert main(["lr-find", "--data", str(image_folder), *args, "--steps", "40", "--out", str(plot)]) == 0
    out = capsys.readouterr().out
    value = float(re.search(r"suggested lr: (\S+)", out).group(1))
    assert math.isfinite(value) and START_LR <= value <= END_LR
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width > 300


def test_lr_find_sweeps_only_the_train_limit_images(image_folder, tmp_path, monkeypatch):
    from transferkit.train import lrfind

    seen, real = [], lrfind.training_path

    def spy(cfg, tm, sets, *args, **kwargs):
        seen.append(len(sets["train"]))
        return real(cfg, tm, sets, *args, **kwargs)

    monkeypatch.setattr(lrfind, "training_path", spy)
    args = [a for a in TINY_TRAIN if a not in ("--epochs", "1")]
    assert main(["lr-find", "--data", str(image_folder), *args, "--train-limit", "4", "--steps", "3",
                 "--out", str(tmp_path / "lr.png")]) == 0
    assert seen == [4]  # of the 10 training images


def test_lr_find_rejects_bad_flags(image_folder, tmp_path, capsys):
    assert main(["lr-find", "--data", str(image_folder), "--steps", "2"]) == 2
    assert main(["lr-find", "--data", str(image_folder), "--start-lr", "1", "--end-lr", "0.1"]) == 2
    assert main(["lr-find", "--data", str(image_folder), "--out", str(tmp_path / "x.jpg")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 3  # one line each


def test_train_lr_auto_end_to_end(image_folder, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--out", str(out), *TINY_TRAIN, "--lr", "auto"]) == 0
    run = json.loads((out / "run.json").read_text())
    found = json.loads((out / "lr_find.json").read_text())
    assert run["config"]["lr"] == "auto"
    assert run["lr"] == found["suggestion"] and START_LR <= run["lr"] <= END_LR
    assert (out / "lr_find.png").is_file()
    assert 'alt="learning-rate range test"' in (out / "report.html").read_text(encoding="utf-8")
    # The head trained at that rate: the first epoch's (warm-up) lr is a fraction of it, never above.
    with open(out / "metrics.csv", newline="") as f:
        first_lr = float(next(csv.DictReader(f))["lr"])
    assert 0 < first_lr <= run["lr"]


def test_lr_auto_trains_exactly_like_the_found_lr_given_by_hand(image_folder, tmp_path):
    """The sweep leaves no trace in the run: the trained weights match a run given that lr by hand."""
    from safetensors.torch import load_file

    common = ["--data", str(image_folder), *TINY_TRAIN, "--epochs", "2"]
    assert main(["train", *common, "--out", str(tmp_path / "auto"), "--lr", "auto"]) == 0
    found = json.loads((tmp_path / "auto" / "run.json").read_text())["lr"]
    assert main(["train", *common, "--out", str(tmp_path / "hand"), "--lr", repr(found)]) == 0
    auto, hand = load_file(str(tmp_path / "auto" / "model.safetensors")), load_file(str(tmp_path / "hand" / "model.safetensors"))
    assert auto.keys() == hand.keys() and all(torch.equal(auto[k], hand[k]) for k in auto)
