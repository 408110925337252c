import sys

from transferkit.commands import add_command


def register(sub):
    from transferkit.config import add_arguments

    p = add_command(sub, "train", "fine-tune a pretrained backbone on your classes; writes a run directory",
                    "transferkit train --data path/to/images --model resnet18 --freeze backbone --epochs 5 --out runs/pets")
    p.add_argument("--config", metavar="FILE.yaml", help="settings file with the same names as the flags (flags win)")
    add_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from transferkit.config import TrainConfig, build_config
    from transferkit.distributed import is_main
    from transferkit.trainer import Interrupted, train

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
