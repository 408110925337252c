"""No network: every download path fails fast with one line that names the offline choices."""
from __future__ import annotations

import socket

import pytest

from transferkit.cli import main


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("model,expected", [("timm/resnet18", "efficientnet_lite0"),
                                            ("hub:pytorch/vision:resnet18", "need a network")])
def test_network_models_fail_with_the_offline_choices(no_network, image_folder, tmp_path, capsys, model, expected):
    code = main(["train", "--data", str(image_folder), "--model", model, "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0]


def test_cifar10_without_network_is_a_clear_error(no_network, tmp_path, capsys):
    code = main(["train", "--data", "cifar10", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "CIFAR-10" in err and "fashion-mnist" in err


def test_models_offline_lists_the_packaged_backbone(capsys):
    assert main(["models", "--offline"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "packaged" in out and "timm/NAME" not in out


def test_config_file_values_and_flags_that_win(image_folder, tmp_path):
    import json

    config = tmp_path / "run.yaml"
    config.write_text("model: resnet18\nweights: none\nimage_size: 32\nepochs: 2\nbatch_size: 4\nlr: 3e-3\nquiet: true\n")
    out = tmp_path / "r"
    assert main(["train", "--config", str(config), "--data", str(image_folder), "--epochs", "1", "--out", str(out)]) == 0
    saved = json.loads((out / "run.json").read_text())["config"]
    assert saved["epochs"] == 1 and saved["lr"] == "3e-3" and saved["image_size"] == 32 and saved["model"] == "resnet18"
