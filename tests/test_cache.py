"""The feature cache: hit, miss, invalidation, partial files, and equal results to the plain loop."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transferkit.cli import main
from transferkit.core.safeio import load_torch_file

BASE = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "2", "--batch-size", "4",
        "--quiet", "--seed", "3"]


def train(capsys, data, out, *extra) -> str:
    assert main(["train", "--data", str(data), "--out", str(out), *BASE, *extra]) == 0
    return next(line for line in capsys.readouterr().err.splitlines() if line.startswith("feature cache"))


def test_cache_hits_and_invalidates(tmp_path, image_folder, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    first = train(capsys, image_folder, tmp_path / "r1", *cache)
    assert "on" in first and "built" in first and "training fc" in first
    assert "reused 12 images" in train(capsys, image_folder, tmp_path / "r2", *cache)
    assert "built" in train(capsys, image_folder, tmp_path / "r3", *cache, "--image-size", "40")  # preprocessing
    assert "built" in train(capsys, image_folder, tmp_path / "r4", *cache, "--freeze", "4")        # freeze point
    assert "built" in train(capsys, image_folder, tmp_path / "r5", *cache, "--seed", "4")          # other random weights
    Image.new("RGB", (20, 20), (0, 0, 0)).save(image_folder / "cat" / "extra.png")
    assert "built" in train(capsys, image_folder, tmp_path / "r6", *cache)                          # data changed


def test_changed_weights_file_rebuilds(tmp_path, image_folder, capsys):
    from safetensors.torch import save_file

    from transferkit.models.registry import build_architecture

    cache = ["--cache-dir", str(tmp_path / "cache")]
    net, _ = build_architecture("resnet18")
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    args = ["--weights", str(weights), *cache]
    assert "built" in train(capsys, image_folder, tmp_path / "r1", *args)
    assert "reused" in train(capsys, image_folder, tmp_path / "r2", *args)
    state = {k: v.contiguous() + (0.01 if k == "conv1.weight" else 0) for k, v in net.state_dict().items()}
    save_file(state, str(weights))
    assert "built" in train(capsys, image_folder, tmp_path / "r3", *args)


def test_partial_or_stale_cache_is_rebuilt(tmp_path, image_folder, capsys):
    cache = tmp_path / "cache"
    train(capsys, image_folder, tmp_path / "r1", "--cache-dir", str(cache))
    folders = sorted(p.parent for p in cache.glob("features/*/meta.json"))
    assert len(folders) == 2  # train and val
    (folders[0] / "meta.json").unlink()  # as if killed before the cache was complete
    data = folders[1] / "features.npy"
    data.write_bytes(data.read_bytes()[:-64])  # a short file
    line = train(capsys, image_folder, tmp_path / "r2", "--cache-dir", str(cache))
    assert "built 12 images" in line  # both splits computed again
    assert sorted(p.parent for p in cache.glob("features/*/meta.json")) == folders


def test_cached_and_plain_training_agree(tmp_path, image_folder, capsys):
    train(capsys, image_folder, tmp_path / "cached", "--cache-dir", str(tmp_path / "cache"))
    plain = train(capsys, image_folder, tmp_path / "plain", "--no-feature-cache")
    assert "off (--no-feature-cache)" in plain
    a = load_torch_file(tmp_path / "cached" / "checkpoints" / "last.pt")["model"]
    b = load_torch_file(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    assert torch.equal(a["conv1.weight"], b["conv1.weight"])  # the frozen part never moved
    assert torch.allclose(a["fc.weight"], b["fc.weight"], atol=2e-3)  # fp16 features: tiny rounding only
    runs = [json.loads((tmp_path / r / "run.json").read_text())["metrics"] for r in ("cached", "plain")]
    assert runs[0]["top1"] == runs[1]["top1"]


def test_cache_is_off_with_nothing_frozen(tmp_path, image_folder, capsys):
    assert "freezes no whole leading stages" in train(capsys, image_folder, tmp_path / "r2", "--freeze", "none")


def test_random_flips_through_the_cache_train_as_the_plain_loop(tmp_path, image_folder, capsys):
    """--augment flip with the cache: mirrored features where the plain loop mirrors images."""
    cache = ["--cache-dir", str(tmp_path / "cache")]
    line = train(capsys, image_folder, tmp_path / "cached", *cache, "--augment", "flip")
    assert "random flips from mirrored copies" in line and "built 22 images" in line  # 10 train x 2 + 2 val
    assert "reused 22 images" in train(capsys, image_folder, tmp_path / "again", *cache, "--augment", "flip")
    train(capsys, image_folder, tmp_path / "plain", "--augment", "flip", "--no-feature-cache")
    train(capsys, image_folder, tmp_path / "unflipped", *cache)
    fc = {r: load_torch_file(tmp_path / r / "checkpoints" / "last.pt")["model"]["fc.weight"]
          for r in ("cached", "plain", "unflipped")}
    rounding = (fc["cached"] - fc["plain"]).abs().max()  # fp16 features: tiny rounding only
    assert rounding < 1e-3 and (fc["unflipped"] - fc["plain"]).abs().max() > 10 * rounding  # flips matter: it can fail


def test_embed_writes_features_with_labels_and_paths(tiny_run, image_folder, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    assert main(["embed", str(tiny_run), str(image_folder), "--out", str(out), "--quiet"]) == 0
    assert re.search(r"wrote 12 embeddings of dimension 512", capsys.readouterr().out)
    data = np.load(out)
    assert data["embedding"].shape == (12, 512)
    assert sorted(set(data["label_name"].tolist())) == ["cat", "dog"]
    for path, name in zip(data["path"], data["label_name"]):
        assert Path(path).parent.name == name
    assert set(data["split"].tolist()) == {"train", "val"}


def test_embed_with_a_pretrained_model(tmp_path, image_folder, capsys):
    out = tmp_path / "emb.npz"
    assert main(["embed", "--model", "efficientnet_lite0", str(image_folder), "--out", str(out), "--quiet"]) == 0
    data = np.load(out)
    assert data["embedding"].shape == (12, 1280) and np.isfinite(data["embedding"]).all()
    assert sorted(set(data["label_name"].tolist())) == ["cat", "dog"]
