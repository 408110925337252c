"""``transferkit train``: config -> data -> model -> (cache) -> epochs -> run directory.

Every epoch ends with ``checkpoints/last.pt`` (exact-resume state) and, when validation
accuracy improved, ``checkpoints/best.safetensors``; the finished run's ``model.safetensors``
is the best epoch's weights. SIGINT/SIGTERM during training write a checkpoint and stop.

Under torchrun every process runs ``train``: the trainable part is wrapped in DDP, each global
batch is split between the processes, step metrics and the stop flag are summed over them
every step (so all stop at the same step), and rank 0 alone writes the run directory.
"""
from __future__ import annotations

import csv
import io
import random
import signal
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from transferkit import checkpoint as ckpt
from transferkit import distributed as dist
from transferkit.config import TrainConfig
from transferkit.dataspec import DataSplits, load_data, stratified_split
from transferkit.devices import auto_batch_size
from transferkit.engine import (Batches, NonFiniteLoss, StepState, amp_dtype, autocast_for, make_optimizer, predict_logits,
                                train_one_epoch, warmup_cosine)
from transferkit.errors import UserError
from transferkit.fastpath import choose_path
from transferkit.finish import finish_run
from transferkit.freeze import apply_freeze, param_groups, plan_freeze, train_mode
from transferkit.images import unusable
from transferkit.lrfind import auto_lr
from transferkit.metrics import score
from transferkit.modeling import create_model
from transferkit.plugins import copy_plugin_into_run
from transferkit.progress import log, make_progress
from transferkit.safeio import check_torch_version, write_text_atomic
from transferkit.shapecheck import check_shapes
from transferkit.tblog import open_log
from transferkit.transforms import Preprocess, prepare
from transferkit.usercode import copy_into_run, is_user_spec, resolve_run_code

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "seconds", "images_per_s"]


class Interrupted(Exception):
    def __init__(self, run_dir: Path):
        super().__init__(f"interrupted; checkpoint saved. Resume with: transferkit train --out {run_dir} --resume")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def decode_files(sets: dict, pre: Preprocess, cfg: TrainConfig, progress) -> dict:
    """Turn file-backed splits into uint8 tensors; stop on broken files (all splits listed) unless --skip-bad."""
    out, bad = {}, []
    for name, imageset in sets.items():
        if not hasattr(imageset, "decode"):
            out[name] = imageset
            continue
        decoded, broken = imageset.decode(pre.size, pre.interpolation, True, cfg.max_pixels,
                                          progress=lambda it, total: progress(it, total=total, desc=f"decoding {name}", unit="img"))
        bad += broken
        out[name] = decoded
    if bad and not cfg.skip_bad:
        raise unusable(bad, ", nothing trained", "Fix or remove them, or pass --skip-bad to drop them")
    if bad:
        log(f"--skip-bad: dropped {len(bad)} unusable image(s), e.g. {bad[0].path} ({bad[0].reason})")
    return out


def training_path(cfg: TrainConfig, tm, sets: dict, device, autocast, progress):
    """What train and lr-find share: preprocessing, freezing, decoded images, a dry forward of a
    real batch, and the chosen input path (feature cache or full forward), announced in one line.

    Returns ``(preprocess, freeze plan, frozen modules, decoded sets, path)``.
    """
    pre = Preprocess(cfg.image_size or tm.info.input_size, tm.info.mean, tm.info.std, tm.info.interpolation)
    plan = plan_freeze(tm.net, tm.layout, cfg.freeze)
    frozen = apply_freeze(tm.net, tm.layout, plan)
    if tm.info.weights == "none" and plan.spec == "backbone":
        # Legitimate (a random-features baseline) but mostly a forgotten --freeze none.
        log("note: --weights none with --freeze backbone trains only the head on random features; "
            "--freeze none trains the whole model")
    tm.net.to(device)
    sets = decode_files(sets, pre, cfg, progress)
    if len(sets["train"]) == 0:
        raise UserError(f"data '{cfg.data}' has no training images")
    check_shapes(tm.net, prepare(sets["train"].batch(torch.arange(min(2, len(sets["train"])))), pre, device),
                 tm.num_classes)
    path = choose_path(cfg, tm, plan, sets, pre, device, autocast, progress)
    log(path.message)
    return pre, plan, frozen, sets, path


def _metrics_csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _prepare_run_dir(cfg: TrainConfig) -> Path:
    run_dir = Path(cfg.out or f"runs/{Path(cfg.model).stem.replace(':', '_').replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not cfg.resume and (run_dir / "run.json").exists() or (not cfg.resume and (run_dir / "checkpoints").exists()):
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _restarted_state(cfg: TrainConfig) -> dict | None:
    """The checkpoint to continue after torchrun (--max-restarts) started the workers again.

    A restart runs the same command, without --resume: continue the run when its checkpoint was
    written by this same command (same settings), rather than refuse the run directory.
    """
    run_dir = Path(cfg.out)
    if cfg.resume or not dist.restart_count() or (run_dir / "run.json").exists():
        return None
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        return None
    state = ckpt.load_checkpoint(run_dir)
    return state if state["config"] == cfg.to_json() else None


def global_batch(cfg: TrainConfig, path, device, autocast) -> int:
    """--batch-size is the global batch, split between the torchrun processes; 'auto' fills each GPU."""
    n = len(path.sources["train"])
    if cfg.batch_size != "auto":
        size = int(cfg.batch_size)
    else:
        sample = path.to_input(path.sources["train"].batch(torch.arange(1)), None, 0)
        size = auto_batch_size(path.module, tuple(sample.shape[1:]), device, autocast, n)
        if device.type == "cuda":  # what fits the smallest GPU, on every GPU
            size = int(dist.all_reduce([size], "min")[0]) * dist.world()
    if size < dist.world() or n < dist.world():
        raise UserError(f"--batch-size {size} with {n} training images cannot be split between {dist.world()} "
                        f"processes: --batch-size is the global batch; give at least {dist.world()}")
    return size


def train(cfg: TrainConfig, splits: DataSplits | None = None) -> dict:
    """Train as ``cfg`` says; ``splits`` (from the Python API) replaces loading ``cfg.data``."""
    with dist.scope():  # under torchrun: join the process group once, leave it at the end
        return _train(cfg, splits)


def _train(cfg: TrainConfig, splits: DataSplits | None) -> dict:
    check_torch_version()
    if dist.launched() and not cfg.out:
        raise UserError("under torchrun give --out RUN_DIR: every process (and every restart) must use the same run directory")
    resume_state = _restarted_state(cfg)
    if resume_state:
        log(f"torchrun restart {dist.restart_count()}: continuing {cfg.out} from its checkpoint")
        cfg = replace(cfg, resume=True)
    run_dir = _prepare_run_dir(cfg)
    if cfg.resume:
        # No process writes the checkpoint before all of them have read it (the first write
        # follows collectives), and writes are atomic: every process reads the same state.
        resume_state = resume_state or ckpt.load_checkpoint(run_dir)
        keep = {"resume": True, "quiet": cfg.quiet, "out": str(run_dir)}
        cfg = TrainConfig(**{**resume_state["config"], **keep})
    device = dist.setup(cfg.device)
    progress = make_progress(cfg.quiet)
    tb = open_log(cfg.log if dist.is_main() else "none", run_dir)  # before any work: a missing tensorboard package fails fast
    seed_everything(cfg.seed)
    precision = amp_dtype(device, cfg.amp)
    autocast = autocast_for(precision)

    splits = splits if splits is not None else load_data(cfg.data, cfg.seed)
    if cfg.train_limit and cfg.train_limit < len(splits.train):
        keep, _ = stratified_split(splits.train.labels.numpy(), 1 - cfg.train_limit / len(splits.train), cfg.seed)
        splits.train = splits.train.subset(keep)
    if resume_state:
        # The run's own copies of the user's files (and plugin), as stored when it started.
        model_spec, head_spec, plugin = resume_state["model_spec"], resume_state["head_spec"], resume_state.get("plugin")
        model_file, head_file = resolve_run_code(run_dir, model_spec, head_spec, plugin)
        tm = create_model(model_file, len(splits.classes), "none", head_file)
        for key, value in resume_state["backbone"].items():
            setattr(tm.info, key, value)
    else:
        tm = create_model(cfg.model, len(splits.classes), cfg.weights, cfg.head)
        model_spec = head_spec = plugin = None
        if dist.is_main():  # rank 0 copies the user's files into the run; the others need the names only
            model_spec = copy_into_run(cfg.model, run_dir) if is_user_spec(cfg.model) else cfg.model
            head_spec = copy_into_run(cfg.head, run_dir) if is_user_spec(cfg.head) else cfg.head
            plugin = copy_plugin_into_run(cfg.model, run_dir) if tm.info.source == "registered" else None
        model_spec, head_spec, plugin = dist.broadcast_object((model_spec, head_spec, plugin))
    if resume_state and len(resume_state["classes"]) != len(splits.classes):
        raise UserError(f"the checkpoint has {len(resume_state['classes'])} classes, the data {len(splits.classes)}")
    sets = {n: s for n, s in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if s is not None}
    pre, plan, frozen, sets, path = training_path(cfg, tm, sets, device, autocast, progress)

    batch_size = global_batch(cfg, path, device, autocast)
    shard = {"rank": dist.rank(), "world": dist.world()}
    train_batches = Batches(path.sources["train"], batch_size, shuffle=True, seed=cfg.seed, **shard)
    eval_batch = max(batch_size, 256 if path.cached else batch_size)
    val_batches = Batches(path.sources["val"], eval_batch, **shard)
    if cfg.lr == "auto":  # the range test runs once, on rank 0 over whole batches, and every process uses its answer
        whole = Batches(path.sources["train"], batch_size, shuffle=True, seed=cfg.seed)
        lr = dist.broadcast_object(auto_lr(cfg, tm, path, whole, frozen, autocast, progress, run_dir) if dist.is_main() else None)
    else:
        lr = float(cfg.lr)
    optimizer = make_optimizer(cfg.optimizer, param_groups(tm.net, tm.layout, lr, cfg.weight_decay, cfg.backbone_scale), lr)
    total = cfg.epochs * len(train_batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, int(cfg.warmup_epochs * len(train_batches))))
    scaler = torch.amp.GradScaler("cuda") if precision == torch.float16 else None

    state, history, best = StepState(), [], {"val_acc": -1.0, "epoch": None}
    if dist.rank():  # dropout draws other numbers on each process; rank 0 keeps the single-process stream
        seed_everything(cfg.seed + 1_000_003 * dist.rank())
    if resume_state:
        tm.net.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if scaler and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        state = StepState(**resume_state["state"])
        history, best = resume_state["history"], resume_state["best"]
        ranks = resume_state.get("rng_ranks") or []
        ckpt.set_rng_state(ranks[dist.rank()] if len(ranks) == dist.world() else resume_state["rng"])
        log(f"resuming {run_dir} at epoch {state.epoch + 1}, batch {state.batch}")
    set_train = lambda: train_mode(path.module, frozen)  # noqa: E731
    sample = path.to_input(path.sources["train"].batch(torch.arange(min(2, len(path.sources["train"])))), None, 0)
    model = dist.ddp(path.module, device, sample, set_train)  # path.module itself when alone

    backbone_json = tm.info.to_json()

    def require_finite():
        # A step can turn weights to inf/NaN while its own loss was finite: stop before they are
        # scored, kept as "best" or checkpointed.
        if not ckpt.finite_weights(tm.net.state_dict()):
            raise UserError(f"weights became non-finite at epoch {state.epoch + 1}, step {state.global_step}; "
                            "nothing was checkpointed from this point; lower --lr")

    def save_last():
        require_finite()
        rngs = dist.all_gather_objects(ckpt.rng_state())  # every process's random stream, for an exact resume
        if not dist.is_main():
            return
        ckpt.save_checkpoint(run_dir, {
            "model": tm.net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "state": asdict(state), "rng": rngs[0],
            "rng_ranks": rngs if len(rngs) > 1 else None,
            "history": history, "best": best, "config": cfg.to_json(), "classes": splits.classes,
            "model_spec": model_spec, "head_spec": head_spec, "plugin": plugin, "backbone": backbone_json})

    stop = {"requested": False}

    def sync(local: list) -> list:
        # One small all-reduce per step: the step's metric sums, and whether any process was
        # signalled, so that all stop after the same step and none waits in a collective.
        *sums, flag = dist.all_reduce([*local, stop["requested"]])
        stop["requested"] = flag > 0
        return sums

    def on_step(current: StepState):
        if stop["requested"]:
            save_last()
            dist.barrier()  # the others exit once rank 0's checkpoint is in place
            raise Interrupted(run_dir)
        if cfg.checkpoint_every and current.global_step % cfg.checkpoint_every == 0:
            save_last()

    def on_signal(signum, _frame):
        stop["requested"] = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while state.epoch < cfg.epochs:
            if state.batch >= len(train_batches):
                state.epoch, state.batch, state.sums = state.epoch + 1, 0, {"loss": 0.0, "correct": 0, "n": 0}
                continue
            lr_now = optimizer.param_groups[-1]["lr"]
            result = train_one_epoch(model, train_batches, path.to_input, optimizer, scheduler, state,
                                     set_train=lambda: train_mode(model, frozen), label_smoothing=cfg.label_smoothing,
                                     accumulate=cfg.accumulate, autocast=autocast, scaler=scaler, on_step=on_step,
                                     progress=progress, sync=sync)
            require_finite()
            dist.broadcast_module(path.module, buffers_only=True)  # BatchNorm statistics: rank 0's, as checkpointed
            logits, labels = predict_logits(path.module, val_batches, path.to_input, autocast)
            val = score(logits, labels, splits.classes)
            row = {"epoch": state.epoch + 1, **{k: round(v, 6) for k, v in result.items()},
                   "val_loss": round(val["loss"], 6), "val_acc": round(val["top1"], 6), "val_top5": round(val["top5"], 6),
                   "lr": lr_now}
            history.append(row)
            tb.epoch(row)
            log(f"epoch {row['epoch']}/{cfg.epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
                f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} | {row['images_per_s']:.0f} img/s")
            if val["top1"] > best["val_acc"]:
                best = {"val_acc": val["top1"], "epoch": state.epoch + 1}
                if dist.is_main():
                    ckpt.save_best(run_dir, tm.net.state_dict())
            state.epoch, state.batch, state.sums = state.epoch + 1, 0, {"loss": 0.0, "correct": 0, "n": 0}
            save_last()
            if dist.is_main():
                write_text_atomic(run_dir / "metrics.csv", _metrics_csv(history))
            if dist.any_true(stop["requested"]):  # a signal during validation reached some processes only
                raise Interrupted(run_dir)
    except NonFiniteLoss as exc:
        raise UserError(str(exc)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        tb.close()

    return finish_run(run_dir, cfg=cfg, tm=tm, path=path, splits=splits, sets=sets, pre=pre, plan=plan,
                      specs={"model": model_spec, "head": head_spec, "plugin": plugin}, backbone_json=backbone_json,
                      lr=lr, best=best, eval_batch=eval_batch, autocast=autocast, progress=progress)
