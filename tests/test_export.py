"""Export to ONNX/TorchScript: parity with PyTorch, metadata, and predict --backend."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_image_folder, need_extra, own_cache

from transferkit.cli import main

need_extra("onnx", "export")
ort = need_extra("onnxruntime", "export")

TRAIN = ["--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--quiet"]
RUNS = {  # three backbone families and a custom head
    "resnet18": ["--model", "resnet18"],
    "mobilenet_v3_small": ["--model", "mobilenet_v3_small"],
    "efficientnet_lite0": ["--model", "efficientnet_lite0"],
    "resnet18_mlp": ["--model", "resnet18", "--head", "mlp:16,bn"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny trained run per entry of RUNS, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("export")
    with own_cache(root / "cache"):
        images = make_image_folder(root / "images", classes=("cat", "dog", "owl"), per_class=5)
        made = {}
        for name, flags in RUNS.items():
            assert main(["train", "--data", str(images), "--out", str(root / name), *flags, *TRAIN]) == 0
            made[name] = root / name
    return {"images": images, **made}


def predict_json(capsys, *args) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", *map(str, args), "--format", "json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_same_topk(a: list[dict], b: list[dict]) -> None:
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for ra, rb in zip(a, b):
        assert [p["index"] for p in ra["predictions"]] == [p["index"] for p in rb["predictions"]]
        assert np.allclose([p["prob"] for p in ra["predictions"]], [p["prob"] for p in rb["predictions"]], atol=1e-4)


@pytest.mark.parametrize("name", list(RUNS))
def test_onnx_export_matches_pytorch_and_predict_backend(runs, name, capsys):
    run = runs[name]
    assert main(["export", str(run), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "max abs logit difference" in out and "images of" in out  # real images, not random ones

    import onnx

    model = onnx.load(str(run / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["classes"]) == ["cat", "dog", "owl"]
    assert json.loads(props["preprocess"])["size"] == 32
    sidecar = json.loads((run / "model.onnx.json").read_text())
    assert sidecar["classes"] == ["cat", "dog", "owl"] and sidecar["preprocess"]["size"] == 32
    assert {"mean", "std", "interpolation"} <= set(sidecar["preprocess"])
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4

    # The batch dimension is dynamic: 1 and 5 images both run and agree with PyTorch.
    from transferkit.runs.rundir import load_run

    tm, _pre, _classes, _run = load_run(run)
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            expected = tm.net.eval()(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == (n, 3) and np.abs(got - expected).max() <= 1e-4

    images = runs["images"]
    assert_same_topk(predict_json(capsys, run, images, "--topk", "3"),
                     predict_json(capsys, run, images, "--topk", "3", "--backend", "onnx"))


def test_torchscript_export_matches(runs, capsys):
    run = runs["resnet18_mlp"]
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    assert (run / "model.torchscript").is_file()
    assert json.loads((run / "model.torchscript.json").read_text())["classes"] == ["cat", "dog", "owl"]
    images = runs["images"]
    assert_same_topk(predict_json(capsys, run, images, "--topk", "2"),
                     predict_json(capsys, run, images, "--topk", "2", "--backend", "torchscript"))


def test_failed_parity_check_leaves_nothing_behind(runs, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["resnet18"], run, ignore=shutil.ignore_patterns("model.onnx*"))
    import transferkit.deploy.export as export

    monkeypatch.setattr(export, "run_exported", lambda fmt, path, x: torch.full((len(x), 3), 7.0))
    assert main(["export", str(run), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "disagrees with PyTorch" in err and len(err.strip().splitlines()) == 1
    assert not (run / "model.onnx").exists() and not (run / "model.onnx.json").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".model.onnx")]  # no temporary file either


def test_predict_backend_needs_a_current_export(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["mobilenet_v3_small"], run, ignore=shutil.ignore_patterns("model.onnx*"))
    image = next((runs["images"] / "cat").iterdir())
    assert main(["predict", str(run), str(image), "--backend", "onnx"]) == 2
    assert "transferkit export" in capsys.readouterr().err

    assert main(["export", str(run)]) == 0
    # New weights after the export: the stale file must not answer for them.
    from safetensors.torch import load_file, save_file

    state = load_file(str(run / "model.safetensors"))
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, str(run / "model.safetensors"))
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--backend", "onnx"]) == 2
    assert "exported from other weights" in capsys.readouterr().err


def test_export_without_the_data_checks_random_inputs(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["resnet18"], run, ignore=shutil.ignore_patterns("model.onnx*"))
    conf = json.loads((run / "run.json").read_text())
    conf["config"]["data"] = str(tmp_path / "moved_away")
    (run / "run.json").write_text(json.dumps(conf))
    (run / "local.json").unlink()  # this machine's paths, where the data was, are gone too
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert "random inputs" in capsys.readouterr().out
    assert main(["export", str(run), "--format", "torchscript", "--opset", "17"]) == 2
