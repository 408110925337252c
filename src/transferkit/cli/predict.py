"""``transferkit predict``."""
from transferkit.core.devices import pick_device
from transferkit.core.errors import UserError
from transferkit.core.progress import make_progress
from transferkit.deploy.backends import load_exported, load_predictor
from transferkit.deploy.predict import collect_images, format_predictions, is_run_dir, predict_images


def run(args) -> int:
    inputs, run_dir = list(args.inputs), None
    if not args.model:
        if not is_run_dir(inputs[0]):
            raise UserError(f"{inputs[0]} is not a run directory; give RUN_DIR first, or --model NAME for ImageNet classes")
        run_dir, inputs = inputs[0], inputs[1:]
        if not inputs:
            raise UserError("give at least one image or folder after the run directory")
    if args.weights and not args.model:
        raise UserError("--weights goes with --model NAME; a run directory brings its own weights")
    if args.backend != "torch" and args.model:
        raise UserError(f"--backend {args.backend} predicts with an exported run; give RUN_DIR instead of --model")
    if args.topk < 1:
        raise UserError("--topk must be at least 1")
    paths = collect_images(inputs)
    if args.backend == "torch":
        net, pre, classes = load_predictor(run_dir, args.model, args.weights or "imagenet")
        device = pick_device(args.device)
    else:
        net, pre, classes = load_exported(run_dir, args.backend)
        device = "cpu"  # the exported file runs where its runtime runs: the CPU here
    results = predict_images(net.to(device), pre, classes, paths, args.topk, device=device,
                             progress=make_progress(args.quiet))
    print(format_predictions(results, args.format))
    return 1 if any("error" in r for r in results) else 0
