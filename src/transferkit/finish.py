"""The end of ``transferkit train``: the best epoch's weights become the run's model, are scored
on the test split (val when there is none), and the run directory gets ``model.safetensors``,
``run.json``, the confusion matrix, the per-image outputs and ``report.html``.

Under torchrun every process scores its share of the split; rank 0 alone reads the best
checkpoint (the others may be on machines that cannot see the run directory, so they receive
the weights from it) and writes the files.
"""
from __future__ import annotations

import time

from transferkit import distributed as dist
from transferkit.engine import Batches, predict_logits
from transferkit.metrics import score
from transferkit.rundir import versions
from transferkit.safeio import save_safetensors_atomic, write_json_atomic


def finish_run(run_dir, *, cfg, tm, path, splits, sets, pre, plan, specs: dict, backbone_json: dict, lr: float,
               best: dict, eval_batch: int, autocast, progress) -> dict:
    """``specs``: the run's model, head and plugin specs as stored in run.json."""
    if dist.is_main():
        from safetensors.torch import load_file

        best_state = load_file(str(run_dir / "checkpoints" / "best.safetensors"))
        tm.net.load_state_dict(best_state)
        save_safetensors_atomic(best_state, run_dir / "model.safetensors")
    dist.broadcast_module(tm.net)
    test_name = "test" if "test" in path.sources else "val"
    batches = Batches(path.sources[test_name], eval_batch, rank=dist.rank(), world=dist.world())
    logits, labels = predict_logits(path.module, batches, path.to_input, autocast, progress=progress,
                                    desc=f"scoring {test_name}")
    final = score(logits, labels, splits.classes)
    result = {"run_dir": str(run_dir), "metrics": final, "split": test_name, "best_epoch": best["epoch"],
              "cached": path.cached}
    if not dist.is_main():
        return result
    from transferkit.evaluate import save_outputs  # evaluate imports the trainer, which imports this module
    from transferkit.report import write_report

    save_outputs(run_dir, test_name, logits, labels, splits.split(test_name), sets[test_name], cfg.data)
    model_spec = specs["model"]
    run = {
        "format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": cfg.to_json(), "classes": splits.classes,
        "model": {"name": model_spec, "head": specs["head"], "num_classes": len(splits.classes), "plugin": specs["plugin"]},
        "backbone": dict(backbone_json, name=model_spec), "preprocess": pre.to_json(),
        "freeze": {"spec": cfg.freeze, "cut": plan.cut}, "feature_cache": path.message,
        "data": {"spec": cfg.data, **{n: len(s) for n, s in sets.items()}},
        "lr": lr, "best_epoch": best["epoch"], "metrics": {"split": test_name, **{k: final[k] for k in ("top1", "top5", "loss", "n", "ece")}},
        "versions": versions(),
    }
    if dist.world() > 1:
        run["distributed"] = {"processes": dist.world(), "backend": dist.backend()}
    write_json_atomic(run_dir / "run.json", run)
    write_json_atomic(run_dir / "confusion_matrix.json", {"split": test_name, "classes": splits.classes,
                                                           "matrix": final["confusion_matrix"]})
    write_report(run_dir)
    return result
