"""Few-shot: --shots K, and heads fitted without gradient steps (--head prototype | knn:K) that make
ordinary run directories (eval, predict, export, serve)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TRAIN, make_image_folder, need_extra, own_cache

from transferkit.cli import main
from transferkit.core.safeio import load_torch_file
from transferkit.deploy.serve import Service
from transferkit.models.fewshot import KNNHead, PrototypeHead
from transferkit.train.setup import shots_per_class


def simpleshot_reference(train, labels, test):
    """Wang et al. 2019, CL2N + nearest class mean (Euclidean), written out plainly."""
    mu = train.mean(0, keepdim=True)
    f = lambda x: F.normalize(x - mu, dim=1)  # noqa: E731
    centroids = torch.stack([f(train)[labels == c].mean(0) for c in labels.unique()])
    return torch.cdist(f(test), centroids).argmin(1)


def clusters(n=600, k=5, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    means = torch.randn(k, d, generator=g)
    x = means[y] + 2.0 * torch.randn(n, d, generator=g) + 8.0 * torch.randn(1, d, generator=g)  # a large common offset
    return x, y


def test_prototype_head_is_simpleshot():
    x, y = clusters()
    head = PrototypeHead(32, 5)
    head.fit(x[:50], y[:50])
    assert torch.equal(head(x[50:]).argmax(1), simpleshot_reference(x[:50], y[:50], x[50:]))
    assert not list(head.parameters())  # no gradient steps: buffers only


def test_knn_head_votes_and_reloads_with_another_support_size():
    x, y = clusters()
    head = KNNHead(32, 5, k=1)
    head.fit(x[:100], y[:100])
    z = F.normalize(x - x[:100].mean(0), dim=1)
    nearest = (z[100:] @ z[:100].t()).argmax(1)
    assert torch.equal(head(x[100:]).argmax(1), y[:100][nearest])
    fresh = KNNHead(32, 5, k=1)  # built before the support set is known, as a run's model is rebuilt
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh(x[100:]), head(x[100:]))
    five = KNNHead(32, 5, k=5)
    five.fit(x[:100], y[:100])
    probs = five(x[100:]).softmax(1)
    assert torch.isfinite(probs).all() and (probs.max(1).values < 1).all()


def test_shots_are_k_per_class_and_follow_the_seed():
    labels = np.repeat(np.arange(4), [10, 7, 3, 12])
    picked = shots_per_class(labels, 5, seed=0)
    assert np.bincount(labels[picked]).tolist() == [5, 5, 3, 5]  # a class with fewer keeps all it has
    assert np.array_equal(picked, shots_per_class(labels, 5, seed=0))
    assert not np.array_equal(picked, shots_per_class(labels, 5, seed=1))


@pytest.fixture(scope="module")
def fewshot_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot")
    with own_cache(root / "cache"):
        images = make_image_folder(root / "images", classes=("cat", "dog", "owl"), per_class=10)
        for name, head in (("prototype", "prototype"), ("knn", "knn:3")):
            assert main(["train", "--data", str(images), "--out", str(root / name), *TINY_TRAIN,
                         "--head", head, "--shots", "4"]) == 0
    return root


@pytest.mark.parametrize("name", ["prototype", "knn"])
def test_a_fewshot_run_is_an_ordinary_run_directory(fewshot_runs, name, capsys):
    run_dir = fewshot_runs / name
    run = json.loads((run_dir / "run.json").read_text())
    assert run["data"]["train"] == 12 and run["config"]["shots"] == 4  # 4 of each of the 3 classes
    assert run["best_epoch"] == 1
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # one pass, no epochs
    checkpoint = load_torch_file(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["optimizer"] is None  # nothing was optimised
    image = sorted((fewshot_runs / "images" / "dog").glob("*.png"))[-1]
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(image), "--format", "json", "--quiet"]) == 0
    torch_preds = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert sum(p["prob"] for p in torch_preds) == pytest.approx(1, abs=1e-4)
    assert main(["eval", str(run_dir), "--format", "json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 6
    need_extra("onnxruntime", "export")
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0  # checked against PyTorch within 1e-4
    assert main(["predict", str(run_dir), str(image), "--backend", "onnx", "--format", "json", "--quiet"]) == 0
    capsys.readouterr()
    service = Service.from_run(run_dir, "onnx")
    assert service.temperature == run["calibration"]["temperature"]


def test_a_resumed_fewshot_run_refits_nothing(fewshot_runs, capsys):
    run_dir = fewshot_runs / "prototype"
    def saved():  # tensors and metadata (safetensors may write the metadata's keys in another order)
        from safetensors import safe_open
        with safe_open(str(run_dir / "model.safetensors"), "pt") as f:
            return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}

    (meta, before) = saved()
    assert main(["train", "--out", str(run_dir), "--resume", "--quiet"]) == 0
    (meta_after, after) = saved()
    assert meta_after == meta and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "without gradient steps" not in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--head", "prototype", "--freeze", "none"], "use it with --freeze backbone"),
    (["--head", "knn"], "give the number of neighbours"),
    (["--shots", "2", "--train-limit", "5"], "give one of them"),
    (["--shots", "-1"], "must not be negative"),
])
def test_fewshot_mistakes_are_one_line(image_folder, tmp_path, capsys, flags, message):
    assert main(["train", "--data", str(image_folder), "--out", str(tmp_path / "r"), *TINY_TRAIN, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_lr_find_has_nothing_to_sweep_for_a_fewshot_head(image_folder, capsys):
    assert main(["lr-find", "--data", str(image_folder), "--head", "prototype", "--weights", "none",
                 "--model", "resnet18", "--image-size", "32"]) == 2
    assert "no learning rate to find" in capsys.readouterr().err


@pytest.mark.parametrize("head", [PrototypeHead(32, 4), KNNHead(32, 4, k=3)], ids=["prototype", "knn"])
def test_a_class_without_training_images_is_never_predicted(head):
    """Class 3 has no training images. A zero centroid scored 0 and won every image far from the real
    centroids (their logits are negative there); now its logit is below every other class's."""
    x, y = clusters(k=3)
    head.fit(x[:60], y[:60])
    probes = torch.cat([x[60:], 50 * torch.randn(200, 32), x[:60].mean(0, keepdim=True)])  # far away too
    logits = head(probes)
    assert (logits[:, 3] < logits[:, :3].min(1).values).all() and (logits.argmax(1) != 3).all()
    assert torch.isfinite(logits).all()  # finite: the temperature fit and int8 output ranges stay sane


def _csv_with_an_unseen_class(root):
    """cat and dog in every split; owl only in val and test: the classes list it, training never sees it."""
    images = make_image_folder(root / "images", classes=("cat", "dog", "owl"), per_class=6)
    rows = ["path,label,split"]
    for name in ("cat", "dog"):
        rows += [f"images/{name}/{name}_{i}.png,{name},{'train' if i < 4 else 'val' if i == 4 else 'test'}" for i in range(6)]
    rows += [f"images/owl/owl_{i}.png,owl,{'val' if i < 3 else 'test'}" for i in range(6)]
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv", images


@pytest.mark.parametrize("head", ["prototype", "knn:3", "linear"])
def test_a_run_names_the_classes_it_has_no_images_of(tmp_path, capsys, head):
    data, images = _csv_with_an_unseen_class(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, "--head", head]) == 0
    err = capsys.readouterr().err
    assert "note: 1 class(es) have no training images: owl;" in err
    run = json.loads((out / "run.json").read_text())
    assert run["classes"] == ["cat", "dog", "owl"] and run["classes_without_training_images"] == ["owl"]
    assert "had no training images" in (out / "README.md").read_text()
    if head == "linear":
        return  # it learns not to predict owl, with no promise
    owls = [str(p) for p in sorted((images / "owl").glob("*.png"))] + [str(p) for p in sorted(images.rglob("*.png"))]
    backends = ["torch"]
    if need_extra("onnxruntime", "export"):
        assert main(["export", str(out), "--format", "onnx"]) == 0
        backends.append("onnx")
    for backend in backends:
        capsys.readouterr()
        assert main(["predict", str(out), *owls, "--backend", backend, "--format", "json", "--topk", "3", "--quiet"]) == 0
        answers = json.loads(capsys.readouterr().out)
        assert all(a["predictions"][0]["label"] != "owl" for a in answers), backend
        assert all(a["predictions"][-1]["label"] == "owl" for a in answers), backend  # ranked last, too
