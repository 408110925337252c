"""The start of a training run: settings (a resume takes the checkpoint's), the run directory,
the device, the data, the model with its weights, and the path its batches take.

The model holds its final starting weights before anything runs it: on a resume the
checkpoint's weights are loaded first, so a feature cache built now is built from them.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from transferkit.core import distributed as dist
from transferkit.core.config import TrainConfig, resume_config
from transferkit.core.errors import UserError
from transferkit.core.progress import log, make_progress
from transferkit.data.specs import DataSplits, ignored_note, load_data, split_lines
from transferkit.engine import checkpoint as ckpt
from transferkit.engine.ddp import ddp
from transferkit.engine.optim import autocast_for
from transferkit.models.family import BackboneInfo
from transferkit.models.plugins import copy_plugin_into_run
from transferkit.models.transfer import TransferModel, create_model, rebuild_model
from transferkit.models.usercode import copy_into_run, is_user_spec, resolve_run_code, trusting_code
from transferkit.models.weights import load_exactly
from transferkit.runs.tblog import open_log
from transferkit.runtimes.choose import engine_device
from transferkit.train.setup import (
    Prepared,
    check_recipe,
    classes_without_images,
    global_batch,
    limit_training_images,
    on_device,
    prepare_run_dir,
    restarted_state,
    run_dir_path,
    seed_everything,
    training_path,
    without_images_note,
)


@dataclass
class Start:
    cfg: TrainConfig
    run_dir: Path
    splits: DataSplits
    tm: TransferModel
    specs: dict                   # the model, head and plugin specs as run.json stores them
    prepared: Prepared
    device: torch.device
    precision: torch.dtype | None  # mixed precision on CUDA, None on the CPU
    progress: object
    tb: object                    # the --log writer
    batch_size: int
    resume_state: dict | None

    def autocast(self):
        return autocast_for(self.precision)()

    def wrap(self, module, sample, set_train):
        """The trainable part as the optimizer steps it: itself, or in DDP under torchrun."""
        return ddp(module, self.device, sample, set_train)


def start(cfg: TrainConfig, splits: DataSplits | None = None) -> Start:
    if dist.launched() and not cfg.out:
        raise UserError("under torchrun give --out RUN_DIR: every process (and every restart) must use the same run directory")
    resume_state = restarted_state(cfg)
    if resume_state:
        log(f"torchrun restart {dist.restart_count()}: continuing {cfg.out} from its checkpoint")
        cfg = replace(cfg, resume=True)
    run_dir = run_dir_path(cfg)
    made = [d for d in (run_dir, *run_dir.parents) if not d.exists()]  # deepest first
    prepare_run_dir(cfg, run_dir)
    # A torchrun restart continues this same command's unfinished run (restarted_state checks that its
    # checkpoint holds exactly these settings): the code in it is what this command named and copied.
    trusted = trusting_code(True) if resume_state else contextlib.nullcontext()
    try:
        with trusted:
            return _start(cfg, splits, run_dir, resume_state)
    except BaseException:
        # A run that stops before writing anything (a mistake in the data or the model, say)
        # leaves no empty folders behind; os.rmdir removes only empty ones.
        if dist.is_main():
            with contextlib.suppress(OSError):
                for folder in made:
                    os.rmdir(folder)
        raise


def _start(cfg: TrainConfig, splits: DataSplits | None, run_dir: Path, resume_state: dict | None) -> Start:
    if cfg.resume:
        # No process writes the checkpoint before all of them have read it (the first write
        # follows collectives), and writes are atomic: every process reads the same state.
        resume_state = resume_state or ckpt.load_checkpoint(run_dir)
        cfg = resume_config(resume_state["config"], cfg)
    check_recipe(cfg)  # a mistyped --augment stops the run before anything loads
    device = dist.setup(engine_device(cfg.device, cfg.backend, cfg.precision))  # CPU engines run on the CPU
    on_it, precision = on_device(cfg, device)  # a precision that cannot run here stops before any work
    progress = make_progress(cfg.quiet)
    tb = open_log(cfg.log if dist.is_main() else "none", run_dir)  # before any work: a missing package fails fast
    seed_everything(cfg.seed)
    splits = limit_training_images(splits if splits is not None else
                                   load_data(cfg.data, cfg.seed, cfg.allow_outside_paths), cfg)
    if note := ignored_note(splits):
        log(note)
    if missing := classes_without_images(splits):
        log(without_images_note(missing, cfg.head))
    tm, specs = _model(cfg, splits, run_dir, resume_state)
    sets = {n: s for n, s in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if s is not None}
    autocast = autocast_for(precision)
    prepared = training_path(on_it, tm, sets, device, autocast, progress, notes=split_lines(splits))
    batch_size = (resume_state or {}).get("batch_size") or global_batch(cfg, prepared.path, device, autocast)
    return Start(cfg, run_dir, splits, tm, specs, prepared, device, precision, progress, tb, batch_size, resume_state)


def _model(cfg: TrainConfig, splits: DataSplits, run_dir: Path, resume_state: dict | None) -> tuple[TransferModel, dict]:
    """The model with the weights training starts from, and its specs as run.json stores them."""
    if resume_state is None:
        tm = create_model(cfg.model, len(splits.classes), cfg.weights, cfg.head)
        specs = {"model": None, "head": None, "plugin": None}
        if dist.is_main():  # rank 0 copies the user's files into the run; the others need the names only
            specs = {"model": copy_into_run(cfg.model, run_dir) if is_user_spec(cfg.model) else cfg.model,
                     "head": copy_into_run(cfg.head, run_dir) if is_user_spec(cfg.head) else cfg.head,
                     "plugin": copy_plugin_into_run(cfg.model, run_dir) if tm.info.source == "registered" else None}
        return tm, dist.broadcast_object(specs)
    if resume_state["classes"] != splits.classes:
        # Same count, other names or order: every label would silently mean another class.
        raise UserError(f"--resume: the data's classes {splits.classes[:6]} are not the checkpoint's "
                        f"{resume_state['classes'][:6]} (names and order must match); restore the data as it was")
    if dist.is_main():
        ckpt.repair_best(run_dir, resume_state)
    # The run's own copies of the user's files (and plugin), as stored when it started.
    specs = {"model": resume_state["model_spec"], "head": resume_state["head_spec"], "plugin": resume_state.get("plugin")}
    model_file, head_file = resolve_run_code(run_dir, specs["model"], specs["head"], specs["plugin"])
    # The architecture as the run built it (BackboneInfo.arch included), then the checkpoint's weights.
    tm = rebuild_model(BackboneInfo.from_json({**resume_state["backbone"], "name": model_file}), len(splits.classes),
                       head_file)
    load_exactly(tm.net, resume_state["model"], f"--resume: the checkpoint does not fit {model_file}")
    return tm, specs
