"""``transferkit train``."""
import sys

from transferkit.core.config import TrainConfig, build_config
from transferkit.core.distributed import is_main
from transferkit.core.errors import UserError
from transferkit.plan.budget import DEFAULT_BUDGET, parse_duration, plan_and_train
from transferkit.plan.rank import parse_list
from transferkit.train.trainer import Interrupted, train


def run(args) -> int:
    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    cfg = build_config(flags, args.config)
    try:
        if args.budget or args.auto:
            if cfg.resume:
                raise UserError("--budget/--auto plan a new run; --resume continues one with its own settings")
            models = parse_list(args.models) or ([cfg.model] if flags.get("model") else None)
            sizes = parse_list(args.sizes, int) or ([cfg.image_size] if flags.get("image_size") else None)
            result = plan_and_train(cfg, parse_duration(args.budget or DEFAULT_BUDGET), models, sizes,
                                    robust=args.robust)
        else:
            result = train(cfg)
    except Interrupted as exc:
        if is_main():  # under torchrun every process stops; one says so
            print(f"transferkit train: {exc}", file=sys.stderr)
        return 130
    if not is_main():
        return 0
    m = result["metrics"]
    print(f"{result['split']} top1 {m['top1']:.4f} top5 {m['top5']:.4f} (n={m['n']}, best epoch {result['best_epoch']})")
    print(f"run directory: {result['run_dir']}")
    return 0
