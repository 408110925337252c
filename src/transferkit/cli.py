"""The ``transferkit`` command line: ``main(argv) -> exit status``; heavy imports inside commands.

A user mistake exits 2 with one line on stderr (``transferkit <command>: error: ...``);
a traceback means a bug in transferkit.
"""
from __future__ import annotations

import argparse
import json
import sys

from transferkit.errors import UserError

EXAMPLES = {
    "models": "transferkit models --offline",
    "data": "transferkit data check path/to/images",
    "train": "transferkit train --data path/to/images --model resnet18 --freeze backbone --epochs 5 --out runs/pets",
    "eval": "transferkit eval runs/pets --split test --format json",
    "predict": "transferkit predict runs/pets photo.jpg more_photos/ --topk 5",
    "demo": "transferkit demo --out runs/demo",
}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the problem (and still exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _sub(subparsers, name: str, help_text: str, **kwargs) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help_text, description=help_text,
                                 epilog=f"example:\n  {EXAMPLES.get(name, '')}", formatter_class=argparse.RawDescriptionHelpFormatter,
                                 **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from transferkit import __version__
    from transferkit.config import add_arguments

    parser = Parser(prog="transferkit", description="Transfer learning for image classification with PyTorch.")
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = _sub(sub, "models", "list backbones and whether their ImageNet weights are available now")
    p.add_argument("--offline", action="store_true", help="only models whose weights are on this machine")

    p = _sub(sub, "data", "inspect a data set")
    data_sub = p.add_subparsers(dest="data_command", metavar="check", parser_class=Parser)
    data_sub.required = True
    c = data_sub.add_parser("check", help="classes, counts, duplicates and unusable files; exit 1 when not clean",
                            epilog=f"example:\n  {EXAMPLES['data']}", formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("spec", help="data SPEC (folder, CSV or built-in name)")
    c.add_argument("--format", choices=("table", "json"), default="table")
    c.add_argument("--max-pixels", type=int, default=None, help="images above this many pixels are reported")

    p = _sub(sub, "train", "fine-tune a pretrained backbone on your classes; writes a run directory")
    p.add_argument("--config", metavar="FILE.yaml", help="settings file with the same names as the flags (flags win)")
    add_arguments(p)

    p = _sub(sub, "eval", "score a run on the test split of its data, or on --data")
    p.add_argument("run_dir")
    p.add_argument("--data", help="another data SPEC with the run's class names")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")

    p = _sub(sub, "predict", "top-k classes with probabilities for images (files or folders)")
    p.add_argument("inputs", nargs="+", metavar="RUN_DIR|IMAGE", help="a run directory, then images or folders")
    p.add_argument("--model", help="predict ImageNet classes with this pretrained backbone instead of a run")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")

    p = _sub(sub, "demo", "fine-tune efficientnet_lite0 on Fashion-MNIST offline, evaluate on its test set, predict")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--epochs", type=int, default=None, help="override the demo recipe's epochs")
    p.add_argument("--quiet", action="store_true")
    return parser


def cmd_models(args) -> int:
    from transferkit.backbones import PACKAGED, torchvision_names
    from transferkit.weights import weights_status

    rows = [(name, "packaged EfficientNet-Lite (timm architecture)") for name in PACKAGED]
    rows += [(name, "torchvision") for name in torchvision_names()]
    print(f"{'model':<28}{'weights':<10}source")
    for name, source in rows:
        status = weights_status(name)
        if args.offline and status == "download":
            continue
        print(f"{name:<28}{status:<10}{source}")
    if not args.offline:
        print("timm/NAME                   download  any timm model (timm.list_models()); hub:owner/repo:entry via torch.hub")
    return 0


def cmd_train(args) -> int:
    from transferkit.config import TrainConfig, build_config
    from transferkit.trainer import Interrupted, train

    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    cfg = build_config(flags, args.config)
    try:
        result = train(cfg)
    except Interrupted as exc:
        print(f"transferkit train: {exc}", file=sys.stderr)
        return 130
    m = result["metrics"]
    print(f"{result['split']} top1 {m['top1']:.4f} top5 {m['top5']:.4f} (n={m['n']}, best epoch {result['best_epoch']})")
    print(f"run directory: {result['run_dir']}")
    return 0


def cmd_eval(args) -> int:
    from transferkit.evaluate import evaluate_run, format_table
    from transferkit.progress import make_progress

    result = evaluate_run(args.run_dir, args.data, args.split, args.device, progress=make_progress(args.quiet))
    if args.format == "json":
        print(json.dumps({k: v for k, v in result.items()}, indent=2))
    else:
        print(format_table(result))
    return 0


def cmd_predict(args) -> int:
    from transferkit.devices import pick_device
    from transferkit.predict import collect_images, format_predictions, is_run_dir, load_predictor, predict_images
    from transferkit.progress import make_progress

    inputs = list(args.inputs)
    run_dir = None
    if not args.model:
        if not is_run_dir(inputs[0]):
            raise UserError(f"{inputs[0]} is not a run directory; give RUN_DIR first, or --model NAME for ImageNet classes")
        run_dir, inputs = inputs[0], inputs[1:]
        if not inputs:
            raise UserError("give at least one image or folder after the run directory")
    if args.topk < 1:
        raise UserError("--topk must be at least 1")
    net, pre, classes = load_predictor(run_dir, args.model)
    device = pick_device(args.device)
    results = predict_images(net.to(device), pre, classes, collect_images(inputs), args.topk, device=device,
                             progress=make_progress(args.quiet))
    print(format_predictions(results, args.format))
    return 1 if any("error" in r for r in results) else 0


def cmd_data(args) -> int:
    from transferkit.datacheck import check_data, format_report

    report = check_data(args.spec, max_pixels=args.max_pixels)
    print(json.dumps(report, indent=2) if args.format == "json" else format_report(report))
    return 0 if report["clean"] else 1


def cmd_demo(args) -> int:
    from transferkit.demo import run_demo

    return run_demo(args.out, args.epochs, args.quiet)


COMMANDS = {"models": cmd_models, "train": cmd_train, "eval": cmd_eval, "predict": cmd_predict,
            "data": cmd_data, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"transferkit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
