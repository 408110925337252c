"""What a run directory promises other libraries is checked against its weights: torchvision's
constructor arguments, heads that no library builds, the calibration temperature."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from transferkit.cli import main
from transferkit.models.transfer import create_model
from transferkit.runs.hubfolder import write_model_folder


def rewrite(run_dir, model: str, head: str = "linear", **changes) -> dict:
    """The tiny run turned into a run of ``model`` with ``head`` (random weights of that shape)."""
    run = json.loads((run_dir / "run.json").read_text())
    tm = create_model(model, len(run["classes"]), "none", head)
    save_file({k: v.contiguous() for k, v in tm.net.state_dict().items()}, str(run_dir / "model.safetensors"))
    run["model"].update(name=model, head=head)
    run["backbone"].update(tm.info.to_json(), name=model)
    run.update(changes)
    (run_dir / "run.json").write_text(json.dumps(run))
    (run_dir / "config.json").unlink(missing_ok=True)
    return run


@pytest.mark.parametrize("model,kwargs", [("inception_v3", {"aux_logits": True, "init_weights": False}),
                                          ("googlenet", {"aux_logits": True, "init_weights": False}),
                                          ("mobilenet_v3_small", {})])
def test_torchvision_recipe_loads_strictly(tiny_run, model, kwargs):
    run = rewrite(tiny_run, model)
    write_model_folder(tiny_run)
    card = (tiny_run / "README.md").read_text()
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    assert f'torchvision.models.get_model("{model}", num_classes=2{args})' in card
    net = torchvision.models.get_model(model, num_classes=len(run["classes"]), **kwargs)
    net.load_state_dict(load_file(str(tiny_run / "model.safetensors")))  # strict: every key, every shape
    assert not (tiny_run / "config.json").exists()  # no timm architecture with these weights' names
    front = yaml.safe_load(card.split("---\n")[1])
    assert "library_name" not in front and "torchvision" in front["tags"]


def test_a_head_no_library_builds_gets_no_promise(tiny_run):
    rewrite(tiny_run, "resnet18", head="mlp:16")
    write_model_folder(tiny_run)
    card = (tiny_run / "README.md").read_text()
    assert not (tiny_run / "config.json").exists()
    assert "get_model" not in card and "local-dir" not in card and "transferkit's own arrangement" in card


def test_the_temperature_travels_with_the_weights(tiny_run, capsys):
    rewrite(tiny_run, "resnet18", calibration={"temperature": 1.75, "split": "val", "status": "fitted"})
    assert main(["report", str(tiny_run)]) == 0  # report rewrites the card and config.json
    assert "README.md" in capsys.readouterr().out
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["transferkit"]["temperature"] == 1.75
    card = (tiny_run / "README.md").read_text()
    assert "(model(x) / 1.75).softmax(-1)" in card and "T = 1.75" in card
    assert main(["report", str(tiny_run), "--out", str(tiny_run / "elsewhere.html")]) == 0


def test_model_safetensors_metadata_of_a_finished_run(tiny_run):
    with safe_open(str(tiny_run / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    run = json.loads((tiny_run / "run.json").read_text())
    assert meta["format"] == "pt" and meta["architecture"] == "resnet18" and meta["epoch"] == str(run["best_epoch"])
    assert json.loads(meta["classes"]) == run["classes"] and json.loads(meta["preprocess"])["mean"] == run["preprocess"]["mean"]
    assert "temperature" not in meta or float(meta["temperature"]) == run["calibration"]["temperature"]
    with safe_open(str(tiny_run / "checkpoints" / "best.safetensors"), "pt") as f:
        assert f.metadata()["epoch"] == str(run["best_epoch"])
    assert torch.equal(load_file(str(tiny_run / "model.safetensors"))["fc.weight"],
                       load_file(str(tiny_run / "checkpoints" / "best.safetensors"))["fc.weight"])
