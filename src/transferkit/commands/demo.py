from transferkit.commands import add_command


def register(sub):
    p = add_command(sub, "demo", "the main job, offline: fine-tune efficientnet_lite0 on Fashion-MNIST, "
                    "evaluate on all 10,000 test images, predict a few", "transferkit demo --out runs/demo")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo; replaced if it exists)")
    p.add_argument("--epochs", type=int, default=None, help="override the demo recipe's epochs")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def run(args) -> int:
    from transferkit.demo import run_demo

    return run_demo(args.out, args.epochs, args.quiet)
