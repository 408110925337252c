"""--recipe lpft: a linear probe fitted to convergence, then fine-tuning from it, in one run that
resumes exactly across the two phases."""
from __future__ import annotations

import json

import torch
from conftest import make_image_folder
from snapshots import snapshot_at

from transferkit.cli import main
from transferkit.core.safeio import load_torch_file
from transferkit.models.layout import get_module
from transferkit.runs.rundir import load_run
from transferkit.train.recipes import PROBE_L2

ARGS = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "4", "--quiet",
        "--recipe", "lpft", "--freeze", "3", "--epochs", "2", "--seed", "3"]


def test_lpft_probes_then_fine_tunes_and_resumes_across_the_phases(tmp_path, monkeypatch, capsys):
    images = make_image_folder(tmp_path / "images", classes=("cat", "dog", "owl"), per_class=8)
    reference = tmp_path / "reference"
    after_probe = tmp_path / "after-probe"
    snapshot_at(monkeypatch, 1, reference, after_probe)  # the checkpoint written right after the probe
    assert main(["train", "--data", str(images), "--out", str(reference), *ARGS]) == 0
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "linear probe" in err and "fine-tuning from it" in err
    run = json.loads((reference / "run.json").read_text())
    probe = run["recipe"]["linear_probe"]
    assert run["recipe"]["name"] == "lpft" and probe["l2"] in PROBE_L2 and probe["evaluations"] > len(PROBE_L2)
    assert "linear probe first" in (reference / "report.html").read_text()

    # The probed head is what fine-tuning starts from: it separates the training images already,
    # with the rest of the network exactly as initialised.
    state = load_torch_file(after_probe / "checkpoints" / "last.pt")
    assert state["state"] == {"epoch": 0, "batch": 0, "global_step": 0, "sums": {"loss": 0.0, "correct": 0, "n": 0}}
    assert state["recipe"]["linear_probe"] == probe
    assert main(["train", "--out", str(after_probe), "--resume", "--quiet"]) == 0
    assert "linear probe" not in capsys.readouterr().err  # a resume does not probe again
    a, b = (load_torch_file(r / "checkpoints" / "last.pt")["model"] for r in (reference, after_probe))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((after_probe / "run.json").read_text())["recipe"]["linear_probe"] == probe


def test_lpft_needs_something_to_fine_tune(image_folder, tmp_path, capsys):
    assert main(["train", "--data", str(image_folder), "--out", str(tmp_path / "r"), *ARGS, "--freeze", "backbone"]) == 2
    assert "--recipe lpft fine-tunes after the linear probe" in capsys.readouterr().err


def test_the_probe_trains_only_the_head(tmp_path, monkeypatch):
    images = make_image_folder(tmp_path / "images", per_class=6)
    snapshot_at(monkeypatch, 1, tmp_path / "run", tmp_path / "probed")
    assert main(["train", "--data", str(images), "--out", str(tmp_path / "run"), *ARGS, "--epochs", "1"]) == 0
    probed = load_torch_file(tmp_path / "probed" / "checkpoints" / "last.pt")["model"]
    tm, *_ = load_run(tmp_path / "run")
    torch.manual_seed(3)
    from transferkit.models.transfer import create_model

    fresh = create_model("resnet18", 2, "none").net.state_dict()
    head = {k for k in probed if k.startswith("fc.")}
    assert head and all(not torch.equal(probed[k], fresh[k]) for k in head)
    assert all(torch.equal(probed[k], fresh[k]) for k in probed if k not in head and probed[k].is_floating_point())
    assert get_module(tm.net, "fc") is not None
