"""Nothing lost, nothing executed: atomic writes, exact resume after kill -9, signals, NaN, unsafe pickles."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder, pause_plugin, wait_until_paused

from transferkit.cli import main
from transferkit.core.errors import UserError
from transferkit.core.safeio import atomic_write, check_torch_version, load_torch_file

SRC = str(Path(__file__).resolve().parents[1] / "src")
RESUME_ARGS = ["--model", "mobilenet_v3_small", "--weights", "none", "--freeze", "none", "--no-cache",
               "--image-size", "32", "--batch-size", "2", "--epochs", "3", "--seed", "7", "--quiet"]


def cli(*args, env: dict | None = None, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC, **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "transferkit", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def final_weights(run: Path) -> dict:
    return load_torch_file(run / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("resume") / "images", per_class=12, size=24)


@pytest.fixture(scope="module")
def reference_run(resume_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = cli("train", "--data", str(resume_data), "--out", str(out), *RESUME_ARGS)
    assert proc.wait(timeout=600) == 0, proc.communicate()[1]
    return out


@pytest.mark.parametrize("every", [0, 5], ids=["between-epochs", "mid-epoch"])
def test_kill_9_then_resume_matches_an_uninterrupted_run(resume_data, reference_run, tmp_path, every):
    """Killed right after its first checkpoint (held there by a plugin, so the kill lands at a known
    step on any machine): mid-epoch with --checkpoint-every 5, else after epoch 1."""
    out = tmp_path / "run"
    plugin, env, marker = pause_plugin(tmp_path)
    proc = cli(*plugin, "train", "--data", str(resume_data), "--out", str(out), "--checkpoint-every", str(every),
               *RESUME_ARGS, env=env)
    step = wait_until_paused(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "run.json").exists()
    state = load_torch_file(out / "checkpoints" / "last.pt")["state"]
    # 20 training images in batches of 2: 10 steps per epoch
    assert (state["global_step"], state["epoch"], state["batch"]) == ((5, 0, 5) if every else (10, 1, 0)) and step == state["global_step"]
    resumed = cli("train", "--out", str(out), "--resume", "--quiet")
    assert resumed.wait(timeout=600) == 0, resumed.communicate()[1]
    ours, reference = final_weights(out), final_weights(reference_run)
    assert ours.keys() == reference.keys()
    worst = max(float((ours[k].double() - reference[k].double()).abs().max()) for k in ours if ours[k].is_floating_point())
    assert worst <= 1e-6
    assert json.loads((out / "run.json").read_text())["metrics"] == json.loads((reference_run / "run.json").read_text())["metrics"]


def test_sigterm_checkpoints_and_exits_nonzero(resume_data, tmp_path):
    """SIGTERM while held at step 3: training stops after the next step (4), checkpoints it, says
    how to resume and exits non-zero (the timeout only guards against a hang)."""
    out = tmp_path / "run"
    plugin, env, marker = pause_plugin(tmp_path)
    proc = cli(*plugin, "train", "--data", str(resume_data), "--out", str(out), "--checkpoint-every", "3",
               *RESUME_ARGS, env=env)
    assert wait_until_paused(marker, proc) == 3
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and f"--out {out} --resume" in err
    state = load_torch_file(out / "checkpoints" / "last.pt")["state"]
    assert (state["global_step"], state["epoch"], state["batch"]) == (4, 0, 4)
    assert not (out / "run.json").exists()


def test_write_killed_halfway_leaves_the_previous_file(tmp_path):
    target = tmp_path / "last.pt"
    torch.save({"epoch": 1}, target)
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {SRC!r})
        from transferkit.core.safeio import atomic_write
        def slow(tmp):
            with open(tmp, "wb") as f:
                f.write(b"x" * 1_000_000); f.flush()
                print("writing", flush=True); time.sleep(60)
        atomic_write({str(target)!r}, slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_torch_file(target) == {"epoch": 1}


def test_failed_write_cleans_up(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def broken(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


NAN_ARGS = ["--model", "resnet18", "--weights", "none", "--freeze", "none", "--no-cache", "--image-size", "16",
            "--batch-size", "2", "--quiet"]


def assert_nothing_non_finite_written(out: Path) -> None:
    """The README's promise: no checkpoint, no best and no final model from non-finite weights."""
    from safetensors.torch import load_file

    assert not (out / "model.safetensors").exists() and not (out / "run.json").exists()
    if (out / "checkpoints" / "last.pt").exists():
        assert all(torch.isfinite(t).all() for t in final_weights(out).values() if t.is_floating_point())
    if (out / "checkpoints" / "best.safetensors").exists():
        assert all(torch.isfinite(t).all() for t in load_file(out / "checkpoints" / "best.safetensors").values()
                   if t.is_floating_point())


def test_non_finite_loss_stops_with_epoch_and_step(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(image_folder), "--out", str(out), *NAN_ARGS, "--lr", "1e30",
                 "--warmup-epochs", "0", "--epochs", "2", "--checkpoint-every", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("transferkit train: error: ") and "epoch 1, step" in err[-1]
    assert_nothing_non_finite_written(out)


def test_non_finite_weights_stop_before_anything_is_written(image_folder, tmp_path, capsys, monkeypatch):
    """Weights that turn NaN during epoch 2 while every loss was finite: the run stops naming
    epoch 2, and the checkpoint and best model on disk are epoch 1's, finite."""
    from transferkit.train import trainer

    real = trainer.train_one_epoch

    def poisoned(module, batches, to_input, optimizer, scheduler, state, **kwargs):
        result = real(module, batches, to_input, optimizer, scheduler, state, **kwargs)
        if state.epoch == 1:
            with torch.no_grad():
                next(module.parameters()).fill_(float("nan"))
        return result

    monkeypatch.setattr(trainer, "train_one_epoch", poisoned)
    out = tmp_path / "run"
    code = main(["train", "--data", str(image_folder), "--out", str(out), *NAN_ARGS, "--epochs", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("transferkit train: error: weights became non-finite at epoch 2")
    assert_nothing_non_finite_written(out)
    assert load_torch_file(out / "checkpoints" / "last.pt")["state"]["epoch"] == 1
    from transferkit.engine.checkpoint import best_epoch_on_disk
    assert best_epoch_on_disk(out) == 1


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(image_folder, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pth"
    with open(evil, "wb") as f:
        pickle.dump({"fc.weight": _Evil(marker)}, f)
    code = main(["train", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--model", "resnet18",
                 "--weights", str(evil), "--epochs", "1", "--quiet"])
    assert code == 2 and "refused" in capsys.readouterr().err
    assert not marker.exists()


def test_old_torch_is_refused(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(UserError, match="torch>=2.6"):
        check_torch_version()


def _serve_weights_at(monkeypatch, tmp_path, url: str):
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.value, "url", url)


def test_download_hash_mismatch_deletes_and_stops(monkeypatch, tmp_path, image_folder, capsys):
    fake = tmp_path / "served" / "resnet18-f37072fd.pth"  # the name promises a sha256 prefix the content lacks
    fake.parent.mkdir()
    torch.save({"not": torch.zeros(1)}, fake)
    _serve_weights_at(monkeypatch, tmp_path, fake.as_uri())
    code = main(["train", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--model", "resnet18", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "hash" in err
    assert not any((tmp_path / "torch").rglob("*.pth"))


def test_offline_download_names_the_offline_choices(monkeypatch, tmp_path, image_folder, capsys):
    _serve_weights_at(monkeypatch, tmp_path, "http://127.0.0.1:9/resnet18-f37072fd.pth")  # nothing listens there
    code = main(["train", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--model", "resnet18", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "efficientnet_lite0" in err and "--weights" in err and len(err.strip().splitlines()) == 1
