"""Resume with the feature cache and pretrained weights, and what a resume refuses or keeps.

The cached cases stop a run in-process right after its epoch-1 checkpoint (as a kill there would),
delete the feature cache, resume, and compare with an uninterrupted run.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, killed_after_first_checkpoint, make_image_folder

from transferkit.cli import main
from transferkit.core.config import TrainConfig
from transferkit.core.safeio import load_torch_file

CACHED = ["--image-size", "32", "--batch-size", "4", "--epochs", "2", "--seed", "1", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("resume") / "images", per_class=8, size=24)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """'Pretrained' resnet18 weights: a fixed random state, unlike any a --seed would draw."""
    from safetensors.torch import save_file

    from transferkit.models.registry import build_architecture

    torch.manual_seed(12345)
    net, _ = build_architecture("resnet18")
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def cache_line(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("feature cache"))


def largest_difference(a: Path, b: Path) -> float:
    ours, theirs = (load_torch_file(r / "checkpoints" / "last.pt")["model"] for r in (a, b))
    assert ours.keys() == theirs.keys()
    return max(float((ours[k].double() - theirs[k].double()).abs().max()) for k in ours if ours[k].is_floating_point())


@pytest.mark.parametrize("model, freeze", [("file", "backbone"), ("file", "3"), ("efficientnet_lite0", "7")],
                         ids=["resnet18-file-backbone", "resnet18-file-freeze3", "lite0-imagenet-freeze7"])
def test_resume_with_the_cache_deleted_matches_the_uninterrupted_run(data, weights_file, tmp_path, capsys, monkeypatch,
                                                                     model, freeze):

    args = (["--model", "resnet18", "--weights", str(weights_file)] if model == "file"
            else ["--model", model, "--weights", "imagenet"]) + ["--freeze", freeze, *CACHED]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["train", "--data", str(data), "--out", str(whole), "--cache-dir", str(tmp_path / "c1"), *args]) == 0
    assert "feature cache: on" in cache_line(capsys.readouterr().err)

    killed_after_first_checkpoint(monkeypatch, ["train", "--data", str(data), "--out", str(cut), "--cache-dir", str(tmp_path / "c2"), *args])
    assert load_torch_file(cut / "checkpoints" / "last.pt")["state"]["epoch"] == 1
    shutil.rmtree(tmp_path / "c2")
    capsys.readouterr()
    assert main(["train", "--out", str(cut), "--resume", "--quiet"]) == 0
    assert "built" in cache_line(capsys.readouterr().err)  # from the checkpoint's weights, not a random init
    assert largest_difference(cut, whole) <= 1e-5


def test_a_cache_filled_by_other_weights_is_never_reused(data, weights_file, tmp_path, capsys, monkeypatch):
    """The key is a hash of the front's own tensors: weights that claim another file's sha256 (as a
    resume once did for a random init) get their own cache instead of the other weights' features."""
    from transferkit.models import registry
    from transferkit.models.weights import resolve_file

    args = ["--model", "resnet18", "--weights", str(weights_file), "--cache-dir", str(tmp_path / "cache"), *CACHED]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a"), *args]) == 0
    assert "built" in cache_line(capsys.readouterr().err)

    def other_tensors_same_claim(path):
        state, source, sha = resolve_file(path)
        return {k: v + 0.01 if k == "conv1.weight" else v for k, v in state.items()}, source, sha

    monkeypatch.setattr(registry, "resolve_file", other_tensors_same_claim)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b"), *args]) == 0
    assert "built" in cache_line(capsys.readouterr().err)
    monkeypatch.setattr(registry, "resolve_file", resolve_file)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "c"), *args]) == 0
    line = cache_line(capsys.readouterr().err)
    assert "reused" in line and "built" not in line  # the first run's cache, for the first run's weights


def test_resume_refuses_renamed_classes_and_changed_flags_but_extends_epochs(tiny_run, image_folder, capsys):
    assert main(["train", "--out", str(tiny_run), "--resume", "--lr", "0.5", "--quiet"]) == 2
    assert "--lr 0.5 (the run has 1e-3)" in capsys.readouterr().err
    (image_folder / "dog").rename(image_folder / "wolf")  # same number of classes, other names
    assert main(["train", "--out", str(tiny_run), "--resume", "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "classes" in err and "wolf" in err and len(err.strip().splitlines()) == 1
    (image_folder / "wolf").rename(image_folder / "dog")
    assert main(["train", "--out", str(tiny_run), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert load_torch_file(tiny_run / "checkpoints" / "last.pt")["state"]["epoch"] == 2


def test_resume_keeps_the_batch_size_the_run_chose(image_folder, tmp_path, monkeypatch):
    """--batch-size auto is decided once and stored in the checkpoint: a resume that would choose
    another size (another GPU, other free memory) keeps the run's, and with it its schedule."""
    from transferkit.train import setup

    out = tmp_path / "run"
    args = [a if a != "4" else "auto" for a in TINY_TRAIN]
    monkeypatch.setattr(setup, "auto_batch_size", lambda *a, **k: 3)
    assert main(["train", "--data", str(image_folder), "--out", str(out), *args]) == 0
    assert load_torch_file(out / "checkpoints" / "last.pt")["batch_size"] == 3
    monkeypatch.setattr(setup, "auto_batch_size", lambda *a, **k: 5)
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0
    state = load_torch_file(out / "checkpoints" / "last.pt")
    # 10 training images in batches of 3: 3 steps per epoch (the last batch of 1 joins the one before)
    assert state["batch_size"] == 3 and state["state"]["global_step"] == 2 * 3


def test_a_second_torchrun_restart_continues_too(tmp_path, monkeypatch):
    """The first restart saves its settings with resume=True; the second must still recognise them."""
    from transferkit.core import distributed as dist
    from transferkit.engine.checkpoint import save_checkpoint
    from transferkit.train.setup import restarted_state

    cfg = TrainConfig(data="digits", out=str(tmp_path / "run"))
    save_checkpoint(tmp_path / "run", {"model": {}, "config": {**cfg.to_json(), "resume": True}})
    monkeypatch.setattr(dist, "restart_count", lambda: 2)
    assert restarted_state(cfg)["config"]["resume"] is True
    assert restarted_state(TrainConfig(data="digits", out=str(tmp_path / "run"), lr="0.5")) is None  # another command


def test_best_weights_are_repaired_or_refused_on_resume(tmp_path):
    from transferkit.core.errors import UserError
    from transferkit.engine.checkpoint import best_epoch_on_disk, repair_best, save_best

    model = {"w": torch.ones(2)}
    # Killed between last.pt (which records best epoch 2) and best.safetensors: epoch 1's best is on disk.
    save_best(tmp_path, {"w": torch.zeros(2)}, 1)
    repair_best(tmp_path, {"best": {"epoch": 2}, "state": {"epoch": 2, "batch": 0}, "model": model})
    assert best_epoch_on_disk(tmp_path) == 2
    # A best written by an attempt whose checkpoint never landed (epoch 3, checkpoint at epoch 2's
    # best from mid-epoch): the run cannot know which weights those are.
    save_best(tmp_path, {"w": torch.zeros(2)}, 3)
    with pytest.raises(UserError, match="does not hold epoch 2"):
        repair_best(tmp_path, {"best": {"epoch": 2}, "state": {"epoch": 2, "batch": 5}, "model": model})
