"""The end of ``transferkit train``: the best epoch's weights become the run's model, one temperature
is fitted on the validation split (unless ``--no-calibrate``, or the split has too few images to fit
it on), the model is scored on the test split (val when there is none), and the run directory gets
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
from transferkit.runs.calibration import MIN_IMAGES, fit_temperature, probabilities
from transferkit.runs.evaluate import save_outputs
from transferkit.runs.hubfolder import weights_metadata, write_model_folder
from transferkit.runs.metrics import score
from transferkit.runs.report import write_report
from transferkit.runs.rundir import versions

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
    temperature, n_val = 1.0, len(path.sources["val"])
    fitted = cfg.calibrate and n_val >= MIN_IMAGES
    if fitted:  # every process fits the same T on the same gathered logits
        val_logits, val_labels = predict_logits(path.module, Batches(path.sources["val"], run.eval_batch, **shard),
                                                path.to_input, s.autocast)
        temperature = fit_temperature(val_logits, val_labels)
    test_name = "test" if "test" in path.sources else "val"
    batches = Batches(path.sources[test_name], run.eval_batch, **shard)
    logits, labels = predict_logits(path.module, batches, path.to_input, s.autocast, progress=s.progress,
                                    desc=f"scoring {test_name}")
    final = score(logits, labels, s.splits.classes, temperature)
    if fitted:
        log(f"calibration: temperature {temperature:.3f} fitted on val ({n_val:,} images); ECE on "
            f"{test_name} {final['ece_uncalibrated']:.4f} -> {final['ece']:.4f} (top-1 unchanged)")
    elif cfg.calibrate:
        log(f"calibration: skipped, the validation split has {n_val} images (a temperature needs {MIN_IMAGES}); "
            "probabilities are the plain softmax")
    result = {"run_dir": str(run.run_dir), "metrics": final, "split": test_name, "best_epoch": run.best["epoch"],
              "cached": path.cached}
    if not dist.is_main():
        return result
    sets = run.prepared.sets
    save_outputs(run.run_dir, test_name, probabilities(logits, temperature), labels, s.splits.split(test_name),
                 sets[test_name], cfg.data, uncalibrated=probabilities(logits))
    model_spec = s.specs["model"]
    record = {
        "format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": cfg.to_json(), "classes": s.splits.classes,
        "model": {"name": model_spec, "head": s.specs["head"], "num_classes": len(s.splits.classes),
                  "plugin": s.specs["plugin"]},
        "backbone": dict(s.tm.info.to_json(), name=model_spec), "preprocess": run.prepared.pre.to_json(),
        "freeze": {"spec": cfg.freeze, "cut": run.prepared.plan.cut}, "feature_cache": path.message,
        "data": {"spec": cfg.data, **{n: len(x) for n, x in sets.items()}},
        "lr": run.lr, "best_epoch": run.best["epoch"],
        "metrics": {"split": test_name, **{k: final[k] for k in SUMMARY}},
        "calibration": {"temperature": temperature, "split": "val" if fitted else None,
                        "method": "temperature scaling (L-BFGS on the validation NLL)" if fitted else
                        ("off (--no-calibrate)" if not cfg.calibrate else f"none: {n_val} validation images"),
                        "ece": final["ece"], "ece_uncalibrated": final["ece_uncalibrated"], "scored_split": test_name},
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
    write_json_atomic(run.run_dir / "run.json", record)
    write_json_atomic(run.run_dir / "confusion_matrix.json", {"split": test_name, "classes": s.splits.classes,
                                                               "matrix": final["confusion_matrix"]})
    write_report(run.run_dir)
    write_model_folder(run.run_dir, record)
    return result
