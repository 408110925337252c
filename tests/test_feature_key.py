"""The feature cache's key changes exactly when the cached bytes would.

Every ``TrainConfig`` field is mutated in turn (and every engine choice), the cache is built from
scratch for the base and the mutated settings in separate cache folders, and for each cached
split the two keys must be equal if and only if the two arrays hold the same numbers. fp32 engines
are held to 1e-4 of torch and share a key (train/features.py), so "the same numbers" is up to the
fp16 rounding of the stored rows. A new setting must be added to ``MUTATIONS``: the test says so.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from PIL import Image

from transferkit.core.config import TrainConfig
from transferkit.engine.feature_cache import FeatureViews
from transferkit.runtimes import choose as choose_module
from transferkit.runtimes import reduced
from transferkit.train.features import EXACT, torch_numerics
from transferkit.train.start import start

BASE = dict(model="resnet18", weights="none", image_size=32, epochs=1, batch_size="4", quiet=True, seed=3,
            backend="torch", skip_bad=True)


def other_weights(tmp: Path) -> str:
    from safetensors.torch import save_file

    from transferkit.models.registry import build_architecture

    torch.manual_seed(123)
    net, _ = build_architecture("resnet18")
    path = tmp / "other.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return str(path)


def other_data(tmp: Path) -> str:
    return str(make_image_folder(tmp / "other", classes=("a", "b", "c"), per_class=8, seed=9))


def split_data(tmp: Path) -> str:
    """Images in train/ and val/ folders: a --seed that does not choose the split."""
    if not (tmp / "split").is_dir():
        for split, seed in (("train", 0), ("val", 1)):
            make_image_folder(tmp / "split" / split, classes=("a", "b", "c"), per_class=4, seed=seed)
    return str(tmp / "split")


def moved_data(tmp: Path) -> str:
    """The base images, copied to another folder (other paths and times, the same pixels)."""
    import shutil

    return str(Path(shutil.copytree(tmp / "data", tmp / "moved")))


def one_excluded(tmp: Path) -> str:
    """An --exclude list naming one of the base images."""
    listing = tmp / "exclude.txt"
    listing.write_text(f"{sorted((tmp / 'data' / 'a').glob('*.png'))[0]}\n")
    return str(listing)


# field -> changes made to the base settings (a dict), or a function of the scratch folder giving
# that dict, or why the field is not mutated here.
MUTATIONS = {
    "data": [lambda t: {"data": other_data(t)}, lambda t: {"data": moved_data(t)}],
    "model": {"model": "mobilenet_v3_small"},
    "weights": lambda t: {"weights": other_weights(t)},
    "freeze": {"freeze": "3"},
    "head": {"head": "mlp:16"},
    "recipe": {"recipe": "lpft", "freeze": "3"},
    "epochs": {"epochs": 2},
    "lr": {"lr": "3e-3"},
    "backbone_lr_scale": {"backbone_lr_scale": 0.5},
    "optimizer": {"optimizer": "sgd"},
    "weight_decay": {"weight_decay": 0.0},
    "warmup_epochs": {"warmup_epochs": 0.0},
    "label_smoothing": {"label_smoothing": 0.0},
    "batch_size": {"batch_size": "8"},
    "accumulate": {"accumulate": 2},
    "image_size": {"image_size": 40},
    "augment": [{"augment": "flip"}, {"augment": "light", "views": 1}],
    "views": {"augment": "light", "views": 2},
    "mixup": {"mixup": 0.2},
    "cutmix": "mixes batches read from the cache, as --mixup does (its case runs); refused on the base's pooled vectors",
    "feature_augment": {"feature_augment": "brightness"},
    "shots": {"shots": 3},
    "class_weights": {"class_weights": "balanced"},
    "sampler": {"sampler": "balanced"},
    "calibrate": {"calibrate": False},
    "train_limit": {"train_limit": 12},
    "exclude": lambda t: {"exclude": one_excluded(t)},
    "seed": {"seed": 4},
    "device": {"device": "cpu"},
    "feature_cache": "--no-feature-cache builds no cache: test_cache checks it",
    "cache_dir": "every case builds in a fresh cache folder of its own",
    "data_cache": {"data_cache": False},
    "feed": {"feed": "stream"},
    "decode_workers": {"decode_workers": 1},
    "backend": [{"backend": "onnxruntime"}, {"backend": "openvino"}, {"backend": "auto"}],
    "precision": [{"precision": "bf16", "backend": "auto"}, {"precision": "int8", "backend": "auto"},
                  {"precision": "int8", "backend": "onnxruntime"}, {"precision": "fp32"}],
    "threads": {"threads": 1},
    "skip_bad": {"skip_bad": False},
    "allow_outside_paths": {"allow_outside_paths": True},
    "max_pixels": [{"max_pixels": 500}, {"max_pixels": 1000}],  # the one 30x30 image refused / none refused
    "checkpoint_every": {"checkpoint_every": 1},
    "log": {"log": "tensorboard"},
    "out": "the run directory holds no features",
    "resume": "a resume restores the run's own settings (test_resume: the cache is rebuilt from its weights)",
    "quiet": {"quiet": False},
}
# Engine cases against each other, not only against the torch base.
PAIRS = [({"precision": "int8", "backend": "onnxruntime"}, {"precision": "int8", "backend": "onnxruntime", "train_limit": 18}),
         ({"precision": "bf16", "backend": "openvino"}, {"precision": "bf16", "backend": "torch"}),
         # augmented views: view v is the same pixels whatever V (reused), other specs and seeds are not
         ({"augment": "light", "views": 2}, {"augment": "light", "views": 3}),
         ({"augment": "light", "views": 2}, {"augment": "strong", "views": 2}),
         (lambda t: {"data": split_data(t), "weights": other_weights(t), "augment": "light", "views": 1},
          lambda t: {"data": split_data(t), "weights": other_weights(t), "augment": "light", "views": 1, "seed": 4})]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("keys")
    make_image_folder(tmp / "data", classes=("a", "b", "c"), per_class=8)
    big = np.random.default_rng(1).integers(0, 255, (30, 30, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp / "data" / "a" / "big.png")  # 900 pixels: refused by --max-pixels 500
    return tmp


@pytest.fixture(autouse=True)
def reduced_precision_passes(monkeypatch):
    """The guard judges accuracy (its own tests); here every reduced engine that builds is kept."""
    monkeypatch.setattr(choose_module, "judge", lambda fp32, engine, guard: {"ok": True, "text": "kept by the test"})


def cached(scratch: Path, changes: dict, name: str) -> dict:
    """``{slot: (key, array)}`` of every feature-cache entry a run with ``changes`` trains from."""
    settings = {**BASE, "data": str(scratch / "data"), **changes, "out": str(scratch / "runs" / name),
                "cache_dir": str(scratch / "caches" / name)}
    s = start(TrainConfig(**settings).validate())
    slots = {}
    for split, source in s.prepared.path.sources.items():
        parts = {"": source}
        if isinstance(source, FeatureViews):  # mirror images or augmented views, and the plain features if held
            parts = {**({"": source.plain} if source.plain is not None else {}), **dict(zip(source.names, source.views))}
        for variant, features in parts.items():
            slots[(split, variant)] = (features.path.name, features.features.read(np.arange(len(features))))
    return slots


def same_numbers(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the fp16 rounding of a stored row (one step is ~4.9e-4 of the value)."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    return a.shape == b.shape and bool(np.abs(a - b).max(initial=0) <= 1e-3 * max(1.0, np.abs(a).max(initial=0)))


def available(changes: dict) -> str | None:
    precision, backend = changes.get("precision", "fp32"), changes.get("backend", "torch")
    if precision == "bf16":
        has = reduced.bf16_support()
        if not (has.get(backend) if backend != "auto" else any(has.values())):
            return f"no bf16 engine on this CPU for --backend {backend}"
    if precision == "int8" and backend == "openvino" and "openvino" not in reduced.int8_engines():
        return "NNCF is not installed"
    return None


def cases():
    for field_name, mutation in MUTATIONS.items():
        if isinstance(mutation, str):
            continue
        for i, one in enumerate(mutation if isinstance(mutation, list) else [mutation]):
            yield pytest.param(None, one, id=f"{field_name}-{i}")
    for i, (left, right) in enumerate(PAIRS):
        yield pytest.param(left, right, id=f"engines-{i}")


def test_every_setting_is_classified():
    assert set(MUTATIONS) == {f.name for f in fields(TrainConfig)}, \
        "a new TrainConfig field: add how it changes (or not) the cached features to MUTATIONS"


OUTCOMES: dict = {}


@pytest.mark.parametrize("left,right", list(cases()))
def test_key_changes_exactly_when_the_features_do(scratch, left, right, request):
    sides = []
    for n, changes in enumerate((left or {}, right)):
        resolved = changes(scratch) if callable(changes) else changes
        if why := available(resolved):
            pytest.skip(why)
        sides.append(cached(scratch, resolved, f"{request.node.callspec.id}-{n}"))
    base, other = sides
    common = set(base) & set(other)
    assert ("val", "") in common and all(any(split == "train" for split, _ in side) for side in sides)
    for slot in sorted(common):
        (key_a, a), (key_b, b) = base[slot], other[slot]
        same = same_numbers(a, b)
        OUTCOMES[(request.node.callspec.id, slot)] = same
        assert (key_a == key_b) == same, (f"{slot}: keys {'equal' if key_a == key_b else 'differ'} but the "
                                          f"features {'agree' if same else 'differ'}")


def test_the_cases_were_not_vacuous():
    """Both outcomes occur: settings that change the features, and many that leave them alone."""
    if not OUTCOMES:
        pytest.skip("run with the cases above")
    changed = {case for (case, _), same in OUTCOMES.items() if not same}
    kept = {case for (case, _), same in OUTCOMES.items() if same}
    for case in ("data-0", "model-0", "weights-0", "image_size-0", "seed-0", "max_pixels-0", "precision-1"):
        assert case in changed or case not in {c for c, _ in OUTCOMES}, case
    assert {"data-1", "max_pixels-1", "data_cache-0", "backend-0", "epochs-0"} <= kept
    ran = {c for c, _ in OUTCOMES}
    views = {case: {same for (c, slot), same in OUTCOMES.items() if c == case and slot[0] == "train"} for case in ran}
    assert views.get("engines-2", {True}) == {True}  # views 0 and 1 of V = 2 and V = 3: the same features, one key
    assert views.get("engines-3", {False}) == {False} and views.get("engines-4", {False}) == {False}


def test_numerics_of_torch_itself():
    """On a GPU (or under autocast) torch computes other numbers than fp32 on the CPU: its own key part."""
    cpu = torch.device("cpu")
    assert torch_numerics(cpu, None) == EXACT
    bf16 = torch_numerics(cpu, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert bf16["numerics"] == "autocast-bfloat16"
    from contextlib import nullcontext
    assert torch_numerics(cpu, nullcontext) == EXACT



def test_features_scored_without_training_are_the_ones_train_reuses(scratch, capsys):
    """rank and audit compute a data set's features as ``train --freeze backbone`` caches them:
    the run that follows reuses every entry (and the mirrored ones for --augment flip)."""
    from transferkit.cli import main
    from transferkit.data.specs import load_data
    from transferkit.train.features import backbone_features

    weights = other_weights(scratch)
    settings = {**BASE, "data": str(scratch / "data"), "weights": weights, "cache_dir": str(scratch / "shared"),
                "backend": "auto"}
    cfg = TrainConfig(**settings).validate()
    got = backbone_features(cfg, load_data(cfg.data, cfg.seed), mirrored=True)
    assert set(got.features) == {"train", "val", "train:mirrored", "val:mirrored"}
    x, y = got.array("train")
    assert x.shape == (len(got.sets["train"]), 512) and len(y) == len(x)
    capsys.readouterr()
    args = ["train", "--data", settings["data"], "--out", str(scratch / "runs" / "after"), "--model", "resnet18",
            "--weights", weights, "--image-size", "32", "--epochs", "1", "--quiet", "--seed", "3", "--skip-bad",
            "--cache-dir", settings["cache_dir"], "--augment", "flip"]
    assert main(args) == 0
    line = next(ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("feature cache"))
    assert "reused" in line and "built" not in line, line
