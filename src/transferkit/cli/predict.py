"""``transferkit predict``."""
from dataclasses import replace

from transferkit.core.devices import pick_device
from transferkit.core.errors import UserError
from transferkit.core.progress import log, make_progress
from transferkit.data.tta import parse_tta
from transferkit.deploy.backends import EXPORTED, load_backend, load_pretrained
from transferkit.deploy.predict import collect_images, format_predictions, is_run_dir, predict_images, sample_images
from transferkit.engine.optim import device_precision
from transferkit.runs.inference import engine_settings
from transferkit.runtimes.choose import Frozen, choose, engine_device, in_torch, stays_in_torch


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
    if args.backend in EXPORTED and args.model:
        raise UserError(f"--backend {args.backend} predicts with an exported run; give RUN_DIR instead of --model")
    if args.topk < 1:
        raise UserError("--topk must be at least 1")
    tta = parse_tta(args.tta)
    paths = collect_images(inputs)
    device = pick_device(engine_device(args.device, args.backend, args.precision))  # CPU engines run on the CPU
    precision = device_precision(device, args.precision)
    # predict runs in one process even under torchrun: only a GPU keeps it in torch
    if device.type != "cpu" and stays_in_torch(device, args.backend, precision):
        predictor = load_backend(run_dir) if run_dir else load_pretrained(args.model, args.weights or "imagenet")
        predictor = replace(predictor, module=in_torch(predictor.module, precision))
    elif run_dir:
        predictor = load_backend(run_dir, args.backend, precision, args.threads, "batch",
                                 lambda pre: sample_images(paths, pre), len(paths))
        log(predictor.message)
    else:
        predictor = load_pretrained(args.model, args.weights or "imagenet")
        settings = engine_settings(args.backend, precision, args.threads, images=len(paths))
        # No run, no labelled validation images: the guard refuses reduced precision (one line saying so).
        choice = choose(Frozen(predictor.module, predictor.pre.size, "classifier"),
                        sample_images(paths, predictor.pre), settings, None, "the images to predict")
        predictor = replace(predictor, module=choice.engine)
        log(choice.message)
    predictor.module.to(device)
    results = predict_images(predictor, paths, args.topk, device=device, progress=make_progress(args.quiet), tta=tta)
    print(format_predictions(results, args.format))
    return 1 if any("error" in r for r in results) else 0
