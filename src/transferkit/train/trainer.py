"""``transferkit train``: set up, loop over epochs, finish (the shape of torchvision's reference main).

Every epoch ends with ``checkpoints/last.pt`` (exact-resume state) and, when validation
accuracy improved, ``checkpoints/best.safetensors``; the finished run's ``model.safetensors``
is the best epoch's weights. SIGINT/SIGTERM during training write a checkpoint and stop.

Under torchrun every process runs ``train``: the trainable part is wrapped in DDP, each global
batch is split between the processes, step metrics and the stop flag are summed over them
every step (so all stop at the same step), and rank 0 alone writes the run directory.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from transferkit.core import distributed as dist
from transferkit.core.config import TrainConfig
from transferkit.core.errors import UserError
from transferkit.core.progress import log
from transferkit.core.safeio import check_torch_version
from transferkit.data.specs import DataSplits
from transferkit.engine import checkpoint as ckpt
from transferkit.engine.batches import Batches
from transferkit.engine.loop import NonFiniteLoss, StepState, balanced_class_weights, predict_logits, train_one_epoch
from transferkit.engine.optim import make_optimizer, warmup_cosine
from transferkit.models.fewshot import is_fewshot
from transferkit.models.freeze import param_groups, train_mode
from transferkit.models.usercode import TRUST_FLAG, names_code
from transferkit.runs.history import write_history
from transferkit.runs.metrics import score
from transferkit.train.finish import finish_run
from transferkit.train.lrfind import auto_lr
from transferkit.train.recipes import fit_fewshot_head, linear_probe
from transferkit.train.setup import Prepared
from transferkit.train.start import Start, start


@dataclass
class TimeLimit:
    """When training must end (``train --budget``): no epoch starts that the clock says would end
    past ``deadline``, judged by the longest epoch so far; ``patience`` epochs without a better
    validation accuracy also stop it (the best epoch's weights are the model either way)."""

    deadline: float
    clock: object                 # () -> seconds, the same clock as deadline (time.monotonic; a fake in tests)
    patience: int = 0             # 0: no early stopping
    stopped: str = ""             # why training ended before its last epoch, for run.json

    def allows_another(self, run: "Training", longest: float) -> bool:
        epochs = [row["val_acc"] for row in run.history]
        if self.patience and len(epochs) > self.patience and max(epochs[-self.patience:]) <= max(epochs[:-self.patience]):
            self.stopped = f"early stop: no better validation accuracy in {self.patience} epochs"
        elif self.clock() + longest > self.deadline:
            self.stopped = (f"time limit: epoch {run.state.epoch + 1} would end "
                            f"{self.clock() + longest - self.deadline:.0f} s past the budget")
        return not self.stopped


class Interrupted(Exception):
    def __init__(self, run_dir: Path, specs: dict):
        # A run that names code (its model, head or plugin file) resumes only with --trust-code.
        trust = f" {TRUST_FLAG}" if names_code(specs["model"], specs["head"], specs["plugin"]) else ""
        super().__init__(f"interrupted; checkpoint saved. Resume with: transferkit train --out {run_dir} --resume{trust}")


@dataclass
class Training:
    """What one ``train`` call holds from its first step to its finish."""

    start: Start
    prepared: Prepared
    model: nn.Module              # the trainable part (DDP-wrapped under torchrun)
    train_batches: Batches
    val_batches: Batches
    eval_batch: int
    lr: float
    optimizer: torch.optim.Optimizer | None      # None: a head fitted without gradient steps (few-shot)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler | None
    class_weights: torch.Tensor | None = None    # --class-weights balanced
    recipe: dict = field(default_factory=dict)   # what a recipe's extra phases recorded (LP-FT's linear probe)
    state: StepState = field(default_factory=StepState)
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_acc": -1.0, "epoch": None})
    plan: dict | None = None      # train --budget: the plan this run executes, kept in run.json
    signalled: bool = False       # set by the signal handler, at any moment
    agreed_stop: bool = False     # set once per step by all processes together: what decides

    @property
    def cfg(self) -> TrainConfig:
        return self.start.cfg

    @property
    def run_dir(self) -> Path:
        return self.start.run_dir

    def require_finite(self) -> None:
        # A step can turn weights to inf/NaN while its own loss was finite: stop before they are
        # scored, kept as "best" or checkpointed.
        if not ckpt.finite_weights(self.start.tm.net.state_dict()):
            raise UserError(f"weights became non-finite at epoch {self.state.epoch + 1}, step {self.state.global_step}; "
                            "nothing was checkpointed from this point; lower --lr")

    def save_last(self) -> None:
        self.require_finite()
        rngs = dist.all_gather_objects(ckpt.rng_state())  # every process's random stream, for an exact resume
        if not dist.is_main():
            return
        s = self.start
        ckpt.save_checkpoint(self.run_dir, {
            "model": s.tm.net.state_dict(), "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None, "recipe": self.recipe,
            "state": asdict(self.state), "rng": rngs[0], "rng_ranks": rngs if len(rngs) > 1 else None,
            "history": self.history, "best": self.best, "config": self.cfg.to_json(), "classes": s.splits.classes,
            "batch_size": self.train_batches.batch_size, "model_spec": s.specs["model"], "head_spec": s.specs["head"],
            "plugin": s.specs["plugin"], "backbone": s.tm.info.to_json()})

    def sync(self, local: list) -> list:
        # One small all-reduce per step: the step's metric sums, and whether any process was
        # signalled, so that all stop after the same step and none waits in a collective.
        *sums, flag = dist.all_reduce([*local, self.signalled])
        self.agreed_stop = flag > 0
        return sums

    def on_step(self, current: StepState) -> None:
        if self.agreed_stop:  # never the raw signal flag: it may differ between processes right now
            self.save_last()
            dist.barrier()  # the others exit once rank 0's checkpoint is in place
            raise Interrupted(self.run_dir, self.start.specs)
        if self.cfg.checkpoint_every and current.global_step % self.cfg.checkpoint_every == 0:
            self.save_last()

    def run_epoch(self) -> None:
        """One pass over the training batches, validation, and the epoch's checkpoint."""
        cfg, path, frozen = self.cfg, self.prepared.path, self.prepared.frozen
        if self.state.batch >= len(self.train_batches):  # a checkpoint taken after the epoch's last step
            self.next_epoch()
            return
        lr_now = self.optimizer.param_groups[-1]["lr"]
        result = train_one_epoch(self.model, self.train_batches, path.to_input, self.optimizer, self.scheduler, self.state,
                                 set_train=lambda: train_mode(self.model, frozen), label_smoothing=cfg.label_smoothing,
                                 accumulate=cfg.accumulate, autocast=self.start.autocast, scaler=self.scaler,
                                 on_step=self.on_step, progress=self.start.progress, sync=self.sync,
                                 class_weights=self.class_weights, mix=path.mix)
        self.close_epoch(result, lr_now, cfg.epochs)

    def close_epoch(self, result: dict, lr_now: float, total: int) -> None:
        """Validation, the metrics row, the best weights and the checkpoint after the epoch's training."""
        self.require_finite()
        path = self.prepared.path
        dist.broadcast_module(path.module, buffers_only=True)  # BatchNorm statistics: rank 0's, as checkpointed
        logits, labels = predict_logits(path.module, self.val_batches, path.to_input, self.start.autocast)
        val = score(logits, labels, self.start.splits.classes)
        row = {"epoch": self.state.epoch + 1, **{k: round(v, 6) for k, v in result.items()},
               "val_loss": round(val["loss"], 6), "val_acc": round(val["top1"], 6), "val_top5": round(val["top5"], 6),
               "lr": lr_now}
        self.history.append(row)
        self.start.tb.epoch(row)
        log(f"epoch {row['epoch']}/{total}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
            f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} | {row['images_per_s']:.0f} img/s")
        improved = val["top1"] > self.best["val_acc"]
        if improved:
            self.best = {"val_acc": val["top1"], "epoch": self.state.epoch + 1}
        self.next_epoch()
        self.save_last()  # records the new best first: a kill before the next line is repaired on resume
        if dist.is_main():
            if improved:
                ckpt.save_best(self.run_dir, self.start.tm.net.state_dict(), self.best["epoch"])
            write_history(self.run_dir, self.history)
        if dist.any_true(self.signalled):  # a signal during validation reached some processes only
            raise Interrupted(self.run_dir, self.start.specs)

    def next_epoch(self) -> None:
        self.state.epoch, self.state.batch, self.state.sums = self.state.epoch + 1, 0, {"loss": 0.0, "correct": 0, "n": 0}


def train(cfg: TrainConfig, splits: DataSplits | None = None, limit: TimeLimit | None = None,
          plan: dict | None = None) -> dict:
    """Train as ``cfg`` says; ``splits`` (from the Python API) replaces loading ``cfg.data``;
    ``limit`` ends training early (``train --budget``), ``plan`` is what run.json records of it."""
    check_torch_version()
    with dist.scope():  # under torchrun: join the process group once, leave it at the end
        run = set_up(start(cfg, splits))
        run.plan = plan
        try:
            with stop_on_signals(run):
                if is_fewshot(run.cfg.head):
                    if run.state.epoch == 0:  # one pass, no gradient steps; a resume after it has nothing to do
                        run.close_epoch(fit_fewshot_head(run.start, run.eval_batch), 0.0, 1)
                else:
                    longest = 0.0
                    while run.state.epoch < run.cfg.epochs:
                        if limit is not None and run.history and not limit.allows_another(run, longest):
                            log(f"stopping after epoch {run.state.epoch}: {limit.stopped}")
                            if run.plan is not None:
                                run.plan["stopped"] = f"after epoch {run.state.epoch} of {run.cfg.epochs}: {limit.stopped}"
                            break
                        began = limit.clock() if limit is not None else 0.0
                        run.run_epoch()
                        if limit is not None:
                            longest = max(longest, limit.clock() - began)
        except NonFiniteLoss as exc:
            raise UserError(str(exc)) from None
        finally:
            run.start.tb.close()
        return finish_run(run)


def set_up(s: Start) -> Training:
    """Batches, learning rate, optimizer and schedule, a recipe's first phase, and the checkpoint's
    state on a resume."""
    cfg, path = s.cfg, s.prepared.path
    resume = s.resume_state
    batch_size = resume.get("batch_size") if resume and resume.get("batch_size") else s.batch_size
    shard = {"rank": dist.rank(), "world": dist.world()}
    train_batches = Batches(path.sources["train"], batch_size, shuffle=True, seed=cfg.seed,
                            balanced=cfg.sampler == "balanced", **shard)
    eval_batch = max(batch_size, 256 if path.cached else batch_size)
    val_batches = Batches(path.sources["val"], eval_batch, **shard)
    recipe = (resume or {}).get("recipe") or {}
    if cfg.recipe == "lpft" and not resume:  # a resume continues from the checkpoint written after the probe
        recipe = {"linear_probe": linear_probe(s, eval_batch)}
    trainable = any(p.requires_grad for p in path.module.parameters())
    if cfg.lr == "auto" and trainable:  # the range test runs once, on rank 0 over whole batches; all use its answer
        whole = Batches(path.sources["train"], batch_size, shuffle=True, seed=cfg.seed, balanced=cfg.sampler == "balanced")
        lr = dist.broadcast_object(auto_lr(cfg, s.tm, path, whole, s.prepared.frozen, s.autocast, s.progress, s.run_dir)
                                   if dist.is_main() else None)
    else:
        lr = float(cfg.lr) if cfg.lr != "auto" else 0.0
    optimizer = scheduler = None
    if trainable:
        optimizer = make_optimizer(cfg.optimizer, param_groups(s.tm.net, s.tm.layout, lr, cfg.weight_decay,
                                                               cfg.backbone_scale), lr)
        total = cfg.epochs * len(train_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, int(cfg.warmup_epochs * len(train_batches))))
    scaler = torch.amp.GradScaler("cuda") if s.precision == torch.float16 else None
    if dist.rank():  # dropout draws other numbers on each process; rank 0 keeps the single-process stream
        torch.manual_seed(cfg.seed + 1_000_003 * dist.rank())
    weights = balanced_class_weights(path.sources["train"].labels, len(s.splits.classes)).to(s.device) \
        if cfg.class_weights == "balanced" else None
    run = Training(s, s.prepared, path.module, train_batches, val_batches, eval_batch, lr, optimizer, scheduler, scaler,
                   weights, recipe)
    if resume:
        if optimizer:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        if scaler and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        run.state, run.history, run.best = StepState(**resume["state"]), resume["history"], resume["best"]
        ranks = resume.get("rng_ranks") or []
        ckpt.set_rng_state(ranks[dist.rank()] if len(ranks) == dist.world() else resume["rng"])
        log(f"resuming {s.run_dir} at epoch {run.state.epoch + 1}, batch {run.state.batch}")
    elif recipe:
        run.save_last()  # the probed head is where fine-tuning starts: a resume continues from here
    if trainable:
        sample = path.to_input(path.sources["train"].batch(torch.arange(min(2, len(path.sources["train"])))), None, 0)
        run.model = s.wrap(path.module, sample, lambda: train_mode(path.module, s.prepared.frozen))
    return run


@contextmanager
def stop_on_signals(run: Training):
    """SIGINT/SIGTERM ask for a stop; the step loop then checkpoints and every process stops."""
    def on_signal(_signum, _frame):
        run.signalled = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
