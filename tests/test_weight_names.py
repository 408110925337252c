"""The ecosystem's weight names: torchvision's enums and timm's tags, found offline in the torch hub
and Hugging Face caches with the hash those caches recorded checked, for train, predict and embed."""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.models import MobileNet_V2_Weights, get_model

from transferkit.cli import main
from transferkit.core.errors import UserError
from transferkit.models.registry import create_backbone


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def mobilenet_v1_cached(torch_home, monkeypatch):
    """torchvision's MobileNetV2 V1 file (not DEFAULT, which is V2) in the torch hub cache, under a
    name that carries its sha256 prefix as torchvision's own file names do."""
    torch.manual_seed(0)
    tmp = torch_home / "tmp.pth"
    torch.save(get_model("mobilenet_v2").state_dict(), tmp)
    digest = sha256(tmp)
    name = f"mobilenet_v2-{digest[:8]}.pth"
    tmp.rename(torch_home / name)
    monkeypatch.setattr(MobileNet_V2_Weights.IMAGENET1K_V1.value, "url", f"https://download.pytorch.org/models/{name}")
    return torch_home / name, digest


def test_torchvision_weight_names_are_found_in_the_cache_offline(no_network, mobilenet_v1_cached):
    path, digest = mobilenet_v1_cached
    for weights in ("imagenet", "IMAGENET1K_V1", "MobileNet_V2_Weights.IMAGENET1K_V1"):
        net, info = create_backbone("mobilenet_v2", weights)
        assert info.variant == "IMAGENET1K_V1" and info.weights_source == f"cache {path}", weights
        assert info.weights_sha256 == digest and len(info.imagenet_classes) == 1000
    assert torch.equal(net.features[0][0].weight, torch.load(path, weights_only=True)["features.0.0.weight"])
    with pytest.raises(UserError, match="cannot download .* offline choices"):
        create_backbone("mobilenet_v2", "DEFAULT")  # V2: not cached, and no network


def test_a_damaged_cache_file_is_refused(torch_home):
    torch.save(get_model("resnet18").state_dict(), torch_home / "resnet18-f37072fd.pth")  # not torchvision's file
    with pytest.raises(UserError, match="resnet18-f37072fd.pth is damaged .* delete it"):
        create_backbone("resnet18", "imagenet")


@pytest.mark.parametrize("weights,message", [
    ("IMAGENET1K_V9", "not a weight name of resnet18, which takes imagenet, none, PATH or DEFAULT, IMAGENET1K_V1"),
    ("MobileNet_V2_Weights.IMAGENET1K_V1", "weights of another model"),
    ("missing.pth", "weights file not found"),
])
def test_unknown_weight_names_are_user_errors(image_folder, capsys, weights, message):
    code = main(["predict", "--model", "resnet18", "--weights", weights, str(image_folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_models_offline_lists_the_weight_names_present(mobilenet_v1_cached, capsys):
    assert main(["models", "--offline"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "IMAGENET1K_V1" in rows["mobilenet_v2"] and "IMAGENET1K_V2" not in rows["mobilenet_v2"]
    assert "resnet18" not in rows


def test_predict_with_a_weight_name(no_network, mobilenet_v1_cached, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(photo)
    assert main(["predict", "--model", "mobilenet_v2", "--weights", "IMAGENET1K_V1", str(photo), "--format", "json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert len(result["predictions"]) == 5 and result["predictions"][0]["label"] in MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    assert main(["predict", "--weights", "IMAGENET1K_V1", str(tmp_path), str(photo)]) == 2  # a run brings its own


def fake_hf_cache(root: Path, repo: str, state: dict) -> Path:
    """A Hugging Face hub cache entry laid out as hf_hub_download leaves it: the snapshot file is a
    link to a blob named by the file's sha256."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "blobs").mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    tmp = folder / "tmp.safetensors"
    save_file(state, str(tmp))
    blob = folder / "blobs" / sha256(tmp)
    tmp.rename(blob)
    os.symlink(os.path.join("..", "..", "blobs", blob.name), snapshot / "model.safetensors")
    return blob


@pytest.fixture
def timm_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    torch.manual_seed(1)
    state = timm.create_model("resnet18").state_dict()
    return fake_hf_cache(tmp_path / "hf", "timm/resnet18.a1_in1k", state), state


def test_timm_tags_are_found_in_the_hf_cache_offline(no_network, timm_cached, image_folder, tmp_path, capsys):
    blob, state = timm_cached
    for model, weights in (("timm/resnet18", "timm/resnet18.a1_in1k"), ("timm/resnet18", "a1_in1k"),
                           ("timm/resnet18", "imagenet"), ("timm/resnet18.a1_in1k", "imagenet")):
        net, info = create_backbone(model, weights)
        assert info.variant == "resnet18.a1_in1k" and info.weights_sha256 == blob.name, (model, weights)
    assert torch.equal(net.fc.weight, state["fc.weight"])
    assert main(["models", "--offline"]) == 0
    assert "timm/resnet18.a1_in1k" in next(r for r in capsys.readouterr().out.splitlines() if r.startswith("timm/resnet18 "))
    out = tmp_path / "emb.npz"
    assert main(["embed", "--model", "timm/resnet18", "--weights", "timm/resnet18.a1_in1k", str(image_folder),
                 "--out", str(out), "--quiet"]) == 0
    assert np.load(out)["embedding"].shape[1] == 512
    with pytest.raises(UserError, match="cannot download timm weights timm/resnet18.a2_in1k .* offline choices"):
        create_backbone("timm/resnet18", "a2_in1k")  # a tag that is not cached, and no network


def test_a_damaged_hf_blob_is_refused(timm_cached):
    blob, _ = timm_cached
    data = bytearray(blob.read_bytes())
    data[-100] ^= 1  # one flipped bit in the tensor data
    blob.write_bytes(bytes(data))
    with pytest.raises(UserError, match="is damaged"):
        create_backbone("timm/resnet18", "timm/resnet18.a1_in1k")


def test_a_run_from_a_timm_tag_names_its_base_model(no_network, timm_cached, image_folder, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--model", "timm/resnet18", "--weights", "timm/resnet18.a1_in1k",
                 "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--quiet", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["backbone"]["variant"] == "resnet18.a1_in1k" and run["backbone"]["weights"] == "timm/resnet18.a1_in1k"
    assert "base_model: timm/resnet18.a1_in1k" in (out / "README.md").read_text()
    assert main(["predict", str(out), str(image_folder), "--quiet"]) == 0  # the run rebuilds offline
