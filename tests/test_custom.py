"""Users' own heads, models and registered backbones, end to end through main([...]).

Every run is trained on scikit-learn's 8x8 digits; a user's file is deleted after training to
show that the run directory alone (its copy in RUN_DIR/code/) serves eval and predict.
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import fresh_process, user_copy
from PIL import Image
from safetensors.torch import load_file

from transferkit.cli import main
from transferkit.models import plugins

# Small and fast: from-scratch models need the full learning rate on every layer.
SCRATCH = ["--data", "digits", "--weights", "none", "--image-size", "8", "--epochs", "1", "--lr", "1e-2",
           "--backbone-lr-scale", "1", "--warmup-epochs", "0", "--quiet"]
pytestmark = pytest.mark.usefixtures("isolated_registry")


@pytest.fixture
def digit_pngs(tmp_path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray((digits.images[i] * 16).clip(0, 255).astype(np.uint8)).save(folder / f"{digits.target[i]}.png")
    return folder


def eval_and_predict(run: Path, pngs: Path, capsys, evaluate: bool = True, trust: bool = False) -> tuple[dict, list]:
    capsys.readouterr()
    scores = None
    trusting = ["--trust-code"] if trust else []
    if evaluate:
        assert main(["eval", str(run), "--format", "json", "--quiet", *trusting]) == 0
        scores = json.loads(capsys.readouterr().out)
    assert main(["predict", str(run), str(pngs), "--format", "json", "--topk", "3", "--quiet", *trusting]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 4 and all(len(p["predictions"]) == 3 for p in predictions)
    return scores, predictions


def test_custom_model_trains_and_serves_after_its_file_is_deleted(tmp_path, digit_pngs, capsys):
    source = user_copy(tmp_path, "custom_layers.py")
    run = tmp_path / "run"
    assert main(["train", "--model", f"{source}:MyCustomModel", "--freeze", "none", "--out", str(run), *SCRATCH]) == 0
    stored = json.loads((run / "run.json").read_text())
    assert stored["model"]["name"] == "@run/code/custom_layers.py:MyCustomModel"
    assert stored["backbone"]["source"] == "user"
    assert (run / "code" / "custom_layers.py").read_bytes() == source.read_bytes()

    source.unlink()
    scores, predictions = eval_and_predict(run, digit_pngs, capsys)
    assert scores["n"] == 360 and scores["top1"] > 0.5  # one epoch already learns the digits
    assert sum(p["predictions"][0]["label"] == Path(p["path"]).stem for p in predictions) >= 2

    # Head-only training of the user's model (its own weights as --weights PATH): the classifier
    # trains from cached features taken at its input; every other layer stays as it was.
    head_only = tmp_path / "head_only"
    capsys.readouterr()
    assert main(["train", "--data", "digits", "--model", f"{run}/code/custom_layers.py:MyCustomModel",
                 "--weights", str(run / "model.safetensors"), "--freeze", "backbone", "--out", str(head_only),
                 *SCRATCH[4:]]) == 0
    assert "feature cache: on" in capsys.readouterr().err
    before, after = load_file(str(run / "model.safetensors")), load_file(str(head_only / "model.safetensors"))
    assert all((before[k] == after[k]).all() for k in before if not k.startswith("classifier."))
    assert not (before["classifier.weight"] == after["classifier.weight"]).all()


@pytest.mark.parametrize("head", ["file", "mlp:64,dropout=0.2,bn"])
def test_custom_head_on_a_pretrained_backbone(head, tmp_path, digit_pngs, capsys):
    source = user_copy(tmp_path, "custom_layers.py")
    spec = f"{source}:TutorialHead" if head == "file" else head
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--model", "efficientnet_lite0", "--image-size", "32", "--head", spec,
                 "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    stored = json.loads((run / "run.json").read_text())
    assert stored["model"]["head"] == ("@run/code/custom_layers.py:TutorialHead" if head == "file" else head)
    source.unlink()
    # The final scores come from the run's own test pass; eval once is enough (it is the slow part).
    scores, _ = eval_and_predict(run, digit_pngs, capsys, evaluate=head == "file")
    assert stored["metrics"]["top1"] > 0.3  # a frozen ImageNet backbone on 32 px digits, one epoch
    assert scores is None or scores["top1"] == pytest.approx(stored["metrics"]["top1"])


BROKEN = textwrap.dedent('''
    import torch
    from torch import nn

    class Hidden(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.linear = nn.Linear(i, o)

        def forward(self, x):
            return torch.relu(self.linear(x))

    class Broken(nn.Module):  # conv gives 4 x 8 x 8 = 256 features, hidden expects 100
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.hidden = Hidden(100, 32)
            self.fc = nn.Linear(32, num_classes)

        def forward(self, x):
            return self.fc(self.hidden(torch.flatten(self.conv(x), 1)))

    class BadView(Broken):
        def forward(self, x):
            return self.fc(self.hidden(self.conv(x).view(-1, 100)))

    class NoLinear(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, num_classes, 1)

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    class Scaled(nn.Module):  # does more after its last Linear: cannot be cut there
        def __init__(self, num_classes=10):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU())
            self.fc = nn.Linear(32, num_classes)

        def forward(self, x):
            return self.fc(self.body(x)) * 2
''')


@pytest.mark.parametrize("cls, message", [
    ("Broken", "shape mismatch: hidden.linear expects 100 input features, got 256 from conv"),
    ("BadView", "forward() failed after layer conv (its output has shape (2, 4, 8, 8))"),
    ("NoLinear", "NoLinear has no nn.Linear layer"),
])
def test_model_mistakes_exit_2_with_one_line(cls, message, tmp_path, capsys):
    source = tmp_path / "models.py"
    source.write_text(BROKEN)
    code = main(["train", "--model", f"{source}:{cls}", "--freeze", "none", "--out", str(tmp_path / "run"), *SCRATCH])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and "\n" not in err and "Traceback" not in err


def test_a_model_that_does_more_after_its_classifier_trains_without_the_cache(tmp_path, capsys):
    source = tmp_path / "models.py"
    source.write_text(BROKEN)
    assert main(["train", "--model", f"{source}:Scaled", "--freeze", "backbone", "--out", str(tmp_path / "run"),
                 *SCRATCH]) == 0
    assert "cannot be cut there" in capsys.readouterr().err


def test_plugin_name_is_listed_trained_and_served_without_the_plugin(tmp_path, digit_pngs, capsys):
    plugin = user_copy(tmp_path, "plugin_backbone.py")
    assert main(["--plugin", str(plugin), "models", "--offline"]) == 0
    assert "tiny_convnet" in capsys.readouterr().out
    run = tmp_path / "run"
    # --plugin after the subcommand works too.
    assert main(["train", "--plugin", str(plugin), "--model", "tiny_convnet", "--freeze", "none", "--out", str(run),
                 *[a for a in SCRATCH if a not in ("--image-size", "8")]]) == 0
    stored = json.loads((run / "run.json").read_text())
    assert stored["model"]["plugin"] == "@run/code/plugin_backbone.py"
    assert stored["preprocess"]["size"] == 16 and stored["preprocess"]["mean"] == [0.5, 0.5, 0.5]

    fresh_process()
    plugin.unlink()
    assert main(["models", "--offline"]) == 0
    assert "tiny_convnet" not in capsys.readouterr().out
    # A new process runs the run's copy of the plugin only when told to (tests/test_trust.py has the rest).
    assert main(["eval", str(run), "--quiet"]) == 2
    assert "code/plugin_backbone.py (its plugin)" in capsys.readouterr().err
    eval_and_predict(run, digit_pngs, capsys, trust=True)


def test_entry_point_group_provides_names(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    (site / "tk_ep_demo-0.1.dist-info").mkdir(parents=True)
    (site / "tk_ep_demo-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: tk-ep-demo\nVersion: 0.1\n")
    (site / "tk_ep_demo-0.1.dist-info" / "entry_points.txt").write_text(
        "[transferkit.backbones]\nep_net = tk_ep_nets:EPNet\n")
    (site / "tk_ep_nets.py").write_text(textwrap.dedent('''
        from torch import nn

        class EPNet(nn.Sequential):  # a plain factory: the entry point's name registers it
            def __init__(self, num_classes=1000):
                super().__init__(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, num_classes))
    '''))
    monkeypatch.syspath_prepend(str(site))
    plugins.load_entry_points.cache_clear()
    assert main(["models", "--offline"]) == 0
    assert "ep_net" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", "--model", "ep_net", "--freeze", "none", "--out", str(run), *SCRATCH]) == 0
    assert json.loads((run / "run.json").read_text())["model"]["plugin"] is None  # the package provides it
    assert main(["eval", str(run), "--quiet"]) == 0

    sys.path.remove(str(site))  # the package is uninstalled
    importlib.invalidate_caches()
    fresh_process()
    capsys.readouterr()
    assert main(["eval", str(run), "--quiet"]) == 2
    assert "registered backbone 'ep_net', which is not registered now" in capsys.readouterr().err
    sys.modules.pop("tk_ep_nets", None)


def test_training_a_users_model_imports_neither_torchvision_nor_timm(tmp_path):
    """Both take seconds to import (core/lazy.py); a user's own model needs neither, and the run
    still records their versions."""
    model = tmp_path / "mine.py"
    model.write_text(textwrap.dedent("""
        import torch.nn as nn

        class Mine(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
                self.fc = nn.Linear(4, num_classes)

            def forward(self, x):
                return self.fc(self.features(x))
    """))
    code = ("import sys; from transferkit.cli import main; rc = main(sys.argv[1:]); "
            "print([m for m in ('torchvision', 'timm') if m in sys.modules]); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "train", "--model", f"{model}:Mine", *SCRATCH,
                           "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    versions = json.loads((tmp_path / "run" / "run.json").read_text())["versions"]
    assert versions["torchvision"][0].isdigit() and versions["timm"][0].isdigit()
