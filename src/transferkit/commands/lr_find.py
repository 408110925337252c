from transferkit.commands import add_command
from transferkit.errors import UserError

# Train flags that mean nothing to a sweep of ~100 steps (and --out names the plot here, not a run dir).
NOT_FOR_SWEEP = ("out", "resume", "epochs", "lr", "warmup_epochs", "checkpoint_every", "log")


def register(sub):
    from transferkit.config import add_arguments

    p = add_command(sub, "lr-find", "learning-rate range test: sweep the lr from 1e-7 to 1 on the training path "
                    "and suggest the steepest descent of the loss (what `train --lr auto` uses)",
                    "transferkit lr-find --data path/to/images --model resnet18 --freeze backbone --out lr_find.png")
    p.add_argument("--config", metavar="FILE.yaml", help="the same settings file as train (flags win)")
    p.add_argument("--out", default="lr_find.png", metavar="FILE.png", help="where to write the plot (default: lr_find.png)")
    p.add_argument("--steps", type=int, default=100, help="sweep length in optimizer steps (default: 100)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate (default: 1e-7)")
    p.add_argument("--end-lr", type=float, default=1.0, help="last learning rate (default: 1)")
    add_arguments(p, skip=NOT_FOR_SWEEP)
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from transferkit.config import TrainConfig, build_config
    from transferkit.lrfind import find_lr
    from transferkit.plots import lr_find_png
    from transferkit.progress import make_progress
    from transferkit.safeio import atomic_write

    if args.steps < 3:
        raise UserError("--steps must be at least 3")
    if not 0 < args.start_lr < args.end_lr:
        raise UserError(f"need 0 < --start-lr < --end-lr, got {args.start_lr:g} and {args.end_lr:g}")
    if not args.out.lower().endswith(".png"):
        raise UserError(f"--out must name a .png file, got '{args.out}'")
    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and k not in NOT_FOR_SWEEP}
    cfg = build_config(flags, args.config)
    try:
        finding = find_lr(cfg, make_progress(cfg.quiet), steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr)
    except ValueError as exc:  # the very first step was already non-finite
        raise UserError(f"lr-find recorded no usable step: {exc}; check the data or lower --start-lr") from None
    png = lr_find_png(finding)
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_bytes(png))
    print(f"suggested lr: {finding.suggestion:.3g}  (steepest descent of the smoothed loss; {finding.stopped})")
    print(f"plot: {args.out}")
    print(f"use it: transferkit train --lr {finding.suggestion:.3g} ...  (or --lr auto to run this sweep inside train)")
    return 0
