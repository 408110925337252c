"""Test-time augmentation in ``train --budget``: decided after training, on the validation split,
with the time the run leaves.

TTA does not change training; it averages the probabilities of an image and its mirror image at
scoring time, for twice the scoring cost. Whether that helps depends on the data (RESULTS: +0.05
points for a model trained without flips, +0.26 with flips; crops lost 2.2 points on garments that
fill their frame), so it is measured, not assumed: the finished run scores its validation split
with both views (the plain view's accuracy comes from the same pass), and when the mirror view
gains there and the test split's two-view pass still fits in the budget, the test split is scored
with it. Data whose classes change in a mirror (digits) is never flipped. Each pass is started only
when its predicted time, from the images/s measured on this machine, fits in what is left.
"""
from __future__ import annotations

import time
from typing import Callable

from transferkit.core.progress import log
from transferkit.plan.planner import SAFETY, format_seconds
from transferkit.runs.evaluate import evaluate_run

VIEWS = "flip"


def decide_tta(run_dir: str, splits, flip: bool, deadline: float, rate: float, start: float,
               clock: Callable[[], float] = time.monotonic) -> dict:
    """``{"chosen": "flip" | "none", "why": ..., measured figures}``; scores the test split with the
    chosen views (eval/test.json) when it is "flip". ``rate``: the backbone's images/s here; ``start``:
    the fixed seconds a scoring pass takes before its first image."""
    if not flip:
        return {"chosen": "none", "why": "not tried: the data is never flipped (its classes change in a mirror)"}
    if splits.val is None or splits.test is None:
        return {"chosen": "none", "why": "not tried: measuring it needs a validation and a test split"}
    n_val, n_test = len(splits.val), len(splits.test)
    # Twice the prediction from the backbone's speed: the first scoring pass also picks (and may
    # convert) an engine for the trained classifier; the second pass is predicted from the first.
    need = 2 * SAFETY * (2 * start + 2 * (n_val + n_test) / rate)
    if clock() + need > deadline:
        return {"chosen": "none", "why": f"not tried: flip TTA on val and test would take about {format_seconds(need)}, "
                                         f"{format_seconds(max(0.0, deadline - clock()))} are left"}
    began = clock()
    val = evaluate_run(run_dir, splits=splits, split="val", tta=VIEWS)
    seconds = clock() - began
    plain, both = val["top1_per_view"][0], val["top1"]
    measured = {"val_top1": plain, "val_top1_tta": both, "val_seconds": round(seconds, 1)}
    if both <= plain:
        return {"chosen": "none", "why": f"measured on val: {plain:.2%} plain, {both:.2%} with flip TTA: no gain",
                **measured}
    per_image = seconds / (2 * n_val)  # the pass's start-up spread over its images: errs long
    need = SAFETY * (start + 2 * n_test * per_image)
    if clock() + need > deadline:
        return {"chosen": "none", "why": f"measured on val: {both - plain:+.2%} with flip TTA, but scoring the test "
                                         f"split with it would take about {format_seconds(need)}, more than is left",
                **measured}
    test = evaluate_run(run_dir, splits=splits, split="test", tta=VIEWS)
    log(f"plan: flip TTA: {both - plain:+.2%} on val, so the test split is scored with it: top1 {test['top1']:.4f}")
    return {"chosen": VIEWS, "why": f"measured on val: {plain:.2%} plain, {both:.2%} with flip TTA ({both - plain:+.2%})",
            "test_top1": test["top1"], "test_top5": test["top5"], **measured}
