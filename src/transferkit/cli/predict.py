"""``transferkit predict``."""
from transferkit.core.devices import pick_device
from transferkit.core.errors import UserError
from transferkit.core.progress import make_progress
from transferkit.data.tta import parse_tta
from transferkit.deploy.backends import load_backend, load_pretrained
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
    tta = parse_tta(args.tta)
    paths = collect_images(inputs)
    predictor = load_backend(run_dir, args.backend) if run_dir else load_pretrained(args.model, args.weights or "imagenet")
    # the exported file runs where its runtime runs: the CPU here
    device = pick_device(args.device) if args.backend == "torch" else "cpu"
    predictor.module.to(device)
    results = predict_images(predictor, paths, args.topk, device=device, progress=make_progress(args.quiet), tta=tta)
    print(format_predictions(results, args.format))
    return 1 if any("error" in r for r in results) else 0
