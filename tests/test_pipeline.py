"""End to end through main([...]): train -> run dir -> eval -> predict -> reload elsewhere."""
from __future__ import annotations

import json
import shutil

from transferkit.cli import main


def test_train_writes_a_complete_run_dir(tiny_run):
    for name in ("run.json", "model.safetensors", "metrics.csv", "checkpoints/last.pt", "checkpoints/best.safetensors"):
        assert (tiny_run / name).is_file(), name
    run = json.loads((tiny_run / "run.json").read_text())
    assert run["classes"] == ["cat", "dog"]
    assert run["preprocess"]["size"] == 32
    assert run["backbone"]["weights"] == "none"
    assert set(run["versions"]) >= {"torch", "torchvision", "transferkit"}
    assert 0.0 <= run["metrics"]["top1"] <= 1.0


def test_eval_json_has_the_contract_fields(tiny_run, capsys):
    assert main(["eval", str(tiny_run), "--format", "json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"top1", "top5", "loss", "n", "per_class"} <= set(result)
    assert result["n"] > 0 and 0 <= result["top1"] <= 1 and result["top5"] == 1.0  # 2 classes: top-5 covers all
    assert set(result["per_class"]) == {"cat", "dog"}
    assert {"precision", "recall", "f1", "support"} <= set(result["per_class"]["cat"])
    assert result["split"] == "val" and (tiny_run / "eval" / "val.json").is_file()  # no test split: val


def test_predict_json_and_reload_after_moving_the_run(tiny_run, image_folder, tmp_path, capsys):
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(tiny_run, moved)
    shutil.rmtree(tiny_run)
    assert main(["predict", str(moved), str(image_folder), "--format", "json", "--topk", "2", "--quiet"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 12  # the folder is walked recursively
    first = results[0]["predictions"]
    assert [p["label"] for p in first] and {p["label"] for p in first} <= {"cat", "dog"}
    assert abs(sum(p["prob"] for p in first) - 1.0) < 1e-4
    assert all(0 <= p["index"] < 2 for p in first)


def test_demo_runs_its_recipe_end_to_end(tmp_path, monkeypatch, capsys):
    """The demo's own steps on a small recipe (the real one is `make demo`, timed in benchmarks/)."""
    from transferkit.cli import demo

    monkeypatch.setitem(demo.RECIPE, "data", "digits")
    monkeypatch.setitem(demo.RECIPE, "image_size", 32)
    monkeypatch.setitem(demo.RECIPE, "epochs", 1)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "recipe: efficientnet_lite0" in printed and "first 7 stages frozen" in printed
    assert "digits test set (360 images): top-1" in printed and "feature cache on" in printed
    assert len(list((out / "samples").glob("*.png"))) == 5 and (out / "model.safetensors").is_file()
    assert main(["demo", "--out", str(out), "--quiet"]) == 0  # a second demo replaces its own run
