"""CPU inference engines: parity with torch, the auto choice and its fallback, the precision guard,
the converted-model cache, and --backend/--precision/--threads end to end on a tiny run.

ONNX export and OpenVINO compilation cost seconds each: the networks are converted once per
module (shared fixtures and one cache folder), and each test reuses them.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_image_folder, need_extra, own_cache

from transferkit.cli import main
from transferkit.core.errors import UserError
from transferkit.models.transfer import create_model
from transferkit.runtimes import choose as choosing
from transferkit.runtimes.choose import Frozen, Settings, choose
from transferkit.runtimes.engines import OnnxRuntimeEngine, OpenVinoEngine, TorchEngine
from transferkit.runtimes.guard import Guard, probe_predictions
from transferkit.runtimes.store import Entry

need_extra("onnxruntime", "export")
need_extra("openvino", "export")
TRAIN = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "4",
         "--quiet", "--seed", "1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    net = create_model("resnet18", 5, "none").net.eval()
    return Frozen(net, 48, "classifier"), torch.randn(12, 3, 48, 48)


def settings(root, **kw) -> Settings:
    return Settings(root=root, **{"threads": 1, **kw})


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_each_engine_matches_torch_on_a_classifier(resnet, root, backend):
    frozen, x = resnet
    choice = choose(frozen, x, settings(root, backend=backend))
    assert choice.engine.name == backend and choice.engine.precision == "fp32"
    with torch.inference_mode():
        want = frozen.module(x)
        got = choice.engine(x[:5])  # another batch size than the check's: the batch axis is dynamic
    assert torch.allclose(got, want[:5], atol=1e-4 * max(1, float(want.abs().max())))
    assert choice.report["diffs"][backend] <= choice.report["limit"]
    assert f"engine for the classifier: {backend} fp32 at" in choice.message and "img/s" in choice.message


def test_efficientnet_lite0_front_on_every_engine(root):
    """timm's TF 'same' padding becomes constant pads in the file: exact on both runtimes."""
    torch.manual_seed(0)
    tm = create_model("efficientnet_lite0", 3, "none")
    front, _back = tm.split(3)
    frozen, x = Frozen(front.eval(), 64, "frozen front"), torch.randn(6, 3, 64, 64)
    choice = choose(frozen, x, settings(root))
    assert set(choice.report["diffs"]) == {"onnxruntime", "openvino"}
    assert all(d <= choice.report["limit"] for d in choice.report["diffs"].values()), choice.report
    assert choice.engine.name in ("torch", "onnxruntime", "openvino")  # the fastest of the exact ones


def test_threads_reach_each_engine(resnet, root):
    frozen, x = resnet
    ov = choose(frozen, x, settings(root, backend="openvino", threads=1)).engine
    ort = choose(frozen, x, settings(root, backend="onnxruntime", threads=1)).engine
    assert isinstance(ov, OpenVinoEngine) and int(ov.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert isinstance(ort, OnnxRuntimeEngine) and ort.session.get_session_options().intra_op_num_threads == 1
    # The precision hint is always explicit: OpenVINO's own default is bf16 on CPUs that have it.
    assert "float32" in str(ov.compiled.get_property("INFERENCE_PRECISION_HINT"))


class Broken(torch.nn.Module):
    """An engine that answers, but wrongly (a runtime bug, a bad conversion)."""

    name, precision = "openvino", "fp32"

    def forward(self, x):
        return torch.zeros(len(x), 5)


def test_auto_falls_back_to_torch_when_parity_fails(resnet, root, monkeypatch):
    frozen, x = resnet
    real = choosing.build_engine
    monkeypatch.setattr(choosing, "build_engine",
                        lambda name, *a, **kw: real(name, *a, **kw) if name == "torch" else Broken())
    choice = choose(frozen, x, settings(root))
    assert isinstance(choice.engine, TorchEngine)
    assert "torch fp32" in choice.message and "openvino differs from torch by" in choice.message
    with pytest.raises(UserError, match="--backend openvino: openvino differs from torch"):
        choose(frozen, x, settings(root, backend="openvino"))


def test_small_jobs_stay_on_torch(resnet, root):
    frozen, x = resnet
    choice = choose(frozen, x, settings(root, images=10))
    assert isinstance(choice.engine, TorchEngine) and "10 images: converting would cost more" in choice.message


def guard_for(frozen, x, strict=True, kind="logits"):
    with torch.inference_mode():
        labels = frozen.module(x).argmax(1)
    return Guard(lambda: (x, labels), lambda: x, kind, strict)


def reduced_as(monkeypatch, forward):
    """Make the bf16 engine run ``forward`` on the fp32 output: what the guard then sees."""
    real = choosing.build_engine

    class Reduced(torch.nn.Module):
        name, precision = "torch", "bf16"

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return forward(self.inner(x))

    def build(name, source, precision, *a, **kw):
        engine = real(name, source, "fp32", *a, **kw)
        return engine if precision == "fp32" else Reduced(engine)
    monkeypatch.setattr(choosing, "build_engine", build)
    monkeypatch.setattr(choosing, "_reduced_engine_names", lambda *a: ["torch"])


def test_guard_refuses_a_precision_that_breaks_agreement(resnet, root, monkeypatch):
    frozen, x = resnet
    reduced_as(monkeypatch, lambda y: y.roll(1, dims=1))  # every prediction moves to another class
    with pytest.raises(UserError, match=r"--precision bf16 refused: on 12 validation images, top-1 agreement with "
                                        r"fp32 0\.0% \(needs >= 99%\), accuracy 0\.0% vs 100\.0%"):
        choose(frozen, x, settings(root, backend="torch", precision="bf16"), guard_for(frozen, x))
    # train's choice: the fp32 engine, and the line says why
    choice = choose(frozen, x, settings(root, backend="torch", precision="bf16"), guard_for(frozen, x, strict=False))
    assert choice.engine.precision == "fp32" and "refused" in choice.message and "runs in fp32" in choice.message


def test_guard_keeps_a_precision_that_agrees(resnet, root, monkeypatch):
    frozen, x = resnet
    reduced_as(monkeypatch, lambda y: y + 0.001)
    choice = choose(frozen, x, settings(root, backend="torch", precision="bf16"), guard_for(frozen, x))
    assert choice.engine.precision == "bf16" and "accuracy guard passed" in choice.message
    assert choice.report["guard"]["agreement"] == 1.0


@pytest.fixture(scope="module")
def digits_net():
    """A real classifier of real images: scikit-learn's digits (16 px), two random convolutions and a
    logistic regression on their features, fitted in seconds (about 90% on the 597 held-out digits).
    ``(Frozen, held-out images, their labels, training images)``."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.nn.functional.interpolate(torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16, size=16,
                                        mode="bilinear", align_corners=False).repeat(1, 3, 1, 1).sub(0.5).div(0.5)
    y = torch.tensor(digits.target)
    front = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 32, 3, padding=1, stride=2), torch.nn.ReLU(),
                                torch.nn.MaxPool2d(2), torch.nn.Flatten())
    with torch.inference_mode():
        features = front(x).numpy()
    fit = LogisticRegression(max_iter=2000, C=0.5).fit(features[:1200], digits.target[:1200])
    head = torch.nn.Linear(features.shape[1], 10)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(fit.coef_))
        head.bias.copy_(torch.from_numpy(fit.intercept_))
    return Frozen(torch.nn.Sequential(front, head).eval(), 16, "classifier"), x[1200:], y[1200:], x[:1200]


def int8_weights(folder, backend: str) -> int:
    """How many int8 weight tensors the quantized file in ``folder`` holds."""
    if backend == "openvino":
        return sum(xml.read_text().count('element_type="i8"') for xml in folder.glob("int8-*.xml"))
    import onnx

    return sum(init.data_type == onnx.TensorProto.INT8 for file in folder.glob("int8-*.onnx")
               for init in onnx.load(str(file)).graph.initializer)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_keeps_the_predictions_of_a_real_classifier(digits_net, root, backend):
    """Real static quantization (onnxruntime's, or NNCF's) of a digits classifier, judged on 597 real
    digits with their real labels: the int8 network agrees with fp32 and keeps its accuracy (counted
    here, not taken from the guard), is really int8 (int8 weights, other logits) and is cached."""
    if backend == "openvino":
        need_extra("nncf", "int8")
    frozen, x, labels, train = digits_net
    guard = Guard(lambda: (x, labels), lambda: train[:300], "logits", strict=True)  # refuses with the numbers
    choice = choose(frozen, x[:32], settings(root, backend=backend, precision="int8"), guard)
    assert choice.engine.name == backend and choice.engine.precision == "int8"
    assert "accuracy guard passed" in choice.message
    with torch.inference_mode():
        fp32, int8 = frozen.module(x), choice.engine(x)
    agreement = float((int8.argmax(1) == fp32.argmax(1)).double().mean())
    accuracy = {name: float((out.argmax(1) == labels).double().mean()) for name, out in (("fp32", fp32), ("int8", int8))}
    assert accuracy["fp32"] > 0.85  # a model worth quantizing
    assert agreement >= 0.98 and accuracy["int8"] >= accuracy["fp32"] - 0.01, (agreement, accuracy)
    verdict = choice.report["guard"]  # the guard counted the same images, with the same labels
    assert verdict["n"] == len(labels) and verdict["agreement"] == pytest.approx(agreement, abs=1e-6)
    assert (verdict["accuracy"], verdict["accuracy_fp32"]) == pytest.approx((accuracy["int8"], accuracy["fp32"]), abs=1e-6)
    assert (int8 - fp32).abs().max() > 1e-3  # another network than fp32's, not fp32 under another name
    folder = root / "engines" / choice.report["onnx"].split("/")[-2]
    assert int8_weights(folder, backend) > 0  # kept for the next run, and int8 inside


@pytest.mark.parametrize("failing", [None, "onnxruntime"])
def test_int8_auto_times_both_quantizers_and_keeps_the_fastest_that_passes(resnet, root, monkeypatch, failing):
    """Both int8 engines are really built (NNCF's and onnxruntime's); their speeds and the guard's
    verdicts are set here, so the choice, not this machine's timing, is what is checked."""
    need_extra("nncf", "int8")
    frozen, x = resnet
    monkeypatch.setattr(choosing, "speed", lambda engine, _x: {"openvino": 100.0, "onnxruntime": 300.0}[engine.name])
    real_judge = choosing.judge

    def judge(fp32, engine, guard):
        verdict = dict(real_judge(fp32, engine, guard), ok=engine.name != failing)
        return dict(verdict, text=f"{engine.name} {'fails' if engine.name == failing else 'passes'}")
    monkeypatch.setattr(choosing, "judge", judge)
    choice = choose(frozen, x, settings(root, precision="int8"), guard_for(frozen, x))
    assert choice.report["reduced_speeds"] == {"openvino": 100.0, "onnxruntime": 300.0}
    want = "openvino" if failing == "onnxruntime" else "onnxruntime"
    assert choice.engine.name == want and choice.engine.precision == "int8"
    other = "openvino" if want == "onnxruntime" else "onnxruntime"
    assert f"{want} int8 at {choice.report['reduced_speed']:.0f} img/s" in choice.message
    assert f"also timed: {other} int8" in choice.message
    assert ("onnxruntime int8 failed the guard" in choice.message) == (failing == "onnxruntime")


def test_probe_judges_features_without_a_head():
    torch.manual_seed(0)
    centres = torch.randn(3, 16) * 5
    labels = torch.arange(30) % 3
    feats = centres[labels] + torch.randn(30, 16) * 0.1
    assert torch.equal(probe_predictions(feats, feats, labels), labels)  # leave-one-out, still right
    scrambled = centres[(labels + 1) % 3]
    assert (probe_predictions(feats, scrambled, labels) == labels).float().mean() == 0


def test_converted_files_are_reused_and_remade_when_stale(tmp_path):
    calls = []

    def make(path):
        calls.append(path.name)
        path.write_bytes(b"model-%d" % len(calls))

    entry = Entry(tmp_path, "k1")
    path, made = entry.file("model.onnx", make)
    assert made and Entry(tmp_path, "k1").file("model.onnx", make) == (path, False)  # reused, not remade
    path.write_bytes(b"truncated")                                                  # changed since it was made
    assert Entry(tmp_path, "k1").file("model.onnx", make)[1] and len(calls) == 2
    (entry.folder / "meta.json").unlink()                                           # never finished
    assert Entry(tmp_path, "k1").file("model.onnx", make)[1] and len(calls) == 3


def test_other_weights_convert_again(resnet, root):
    frozen, x = resnet
    first = choose(frozen, x, settings(root, backend="onnxruntime")).report["onnx"]
    other = create_model("resnet18", 5, "none").net.eval()  # other random weights: another key
    second = choose(Frozen(other, 48, "classifier"), x, settings(root, backend="onnxruntime")).report["onnx"]
    assert first != second


# ----------------------------------------------------------------------------- the CLI, end to end


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny run trained twice: its feature cache built by openvino, and by torch."""
    root = tmp_path_factory.mktemp("cli")
    images = make_image_folder(root / "images", classes=("cat", "dog", "owl"), per_class=6)
    with own_cache(root / "xdg"):
        for backend in ("openvino", "torch"):
            assert main(["train", "--data", str(images), "--out", str(root / backend), "--backend", backend,
                         "--cache-dir", str(root / f"cache-{backend}"), *TRAIN]) == 0
    return {"images": images, "root": root}


def test_train_backend_openvino_builds_the_same_feature_cache(runs):
    def features(backend):
        files = sorted((runs["root"] / f"cache-{backend}" / "features").glob("*/features.npy"))
        return [np.load(f).astype(np.float32) for f in files]
    ov, pt = features("openvino"), features("torch")
    assert len(ov) == len(pt) == 2  # train and val
    for a, b in zip(ov, pt):
        assert np.allclose(a, b, rtol=2e-3, atol=1e-3 * max(1, np.abs(b).max()))  # fp16 storage: one rounding
    assert list((runs["root"] / "cache-openvino" / "engines").glob("*/model.onnx"))  # converted once, kept


def last_lines(capsys) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_eval_predict_embed_with_backend(runs, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(runs["root"] / "xdg"))
    run, images = runs["root"] / "openvino", runs["images"]
    capsys.readouterr()
    assert main(["eval", str(run), "--backend", "openvino", "--threads", "1", "--format", "json", "--quiet"]) == 0
    out, err = last_lines(capsys)
    torch_eval = json.loads(out)
    assert "engine for the classifier: openvino fp32" in err
    assert main(["eval", str(run), "--backend", "torch", "--format", "json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == torch_eval["top1"]

    def predict(*flags):
        capsys.readouterr()
        assert main(["predict", str(run), str(images / "cat"), "--format", "json", "--quiet", *flags]) == 0
        return json.loads(capsys.readouterr().out)
    a, b = predict("--backend", "onnxruntime"), predict("--backend", "torch")
    for ra, rb in zip(a, b):
        assert [p["index"] for p in ra["predictions"]] == [p["index"] for p in rb["predictions"]]
        assert np.allclose([p["prob"] for p in ra["predictions"]], [p["prob"] for p in rb["predictions"]], atol=1e-4)

    out = runs["root"] / "emb.npz"
    assert main(["embed", str(run), str(images), "--out", str(out), "--backend", "openvino", "--quiet"]) == 0
    assert "engine for the embedder: openvino fp32" in capsys.readouterr().err
    assert np.load(out)["embedding"].shape == (18, 512)


def test_serve_with_backend_openvino(runs, monkeypatch):
    from transferkit.deploy.serve import Service

    monkeypatch.setenv("XDG_CACHE_HOME", str(runs["root"] / "xdg"))
    run = runs["root"] / "openvino"
    service = Service.from_run(run, "openvino", threads=1)
    reference = Service.from_run(run, "torch")
    assert service.backend == "openvino fp32" and "engine for the classifier: openvino" in service.engine
    arrays = [np.random.default_rng(i).integers(0, 256, (3, 32, 32), dtype=np.uint8) for i in range(3)]
    for (probs, ranking), (want_probs, want_ranking) in zip(service.forward(arrays), reference.forward(arrays)):
        assert torch.allclose(probs, want_probs, atol=1e-4) and torch.allclose(ranking, want_ranking, atol=1e-4)


def test_export_openvino_round_trip(runs, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(runs["root"] / "xdg"))
    run, image = runs["root"] / "torch", next((runs["images"] / "dog").glob("*.png"))
    assert main(["export", str(run), "--format", "openvino-ir"]) == 0
    assert "model.xml" in capsys.readouterr().out and (run / "model.bin").is_file()
    sidecar = json.loads((run / "model.xml.json").read_text())
    assert sidecar["precision"] == "fp32" and sidecar["classes"] == ["cat", "dog", "owl"]

    def predict(backend):
        capsys.readouterr()
        assert main(["predict", str(run), str(image), "--backend", backend, "--format", "json", "--quiet"]) == 0
        return json.loads(capsys.readouterr().out)[0]["predictions"]
    got, want = predict("openvino-ir"), predict("torch")
    assert [p["index"] for p in got] == [p["index"] for p in want]
    assert np.allclose([p["prob"] for p in got], [p["prob"] for p in want], atol=1e-4)


def test_reduced_precision_needs_a_guard(runs, capsys):
    """Export refuses combinations that have no meaning, in one line, before any work."""
    run = runs["root"] / "torch"
    assert main(["export", str(run), "--format", "onnx", "--precision", "bf16"]) == 2
    assert "use --format openvino" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "torchscript", "--precision", "int8"]) == 2
    image = next((runs["images"] / "dog").glob("*.png"))
    assert main(["predict", "--model", "efficientnet_lite0", str(image), "--precision", "bf16"]) == 2
    assert "--precision bf16 refused: no labelled validation images" in capsys.readouterr().err
