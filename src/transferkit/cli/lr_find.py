"""``transferkit lr-find``."""
from pathlib import Path

from transferkit.cli.parser import NOT_FOR_SWEEP
from transferkit.core.config import TrainConfig, build_config
from transferkit.core.errors import UserError
from transferkit.core.progress import make_progress
from transferkit.core.safeio import atomic_write
from transferkit.runs.plots import lr_find_png
from transferkit.train.lrfind import find_lr


def run(args) -> int:


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
