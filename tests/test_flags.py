"""One name and one flag for each thing: CPU engines run on the CPU wherever a GPU is free, --precision
is the one precision flag (--amp its old spelling), --no-feature-cache, --decode-workers, the export
format names, and old spellings (flags, YAML keys, fit() keywords, saved runs) that still work."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import TINY_TRAIN, make_image_folder, need_extra

from transferkit.api import _config
from transferkit.cli import main
from transferkit.cli.parser import build_parser
from transferkit.core import devices
from transferkit.core.config import TrainConfig, build_config, resume_config, saved_settings
from transferkit.core.errors import UserError
from transferkit.core.safeio import load_torch_file, torch_save_atomic
from transferkit.data import check as checking
from transferkit.data import imagecache
from transferkit.engine.optim import amp_dtype, device_precision
from transferkit.runtimes.choose import engine_device, in_torch, stays_in_torch
from transferkit.train.setup import on_device

CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def cuda_is_free(monkeypatch):
    """A machine where --device auto would pick a CUDA GPU (core/devices.py's question), without one."""
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_cpu_engines_run_on_the_cpu_where_a_gpu_is_free(tiny_run, image_folder, tmp_path, capsys, cuda_is_free):
    """`predict RUN --backend onnxruntime` (export's own example) exited 2 on any machine with CUDA:
    --device auto picked the GPU and the engines refused it. Every command with --backend now runs a
    CPU engine (or an exported file, or int8) on the CPU; naming the GPU with one is a clear mistake."""
    need_extra("onnxruntime", "export")
    need_extra("openvino", "export")
    image = sorted(image_folder.rglob("*.png"))[0]
    status, out, err = run_cli(capsys, "predict", tiny_run, image, "--backend", "onnxruntime", "--format", "json",
                               "--quiet")
    assert status == 0, err
    assert "engine for the classifier: onnxruntime fp32" in err and "runs on the CPU's engines" in err
    assert json.loads(out)[0]["predictions"]

    status, out, err = run_cli(capsys, "eval", tiny_run, "--backend", "openvino", "--threads", "1", "--format", "json",
                               "--quiet")
    assert status == 0, err
    assert "engine for the classifier: openvino fp32" in err and json.loads(out)["n"] > 0

    status, _, err = run_cli(capsys, "embed", tiny_run, image_folder, "--out", tmp_path / "e.npz", "--backend",
                             "onnxruntime", "--quiet")
    assert status == 0, err
    assert "engine for the embedder: onnxruntime fp32" in err

    status, _, err = run_cli(capsys, "export", tiny_run, "--format", "onnx")  # export always ran on the CPU
    assert status == 0, err
    status, out, err = run_cli(capsys, "predict", tiny_run, image, "--backend", "onnx", "--format", "json", "--quiet")
    assert status == 0, err
    assert "--backend onnx runs on the CPU's engines" in err

    sweep = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "4", "--quiet"]
    for n, command in enumerate((["train", "--data", image_folder, "--out", tmp_path / "run-b", *TINY_TRAIN],
                                 ["lr-find", "--data", image_folder, "--out", tmp_path / "lr.png", "--steps", "5", *sweep])):
        status, _, err = run_cli(capsys, *command, "--backend", "onnxruntime", "--cache-dir", tmp_path / f"cache{n}")
        assert status == 0, err
        assert "--backend onnxruntime runs on the CPU's engines" in err and "engine for the frozen front" in err

    status, _, err = run_cli(capsys, "predict", tiny_run, image, "--backend", "onnxruntime", "--device", "cuda")
    assert status == 2 and "runs on the CPU" in err and "not on --device cuda" in err
    status, _, err = run_cli(capsys, "eval", tiny_run, "--precision", "int8", "--device", "cuda:0")
    assert status == 2 and "--precision int8 runs on the CPU" in err


def test_engine_device_and_the_gpu_path(cuda_is_free):
    assert engine_device("auto", "auto", "fp32") == "auto" and engine_device("auto", "torch", "bf16") == "auto"
    assert engine_device("auto", "openvino", "fp32") == "cpu" and engine_device("auto", "openvino-ir", "fp32") == "cpu"
    assert engine_device("auto", "auto", "int8") == "cpu" and engine_device("cpu", "onnxruntime", "int8") == "cpu"
    with pytest.raises(UserError, match="not on --device cuda:1"):
        engine_device("cuda:1", "torchscript", "fp32")
    # On a GPU bf16 and fp16 are autocast in torch (they used to be refused as CPU-engine precisions).
    assert stays_in_torch(GPU, "auto", "bf16") and stays_in_torch(GPU, "torch", "fp16")
    with pytest.raises(UserError, match="CPU's engines"):
        stays_in_torch(GPU, "auto", "int8")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)).eval()
    x = torch.randn(2, 3, 8, 8)
    assert in_torch(net, "fp32") is net
    wrapped = in_torch(net, "bf16")  # autocast on the device of the weights (the CPU here), float32 out
    with torch.no_grad():
        got, want = wrapped(x), net(x)
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=0.1) and not torch.equal(got, want)


def test_precision_means_autocast_on_a_gpu_and_the_engine_on_the_cpu(cuda_is_free, monkeypatch):
    """One flag: what --precision means on each device, the autocast the trainer takes from it, and
    the combinations that cannot run (int8 on a GPU, fp16 on the CPU) as one-line errors."""
    assert [device_precision(GPU, p) for p in ("auto", "fp32", "bf16", "fp16")] == ["bf16", "fp32", "bf16", "fp16"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert device_precision(GPU, "auto") == "fp16"
    assert [device_precision(CPU, p) for p in ("auto", "fp32", "bf16", "int8")] == ["fp32", "fp32", "bf16", "int8"]
    with pytest.raises(UserError, match="int8 is a CPU engine's"):
        device_precision(GPU, "int8")
    with pytest.raises(UserError, match="fp16 is autocast on a CUDA GPU"):
        device_precision(CPU, "fp16")
    assert amp_dtype(GPU, "bf16") == torch.bfloat16 and amp_dtype(GPU, "fp16") == torch.float16
    assert amp_dtype(GPU, "fp32") is None and amp_dtype(CPU, "bf16") is None  # no autocast on the CPU
    # The trainer's decision: the autocast dtype, and the cfg the training path is chosen with (never auto).
    cfg = TrainConfig(data="x", precision="auto")
    assert on_device(cfg, GPU)[0].precision == "fp16" and on_device(cfg, GPU)[1] == torch.float16
    assert on_device(cfg, CPU) == (TrainConfig(data="x", precision="fp32"), None)
    assert on_device(TrainConfig(data="x", precision="bf16"), CPU)[1] is None
    assert cfg.precision == "auto"  # what the run records is what was asked for


def test_old_spellings_still_work_and_say_what_replaced_them(tmp_path, capsys):
    parser = build_parser()
    args = parser.parse_args(["train", "--data", "x", "--amp", "off", "--no-cache"])
    assert (args.precision, args.feature_cache) == ("fp32", False)
    assert not hasattr(args, "amp") and not hasattr(args, "cache")
    err = capsys.readouterr().err.splitlines()
    assert err == ["--amp off is deprecated; use --precision fp32", "--no-cache is deprecated; use --no-feature-cache"]
    assert parser.parse_args(["lr-find", "--data", "x", "--amp", "bf16"]).precision == "bf16"
    assert parser.parse_args(["export", "r", "--format", "openvino"]).format == "openvino-ir"
    assert "--format openvino is deprecated; use --format openvino-ir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    assert "--amp" not in capsys.readouterr().out  # hidden from --help

    config = tmp_path / "old.yaml"
    config.write_text("amp: fp16\ncache: false\nepochs: 2\n")
    cfg = build_config({"data": "x"}, str(config))
    assert (cfg.precision, cfg.feature_cache, cfg.epochs) == ("fp16", False, 2)
    err = capsys.readouterr().err
    assert f"{config}: 'amp' is deprecated; use 'precision'" in err and "'cache' is deprecated" in err
    config.write_text("amp: bf16\nprecision: int8\n")
    with pytest.raises(UserError, match="'amp' and 'precision' are the same setting"):
        build_config({"data": "x"}, str(config))
    assert _config("x", "resnet18", {"cache": False}).feature_cache is False
    assert "fit(): 'cache' is deprecated; use 'feature_cache'" in capsys.readouterr().err


def test_a_run_saved_with_the_old_names_loads_and_resumes(image_folder, tmp_path, capsys):
    """Checkpoints and run.json keep the settings by name: a run saved with `amp` and `cache` resumes."""
    old = {k: v for k, v in TrainConfig(data="x", out="r").to_json().items()
           if k not in ("precision", "feature_cache", "decode_workers")}
    assert saved_settings({**old, "amp": "auto", "precision": "fp32", "cache": False})["precision"] == "auto"
    assert saved_settings({**old, "amp": "off", "precision": "fp32"})["precision"] == "fp32"
    assert saved_settings({**old, "amp": "auto", "precision": "int8"})["precision"] == "int8"
    assert saved_settings({**old, "amp": "bf16", "precision": "fp32", "device": "cpu"})["precision"] == "fp32"
    given = TrainConfig(data="x", out="r", resume=True)
    given.given = frozenset({"out", "resume"})
    resumed = resume_config({**old, "amp": "fp16", "precision": "fp32", "cache": False}, given)
    assert (resumed.precision, resumed.feature_cache) == ("fp16", False)

    run = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--out", str(run), *TINY_TRAIN, "--no-feature-cache"]) == 0
    state = load_torch_file(run / "checkpoints" / "last.pt")
    settings = {k: v for k, v in state["config"].items() if k not in ("precision", "feature_cache", "decode_workers")}
    state["config"] = {**settings, "amp": "auto", "precision": "fp32", "cache": False}  # as an older release wrote it
    torch_save_atomic(state, run / "checkpoints" / "last.pt")
    status, _, err = run_cli(capsys, "train", "--data", image_folder, "--out", run, "--resume", "--epochs", "2",
                             "--quiet")
    assert status == 0, err
    config = json.loads((run / "run.json").read_text())["config"]
    assert (config["precision"], config["feature_cache"], config["epochs"]) == ("auto", False, 2)
    assert "amp" not in config and "cache" not in config
    status, _, err = run_cli(capsys, "train", "--data", image_folder, "--out", run, "--resume", "--amp", "off")
    assert status == 2 and "--precision fp32 (the run has auto)" in err


def test_bf16_on_the_cpu_without_a_feature_cache_is_said(image_folder, tmp_path, capsys):
    """`--amp bf16` used to be ignored on the CPU without a word; --precision bf16 there is the engine
    of the cached frozen part, and a run with no feature cache says that it trains in fp32."""
    status, _, err = run_cli(capsys, "train", "--data", image_folder, "--out", tmp_path / "run", *TINY_TRAIN,
                             "--amp", "bf16", "--no-cache")
    assert status == 0, err
    assert "--amp bf16 is deprecated; use --precision bf16" in err
    assert "--precision bf16: on the CPU it is the precision of the engine that fills the feature cache" in err
    status, _, err = run_cli(capsys, "train", "--data", image_folder, "--out", tmp_path / "run2", *TINY_TRAIN,
                             "--precision", "fp16")
    assert status == 2 and "fp16 is autocast on a CUDA GPU" in err and not (tmp_path / "run2").exists()


def test_decode_workers_flag_wins_over_the_variable(tiny_run, tmp_path, capsys, monkeypatch):
    """Decode workers were set only by TRANSFERKIT_DECODE_WORKERS; --decode-workers wins over it."""
    data = make_image_folder(tmp_path / "more", per_class=20, size=24)  # 40 files: three chunks of 16
    monkeypatch.setenv(imagecache.WORKERS_ENV, "1")
    used, real = [], imagecache.decode_workers
    monkeypatch.setattr(imagecache, "decode_workers", lambda requested=0: used.append(real(requested)) or used[-1])
    for n, argv in enumerate((["eval", tiny_run, "--data", data, "--split", "val", "--quiet"],
                              ["embed", tiny_run, data, "--out", tmp_path / "e.npz", "--quiet"],
                              ["train", "--data", data, "--out", tmp_path / "run-b", *TINY_TRAIN])):
        used.clear()
        status, _, err = run_cli(capsys, *argv, "--cache-dir", tmp_path / f"cache{n}", "--decode-workers", "2")
        assert status == 0, err
        assert used and set(used) == {2}, argv[0]
    used.clear()
    assert main(["eval", str(tiny_run), "--data", str(data), "--quiet", "--cache-dir", str(tmp_path / "cache9")]) == 0
    assert set(used) == {1}  # without the flag, the variable
    pools = []
    monkeypatch.setattr(checking, "ThreadPoolExecutor",
                        lambda max_workers: pools.append(max_workers) or ThreadPoolExecutor(max_workers))
    assert main(["data", "check", str(data), "--decode-workers", "3"]) == 0
    assert pools and set(pools) == {3}
    assert main(["train", "--data", str(data), "--decode-workers", "-1"]) == 2


def test_export_format_and_backend_share_one_name(tiny_run, capsys):
    """`export --format openvino` wrote what `--backend openvino-ir` read: the format is openvino-ir in both."""
    need_extra("openvino", "export")
    image = sorted((tiny_run.parent / "images").rglob("*.png"))[0]
    status, out, err = run_cli(capsys, "export", tiny_run, "--format", "openvino-ir")
    assert status == 0, err
    assert "model.xml" in out and (tiny_run / "model.bin").is_file()
    status, out, err = run_cli(capsys, "predict", tiny_run, image, "--backend", "openvino-ir", "--format", "json",
                               "--quiet")
    assert status == 0, err
    assert json.loads(out)[0]["predictions"]
    status, _, err = run_cli(capsys, "export", tiny_run, "--format", "torchscript", "--precision", "bf16")
    assert status == 2 and "use --format openvino-ir" in err
