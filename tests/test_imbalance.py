"""Imbalanced data: --class-weights balanced, --sampler balanced (deterministic, exactly resumable),
balanced accuracy and macro-F1 next to top-1, and data check pointing at them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TRAIN, make_image_folder
from snapshots import snapshot_at

from transferkit.cli import main
from transferkit.core.safeio import load_torch_file
from transferkit.data.check import check_data
from transferkit.engine.batches import Batches, balanced_order, epoch_generator
from transferkit.engine.loop import balanced_class_weights, classification_loss
from transferkit.runs.metrics import class_balanced_scores, confusion_matrix


class Labels:
    def __init__(self, labels):
        self.labels = torch.as_tensor(labels)

    def batch(self, index):
        return self.labels[index]


def test_balanced_weights_and_the_weighted_loss():
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 0 + [3] * 4)
    w = balanced_class_weights(labels, 4)
    assert w.tolist() == pytest.approx([16 / 30, 16 / 6, 0.0, 16 / 12])  # n / (classes present x count)
    assert float(w[labels].mean()) == pytest.approx(1.0)  # the average image keeps weight 1
    logits, y = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 3, 0, 1, 3])
    per = F.cross_entropy(logits, y, label_smoothing=0.1, reduction="none")
    assert float(classification_loss(logits, y, 0.1, w)) == pytest.approx(float((per * w[y]).mean()))
    assert torch.equal(classification_loss(logits, y, 0.1), F.cross_entropy(logits, y, label_smoothing=0.1))
    # split in two (micro-batches, processes): the weighted halves add up to the whole
    halves = sum(classification_loss(logits[i:i + 3], y[i:i + 3], 0.1, w) * 3 / 6 for i in (0, 3))
    assert float(halves) == pytest.approx(float(classification_loss(logits, y, 0.1, w)))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_and_macro_f1_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 5, 60)
        y[y == 4] = 0  # class 4 has no true images...
        pred = np.where(rng.random(60) < 0.6, y, rng.integers(0, 5, 60))  # ...but may be predicted
        got = class_balanced_scores(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(y), 5))
        assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))


def test_balanced_order_draws_classes_uniformly_from_seed_and_epoch():
    labels = torch.tensor([0] * 1000 + [1] * 100)  # 10:1
    source = Labels(labels)
    batches = Batches(source, 50, shuffle=True, seed=3, balanced=True)
    order = batches.order(0)
    assert len(order) == 1100 and torch.equal(order, batches.order(0))  # same (seed, epoch), same order
    assert not torch.equal(order, batches.order(1))
    share = float((labels[order] == 1).double().mean())
    assert 0.45 < share < 0.55
    assert torch.equal(order, balanced_order(labels, epoch_generator(3, 0)))
    # under DDP every process slices the same global batches
    whole = [index for _, index, _, _ in batches(0)]
    parts = [[index for _, index, _, _ in Batches(source, 50, shuffle=True, seed=3, balanced=True, rank=r, world=2)(0)]
             for r in (0, 1)]
    assert all(torch.equal(torch.cat([a, b]), w) for a, b, w in zip(*parts, whole))


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    root = tmp_path_factory.mktemp("skewed")
    make_image_folder(root / "images", classes=("common",), per_class=22, seed=1)
    make_image_folder(root / "images", classes=("common", "rare"), per_class=2, seed=2)
    return root / "images"


def test_data_check_suggests_weights_and_the_sampler(skewed):
    report = check_data(str(skewed))
    assert any("--class-weights balanced" in w and "--sampler balanced" in w for w in report["warnings"])


def test_weighted_and_balanced_training_resumes_exactly(skewed, tmp_path, monkeypatch, capsys):
    args = ["--data", str(skewed), *TINY_TRAIN, "--epochs", "2", "--class-weights", "balanced", "--sampler", "balanced",
            "--checkpoint-every", "2", "--freeze", "none", "--no-feature-cache", "--seed", "5"]
    reference = tmp_path / "reference"
    snapshot_at(monkeypatch, 4, reference, tmp_path / "interrupted")  # steps 2, 4, epoch end, step 6: inside epoch 2
    assert main(["train", "--out", str(reference), *args]) == 0
    monkeypatch.undo()
    interrupted = tmp_path / "interrupted"
    assert load_torch_file(interrupted / "checkpoints" / "last.pt")["state"]["batch"] not in (0, None)
    assert main(["train", "--out", str(interrupted), "--resume", "--quiet"]) == 0
    final = lambda run: load_torch_file(run / "checkpoints" / "last.pt")["model"]  # noqa: E731
    a, b = final(reference), final(interrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)
    run = json.loads((reference / "run.json").read_text())
    assert {"balanced_accuracy", "macro_f1"} <= set(run["metrics"])
    capsys.readouterr()
    assert main(["eval", str(reference), "--quiet"]) == 0
    assert "balanced acc" in capsys.readouterr().out
