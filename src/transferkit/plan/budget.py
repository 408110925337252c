"""``train --budget 10m`` (and ``--auto``): rank on a sample, pilot a fine-tune, plan, train, all in the time given.

The clock starts when the command does. A stated share of the budget goes to measuring:

1. **rank** (at most ``RANK_SHARE`` of the budget): every candidate backbone x size scored on a
   stratified sample (rank.py), cheapest first, those that would not fit skipped; when the plan
   made then would leave time unused, half of that ranks the skipped ones and the plan is made again;
2. **pilot** (at most ``PILOT_SHARE``): the last two blocks (else the last one) of the best-ranked candidate whose fine-tune
   could still fit in the budget, fine-tuned on the same sample for a few epochs next to its linear
   head trained the same way: their difference is the gain the planner expects from fine-tuning
   (planner.py). It runs only if it is predicted to fit.

The planner then picks the recipe with the highest expected accuracy that fits in what is left,
and ``train`` runs it with a deadline (no epoch starts that would end past the budget, minus the
measured time the finish takes) and early stopping. Test-time augmentation is decided last, on the
validation split, with the time the run leaves (tta.py). run.json and report.html keep the plan:
every alternative with its expected accuracy and predicted time, why the winner won, what it measured.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from transferkit.core.config import TrainConfig
from transferkit.core.errors import UserError
from transferkit.core.progress import log
from transferkit.data.specs import DataSplits, load_data
from transferkit.plan import costs
from transferkit.plan.planner import MIN_EPOCHS, SAFETY, Sizes, choose, format_seconds
from transferkit.plan.rank import DEFAULT_SIZES, candidates_for, offline_models, rank, sample_splits
from transferkit.plan.shift import CORRUPTIONS, SEVERITY
from transferkit.plan.tta import decide_tta
from transferkit.runs.report import write_report
from transferkit.runs.rundir import read_run, write_run
from transferkit.runs.shift import corruption_eval
from transferkit.train.setup import limit_training_images
from transferkit.train.trainer import TimeLimit, train

RANK_SHARE = 0.15
PILOT_SHARE = 0.15
PILOT_EPOCHS = 4
# Of the time a plan would leave unused, the share that ranks the candidates the first round skipped.
SECOND_ROUND_SHARE = 0.5
PATIENCE = 3
DEFAULT_BUDGET = "10m"
# Built-ins whose classes change in a mirror (digits): never trained with flips.
NO_FLIP = ("digits", "mnist-5k")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1.5h`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--budget {text}: give a time such as 90s, 10m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def sample_size(budget: float) -> int:
    """Images to rank with: more when there is time to spend (2,000 at 10 minutes)."""
    return int(min(4000, max(500, budget * 10 / 3)))


def _pilot(cfg: TrainConfig, sampled: DataSplits, row, cut: int, flip: bool, scratch: Path,
           robust: bool) -> tuple[dict, float]:
    """``({"clean": gain, "robust": gain}, seconds)``: the gain of fine-tuning after ``cut`` over the
    linear head, both trained by ``train`` on the sample for ``PILOT_EPOCHS`` epochs and scored on its
    validation images (and, with ``robust``, on those under the corruptions of plan/shift.py)."""
    began = time.monotonic()
    clean, shifted = {}, {}
    for name, freeze in (("head", "backbone"), ("finetune", str(cut))):
        settings = replace(cfg, model=row.model, image_size=row.size, freeze=freeze, head="linear",
                           epochs=PILOT_EPOCHS, augment="flip" if flip and freeze != "backbone" else "none",
                           calibrate=False, out=str(scratch / name), quiet=True, train_limit=0, shots=0)
        result = train(settings, splits=sampled)
        clean[name] = result["metrics"]["top1"]  # the best epoch, on val (the sample has no test split)
        if robust:
            shifted[name] = corruption_eval(result["run_dir"], SEVERITY, ",".join(CORRUPTIONS), splits=sampled,
                                            split="val", cache_dir=cfg.cache_dir or None)["mean_top1"]
    gains = {"clean": clean["finetune"] - clean["head"]}
    if robust:
        gains["robust"] = shifted["finetune"] - shifted["head"]
    return gains, time.monotonic() - began


def pilot_candidate(rows, n: int, sizes: Sizes, fixed: costs.Fixed, flip: bool, spent: float, budget: float):
    """``(row, cut)`` to pilot: the best-ranked candidate whose pilot fits in the measuring share and
    whose fine-tune (``MIN_EPOCHS`` on all the data) would still fit after it, at its deepest cut that
    does (more trained stages first: on the built-ins they gained the most); or why there is none."""
    views = 2 if flip else 1
    why = None
    for row in rows:
        for cut in sorted(row.train_rates):
            pilot = 2 * fixed.start + 2 * n / row.engine_rate + PILOT_EPOCHS * n * views / row.train_rates[cut]
            full = costs.partial_seconds(sizes.all, sizes.train, sizes.val, MIN_EPOCHS, row.engine_rate,
                                         row.train_rates[cut], views, fixed)
            if spent + pilot > budget * (RANK_SHARE + PILOT_SHARE):
                why = why or (f"no pilot: {row.model}@{row.size}'s would take {pilot:.0f} s, more than the "
                              f"measuring share left")
                continue
            if spent + pilot + full * SAFETY > budget:
                why = why or (f"no pilot: a fine-tune of {row.model}@{row.size} ({MIN_EPOCHS} epochs) would need "
                              f"{full:.0f} s, more than the budget leaves")
                continue
            return row, cut
    return why


def second_round(cfg: TrainConfig, splits: DataSplits, candidates: list, ranked, unused: float, sample: int,
                 clock: Callable[[], float], robust: float):
    """Rank the candidates the first round skipped for time, with ``SECOND_ROUND_SHARE`` of the
    ``unused`` seconds the plan would leave (those predicted to fit in it, from the first round's
    timings); ``ranked`` merged with them, or ``ranked`` itself when none fits."""
    limit = unused * SECOND_ROUND_SHARE
    names = {name for name, _ in ranked.skipped}
    rest = [c for c in candidates if c.name in names]
    if not ranked.timed or not any(costs.predict_rank_seconds(ranked.timed, c) <= limit for c in rest):
        return ranked
    log(f"rank: the plan leaves {format_seconds(unused)} unused: ranking skipped candidates in {format_seconds(limit)}")
    return ranked.merged(rank(cfg, splits, rest, sample=sample, time_limit=limit, clock=clock, robust=robust,
                              measured=ranked.timed))


def _record_tta(run_dir: str, tta: dict) -> None:
    """run.json's plan (and the report) with what test-time augmentation did."""
    run = read_run(run_dir)
    if "plan" not in run:
        return
    run["plan"]["tta"] = tta
    run["plan"]["chosen"]["tta"] = tta["chosen"]
    if "test_top1" in tta:
        run["plan"].setdefault("measured", {})["top1_tta"] = tta["test_top1"]
    write_run(run_dir, run)
    write_report(run_dir)


def plan_and_train(cfg: TrainConfig, budget: float, models: list[str] | None = None, sizes: list[int] | None = None,
                   splits: DataSplits | None = None, clock: Callable[[], float] = time.monotonic,
                   robust: float = 0.0) -> dict:
    """Everything ``train --budget`` does; returns what ``train`` returns, plus the plan. ``robust``:
    the weight of accuracy under corruptions in the choice (plan/shift.py)."""
    t0 = clock()
    deadline = t0 + budget
    splits = limit_training_images(splits if splits is not None else load_data(cfg.data, cfg.seed), cfg)
    candidates = candidates_for(models or offline_models(), sizes or list(DEFAULT_SIZES))
    flip = cfg.data not in NO_FLIP
    ranked = rank(cfg, splits, candidates, sample=sample_size(budget), time_limit=budget * RANK_SHARE, clock=clock,
                  robust=robust)
    sizes_ = Sizes(len(splits.train), len(splits.val) if splits.val is not None else 0,
                   len(splits.test) if splits.test is not None else 0)
    fixed = costs.Fixed()
    pilots, pilot_note = {}, "no pilot: no candidate can be cut before its last block"
    sampled, _mode = sample_splits(splits, sample_size(budget), cfg.seed)
    choice = pilot_candidate(ranked.rows, len(sampled.train), sizes_, fixed, flip, clock() - t0, budget)
    if isinstance(choice, str):
        pilot_note = choice
    elif choice is not None:
        row, cut = choice
        scratch = Path(tempfile.mkdtemp(prefix="transferkit-pilot-"))
        try:
            gains, seconds = _pilot(cfg, sampled, row, cut, flip, scratch, robust > 0)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        pilots[(row.model, row.size, cut)] = gains
        shifted = f", {gains['robust']:+.2%} under corruptions" if "robust" in gains else ""
        pilot_note = (f"pilot: {row.model}@{row.size} --freeze {cut} on {len(sampled.train):,} images, "
                      f"{PILOT_EPOCHS} epochs: {gains['clean']:+.2%} over its linear head{shifted}, {seconds:.0f} s")
    log(pilot_note)
    spent = clock() - t0
    plan = choose(ranked.rows, sizes_, deadline - clock(), budget, spent, fixed, pilots, flip, robust)
    # a short budget ranks only the cheap candidates: what the plan would leave unused ranks the rest
    more = second_round(cfg, splits, candidates, ranked, deadline - clock() - plan.chosen.seconds * SAFETY,
                        sample_size(budget), clock, robust)
    if more is not ranked:
        ranked, spent = more, clock() - t0
        plan = choose(ranked.rows, sizes_, deadline - clock(), budget, spent, fixed, pilots, flip, robust)
    for line in plan.reasons:
        log(f"plan: {line}")
    chosen = plan.chosen
    record = plan.to_json()
    record.update(rank=ranked.to_json(), pilot=pilot_note, started_monotonic=time.monotonic() - (clock() - t0))
    settings = replace(cfg, **chosen.settings())
    limit = TimeLimit(deadline - fixed.finish, clock, PATIENCE)
    result = train(settings, splits=splits, limit=limit, plan=record)
    rate = next(r.engine_rate for r in ranked.rows if (r.model, r.size) == (chosen.model, chosen.size))
    record["tta"] = decide_tta(result["run_dir"], splits, flip, deadline, rate, fixed.start, clock)
    log(f"plan: test-time augmentation {record['tta']['chosen']}: {record['tta']['why']}")
    if "test_top1" in record["tta"]:
        result["metrics"] = dict(result["metrics"], top1=record["tta"]["test_top1"], top5=record["tta"]["test_top5"],
                                 tta=["flip"])
    _record_tta(result["run_dir"], record["tta"])
    result["plan"] = record
    result["seconds"] = clock() - t0
    log(f"budget: {format_seconds(result['seconds'])} of {format_seconds(budget)} used")
    return result
