"""The end of ``transferkit train``: the best epoch's weights become the run's model, one temperature
is fitted on the validation split (unless ``--no-calibrate``, or the split has too few images to fit
it on), the model is scored on the test split (val when there is none: the calibration figures are
then cross-fitted, never scored on the images T was fitted on), and the run directory gets
``model.safetensors`` (with metadata), ``run.json`` (with ``calibration``), the confusion matrix, the
per-image outputs, ``report.html``, and what makes it a Hugging Face model folder: ``config.json``
where timm loads it, ``README.md``.

Under torchrun every process scores its share of the split; rank 0 alone reads the best
checkpoint (the others may be on machines that cannot see the run directory, so they receive
the weights from it) and writes the files.
"""
from __future__ import annotations

import time

from safetensors.torch import load_file

from transferkit.core import distributed as dist
from transferkit.core.progress import log
from transferkit.core.safeio import save_safetensors_atomic, write_json_atomic
from transferkit.engine.batches import Batches
from transferkit.engine.checkpoint import best_path
from transferkit.engine.loop import predict_logits
from transferkit.runs.calibration import (
    FOLDS,
    MIN_IMAGES,
    cross_fitted_log_probabilities,
    fit_status,
    fit_temperature,
    probabilities,
)
from transferkit.runs.evaluate import save_outputs
from transferkit.runs.hubfolder import weights_metadata, write_model_folder
from transferkit.runs.metrics import score
from transferkit.runs.report import write_report
from transferkit.runs.rundir import versions, write_run
from transferkit.train.setup import classes_without_images

# The final scores run.json keeps (eval --format json has all of them, per class too).
SUMMARY = ("top1", "top5", "balanced_accuracy", "macro_f1", "loss", "nll", "n", "ece", "ece_uncalibrated", "temperature")


def finish_run(run) -> dict:
    """``run``: the finished ``trainer.Training``."""
    s, path, cfg = run.start, run.prepared.path, run.cfg
    if dist.is_main():
        best_state = load_file(str(best_path(run.run_dir)))
        s.tm.net.load_state_dict(best_state)
    dist.broadcast_module(s.tm.net)
    shard = {"rank": dist.rank(), "world": dist.world()}
    n_val = len(path.sources["val"])
    status, temperature, fitted_on = fit_status(cfg.calibrate, n_val), 1.0, None
    if status == "fitted":  # every process fits the same T on the same gathered logits
        fitted_on = predict_logits(path.module, Batches(path.sources["val"], run.eval_batch, **shard), path.to_input,
                                   s.autocast)
        temperature = fit_temperature(*fitted_on)
    test_name = "test" if "test" in path.sources else "val"
    if test_name == "val" and fitted_on is not None:
        logits, labels = fitted_on  # the same images, already through the network
    else:
        batches = Batches(path.sources[test_name], run.eval_batch, **shard)
        logits, labels = predict_logits(path.module, batches, path.to_input, s.autocast, progress=s.progress,
                                        desc=f"scoring {test_name}")
    # Scored on the images T was fitted on (no test split), its figures would flatter it: cross-fit them.
    held_out = cross_fitted_log_probabilities([logits], labels) if fitted_on is not None and test_name == "val" else None
    final = score(logits, labels, s.splits.classes, temperature, log_probs=held_out)
    scored = None if fitted_on is None else ("cross-fitted" if held_out is not None else "held out")
    if status == "fitted":
        how = (f"cross-fitted: each image scored with a temperature fitted on the other {FOLDS - 1}/{FOLDS} of val, "
               "as there is no test split" if held_out is not None else "held out")
        log(f"calibration: temperature {temperature:.3f} fitted on val ({n_val:,} images); ECE on "
            f"{test_name} {final['ece_uncalibrated']:.4f} -> {final['ece']:.4f} ({how}; top-1 unchanged)")
    elif status == "skipped":
        log(f"calibration: skipped, the validation split has {n_val} images (a temperature needs {MIN_IMAGES}); "
            "probabilities are the plain softmax")
    result = {"run_dir": str(run.run_dir), "metrics": final, "split": test_name, "best_epoch": run.best["epoch"],
              "cached": path.cached}
    if not dist.is_main():
        return result
    sets = run.prepared.sets
    save_outputs(run.run_dir, test_name, probabilities(logits, temperature), labels, s.splits.split(test_name),
                 sets[test_name], cfg.data, uncalibrated=probabilities(logits),
                 held_out=held_out.exp() if held_out is not None else None)
    model_spec = s.specs["model"]
    record = {
        "format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": cfg.to_json(), "classes": s.splits.classes,
        "model": {"name": model_spec, "head": s.specs["head"], "num_classes": len(s.splits.classes),
                  "plugin": s.specs["plugin"]},
        "backbone": dict(s.tm.info.to_json(), name=model_spec), "preprocess": run.prepared.pre.to_json(),
        "freeze": {"spec": cfg.freeze, "cut": run.prepared.plan.cut}, "feature_cache": path.message,
        "data": {"spec": cfg.data, **{n: len(x) for n, x in sets.items()}},
        "classes_without_training_images": classes_without_images(s.splits),
        "lr": run.lr, "best_epoch": run.best["epoch"],
        "metrics": {"split": test_name, **{k: final[k] for k in SUMMARY}},
        "calibration": {"status": status, "temperature": temperature, "split": "val" if fitted_on is not None else None,
                        "n": n_val, "method": {"fitted": "temperature scaling (L-BFGS on the validation NLL)",
                                               "off": "off (--no-calibrate)",
                                               "skipped": f"none: {n_val} validation images"}[status],
                        "ece": final["ece"], "ece_uncalibrated": final["ece_uncalibrated"], "scored_split": test_name,
                        "scored": scored},
        "versions": versions(),
    }
    if run.recipe:
        record["recipe"] = {"name": cfg.recipe, **run.recipe}
    if run.plan:  # train --budget: what was chosen and why, and what the chosen recipe then measured
        started = run.plan.pop("started_monotonic", None)
        run.plan["measured"] = {"split": test_name, "top1": final["top1"], "best_epoch": run.best["epoch"],
                                "epochs_run": len(run.history),
                                "seconds_to_scoring": round(time.monotonic() - started, 1) if started else None}
        record["plan"] = run.plan
    if dist.world() > 1:
        record["distributed"] = {"processes": dist.world(), "backend": dist.backend()}
    # Written once the record is complete: its metadata carries what run.json says.
    save_safetensors_atomic(best_state, run.run_dir / "model.safetensors", metadata=weights_metadata(record))
    shared = write_run(run.run_dir, record)  # run.json without this machine's paths; local.json with them
    write_json_atomic(run.run_dir / "confusion_matrix.json", {"split": test_name, "classes": s.splits.classes,
                                                               "matrix": final["confusion_matrix"]})
    write_report(run.run_dir)
    write_model_folder(run.run_dir, shared)
    return result
