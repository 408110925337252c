from transferkit.commands import TRUSTED_RUN, add_command
from transferkit.errors import UserError


def register(sub):
    p = add_command(sub, "predict", "top-k classes with probabilities for images (files or folders, walked recursively)",
                    "transferkit predict runs/pets photo.jpg more_photos/ --topk 5\n"
                    "  transferkit predict --model efficientnet_lite0 photo.jpg   # ImageNet classes")
    p.add_argument("inputs", nargs="+", metavar="RUN_DIR|IMAGE", help=f"{TRUSTED_RUN}; then images or folders")
    p.add_argument("--model", help="predict ImageNet classes with this pretrained backbone instead of a run")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", choices=("torch", "onnx", "torchscript"), default="torch",
                   help="torch: the run's weights; onnx/torchscript: the file `transferkit export` wrote (CPU)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def run(args) -> int:
    from transferkit.devices import pick_device
    from transferkit.predict import collect_images, format_predictions, is_run_dir, load_predictor, predict_images
    from transferkit.progress import make_progress

    inputs, run_dir = list(args.inputs), None
    if not args.model:
        if not is_run_dir(inputs[0]):
            raise UserError(f"{inputs[0]} is not a run directory; give RUN_DIR first, or --model NAME for ImageNet classes")
        run_dir, inputs = inputs[0], inputs[1:]
        if not inputs:
            raise UserError("give at least one image or folder after the run directory")
    if args.backend != "torch" and args.model:
        raise UserError(f"--backend {args.backend} predicts with an exported run; give RUN_DIR instead of --model")
    if args.topk < 1:
        raise UserError("--topk must be at least 1")
    paths = collect_images(inputs)
    if args.backend == "torch":
        net, pre, classes = load_predictor(run_dir, args.model)
        device = pick_device(args.device)
    else:
        from transferkit.runtime import load_exported

        net, pre, classes = load_exported(run_dir, args.backend)
        device = "cpu"  # the exported file runs where its runtime runs: the CPU here
    results = predict_images(net.to(device), pre, classes, paths, args.topk, device=device,
                             progress=make_progress(args.quiet))
    print(format_predictions(results, args.format))
    return 1 if any("error" in r for r in results) else 0
