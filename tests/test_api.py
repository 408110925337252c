"""The Python API (transferkit.fit / evaluate / predict / create_model) for notebook users."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, fresh_process, user_copy
from PIL import Image

import transferkit as tk
from transferkit.core.errors import UserError
from transferkit.models.plugins import load_plugins

SCRATCH = dict(weights="none", freeze="none", image_size=8, epochs=1, lr=1e-2, backbone_lr_scale=1,
               warmup_epochs=0, quiet=True)
pytestmark = pytest.mark.usefixtures("isolated_registry")


class Digits(torch.utils.data.Dataset):
    """scikit-learn's digits as a user's Dataset: float tensors in [0, 1] or PIL images of mixed sizes."""

    classes = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

    def __init__(self, start: int, stop: int, pil: bool = False):
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images, self.targets = digits.images[start:stop] / 16.0, digits.target[start:stop]
        self.pil = pil

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        if self.pil:  # a folder of photos has many sizes: every other image is 12x10
            image = Image.fromarray((self.images[i] * 255).astype(np.uint8))
            return (image.resize((12, 10)) if i % 2 else image), int(self.targets[i])
        return torch.tensor(self.images[i], dtype=torch.float32)[None], torch.tensor(self.targets[i])


def test_import_is_light_and_the_api_names_stay_functions():
    code = "import sys, transferkit; assert 'torch' not in sys.modules; print(transferkit.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "fit" in out and "predict" in out
    import transferkit.deploy.predict  # noqa: F401
    import transferkit.runs.evaluate  # noqa: F401  (the submodule of the same name must not replace the function)

    assert callable(tk.evaluate) and callable(tk.predict) and tk.evaluate.__module__ == "transferkit.api"


def test_create_model_builds_a_user_model_for_the_classes():
    spec = f"{EXAMPLES / 'custom_layers.py'}:MyCustomModel"
    tm = tk.create_model(spec, num_classes=3, weights="none")
    assert tm.net(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
    assert tm.layout.classifier == "classifier" and tm.info.source == "user"


def test_fit_evaluate_predict_a_custom_model(tmp_path):
    source = user_copy(tmp_path, "custom_layers.py")
    result = tk.fit("digits", model=f"{source}:MyCustomModel", out=str(tmp_path / "run"), **SCRATCH)
    json.dumps(result)  # plain Python objects
    assert result["split"] == "test" and result["metrics"]["top1"] > 0.5
    source.unlink()  # the run keeps its own copy

    scores = tk.evaluate(result["run_dir"])
    assert scores["n"] == 360 and scores["top1"] == pytest.approx(result["metrics"]["top1"])
    from sklearn.datasets import load_digits

    digit = load_digits().images[0] / 16.0  # a zero
    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray((digit * 255).astype(np.uint8)).save(folder / "0.png")
    images = [str(folder), Image.fromarray((digit * 255).astype(np.uint8)),
              torch.tensor(digit, dtype=torch.float32)[None], torch.tensor(digit * 255, dtype=torch.uint8)]
    out = tk.predict(result["run_dir"], images, topk=2)
    assert [r.get("path", r.get("image")) for r in out] == [str(folder / "0.png"), 1, 2, 3]
    assert all(len(r["predictions"]) == 2 for r in out)
    assert len({r["predictions"][0]["label"] for r in out}) == 1  # the same image, four ways


def test_fit_a_custom_head_on_a_pretrained_backbone(tmp_path):
    source = user_copy(tmp_path, "custom_layers.py")
    result = tk.fit("digits", model="efficientnet_lite0", head=f"{source}:TutorialHead", image_size=32, epochs=1,
                    out=str(tmp_path / "run"), quiet=True)
    assert result["cached"] and result["metrics"]["top1"] > 0.3
    source.unlink()
    assert tk.predict(result["run_dir"], torch.zeros(3, 8, 8), topk=1)[0]["predictions"][0]["label"].isdigit()


def test_fit_a_plugin_backbone(tmp_path):
    load_plugins([str(user_copy(tmp_path, "plugin_backbone.py"))])
    result = tk.fit("digits", model="tiny_convnet", out=str(tmp_path / "run"),
                    **{**SCRATCH, "image_size": 0})  # 0: the size the plugin registered (16)
    fresh_process()  # a new session: tiny_convnet comes back from the run's copy of the plugin, when trusted
    with pytest.raises(UserError, match="trust_code=True"):
        tk.predict(result["run_dir"], [torch.zeros(1, 8, 8)])
    assert len(tk.predict(result["run_dir"], [torch.zeros(1, 8, 8)], trust_code=True)[0]["predictions"]) == 5


def test_fit_on_torch_datasets(tmp_path):
    train, val, test = Digits(0, 300), Digits(300, 360, pil=True), Digits(1500, 1600)
    result = tk.fit(train, model=f"{EXAMPLES / 'custom_layers.py'}:MyCustomModel", val=val,
                    out=str(tmp_path / "run"), **{**SCRATCH, "epochs": 3})
    run = json.loads((Path(result["run_dir"]) / "run.json").read_text())
    assert run["classes"] == Digits.classes and run["data"]["spec"] == "python:Digits"
    assert run["data"]["train"] == 300 and run["data"]["val"] == 60
    scores = tk.evaluate(result["run_dir"], data=test)
    assert scores["n"] == 100 and scores["top1"] > 0.3
    with pytest.raises(UserError, match="trained on a Python Dataset"):
        tk.evaluate(result["run_dir"])


class Normalized(Digits):
    def __getitem__(self, i):
        image, label = super().__getitem__(i)
        return (image - 0.5) / 0.25, label


@pytest.mark.parametrize("call, message", [
    (lambda out: tk.fit(Normalized(0, 50), out=out), "without Normalize"),
    (lambda out: tk.fit([(torch.zeros(3, 8, 8), 0.5)], out=out), "give an int class index or a class name"),
    (lambda out: tk.fit("digits", out=out, image_sise=8), "unknown settings \\['image_sise'\\]"),
    (lambda out: tk.fit(42, out=out), "not a int"),
])
def test_api_mistakes_are_user_errors(call, message, tmp_path):
    with pytest.raises(UserError, match=message):
        call(str(tmp_path / "run"))
