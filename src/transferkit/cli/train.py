"""``transferkit train``."""
import sys

from transferkit.core.config import TrainConfig, build_config
from transferkit.core.distributed import is_main
from transferkit.train.trainer import Interrupted, train


def run(args) -> int:
    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    cfg = build_config(flags, args.config)
    try:
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
