"""train --budget: the planner's choice, the time limit (on a fake clock), and the whole command."""
from __future__ import annotations

import json

import pytest

from transferkit.cli import main
from transferkit.core.errors import UserError
from transferkit.plan import costs
from transferkit.plan.budget import parse_duration
from transferkit.plan.planner import SAFETY, Sizes, choose
from transferkit.plan.rank import Ranked
from transferkit.train import trainer as trainer_module
from transferkit.train.trainer import TimeLimit


def test_durations():
    assert [parse_duration(t) for t in ("90", "90s", "10m", "1.5h")] == [90, 90, 600, 5400]
    for bad in ("", "ten minutes", "0m", "-5m", "5d"):
        with pytest.raises(UserError, match="--budget"):
            parse_duration(bad)


def ranked(model: str, size: int, linear: float, knn: float, engine: float, back: float | None = None) -> Ranked:
    heads = {"linear": linear, "knn:10": knn, "prototype": min(linear, knn) - 0.05}
    head = max(heads, key=heads.get)
    return Ranked(model, size, head, heads[head], heads, 0.0, engine, 1.0, 500, expected=heads[head],
                  stages=7, train_rates={6: back} if back else {})


SIZES = Sizes(train=10_000, val=1_000, test=2_000)
FIXED = costs.Fixed(start=5, finish=5)


def test_the_best_recipe_that_fits_wins_and_the_reasons_say_why():
    fast = ranked("small", 96, 0.80, 0.78, engine=1000)        # ~13 s + 5 epochs of head
    slow = ranked("large", 224, 0.90, 0.85, engine=50)         # ~270 s: does not fit in 120 s
    plan = choose([slow, fast], SIZES, left=120, budget=150, spent=30, fixed=FIXED)
    assert (plan.chosen.model, plan.chosen.freeze, plan.chosen.head) == ("small", "backbone", "linear")
    assert plan.chosen.seconds * SAFETY <= 120
    assert any(r.startswith("not large@224") and "more than the 120s left" in r for r in plan.reasons)
    assert {(r.model, r.size) for r in plan.alternatives} == {("small", 96), ("large", 224)}
    roomy = choose([slow, fast], SIZES, left=600, budget=650, spent=30, fixed=FIXED)
    assert roomy.chosen.model == "large"


def test_a_fine_tune_needs_a_pilot_and_gets_the_epochs_that_fit():
    row = ranked("m", 96, 0.80, 0.70, engine=2000, back=500)
    without = choose([row], SIZES, left=300, budget=400, spent=60, fixed=FIXED)
    assert without.chosen.freeze == "backbone"  # no pilot measured a gain: nothing assumed
    plan = choose([row], SIZES, left=300, budget=400, spent=60, fixed=FIXED, pilots={("m", 96, 6): {"clean": 0.05}})
    chosen = plan.chosen
    assert chosen.freeze == "6" and chosen.expected == pytest.approx(0.85) and chosen.augment == "flip"
    assert chosen.seconds * SAFETY <= 300 and 2 <= chosen.epochs <= 10
    one_more = costs.partial_seconds(SIZES.all, SIZES.train, SIZES.val, chosen.epochs + 1, 2000, 500, 2, FIXED)
    assert chosen.epochs == 10 or one_more * SAFETY > 300  # as many epochs as fit
    worse = choose([row], SIZES, left=300, budget=400, spent=60, fixed=FIXED, pilots={("m", 96, 6): {"clean": -0.02}})
    assert worse.chosen.freeze == "backbone"
    noflip = choose([row], SIZES, left=300, budget=400, spent=60, fixed=FIXED, pilots={("m", 96, 6): {"clean": 0.05}}, flip=False)
    assert noflip.chosen.augment == "none"
    sure = ranked("s", 96, 0.97, 0.90, engine=2000, back=500)  # 97% + a 5-point gain is not 102%
    capped = choose([sure], SIZES, left=300, budget=400, spent=60, fixed=FIXED, pilots={("s", 96, 6): {"clean": 0.05}})
    assert capped.chosen.freeze == "6" and capped.chosen.expected == 1.0


def test_a_budget_too_small_names_the_smallest_that_fits():
    row = ranked("m", 96, 0.8, 0.7, engine=100)  # 13,000 images at 100/s: 130 s at least
    with pytest.raises(UserError, match=r"too small for any recipe.*give --budget \d+[sm] or more"):
        choose([row], SIZES, left=40, budget=60, spent=20, fixed=FIXED)


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Run:
    def __init__(self, accuracies):
        self.history = [{"val_acc": a} for a in accuracies]

        class State:
            epoch = len(accuracies)
        self.state = State()


def test_time_limit_and_patience_decide_on_the_clock_and_the_history():
    clock = Clock()
    limit = TimeLimit(deadline=100, clock=clock)
    clock.now = 70
    assert limit.allows_another(Run([0.5]), longest=25)           # 95 <= 100
    assert not limit.allows_another(Run([0.5]), longest=31) and "time limit" in limit.stopped
    patient = TimeLimit(deadline=1e9, clock=clock, patience=2)
    assert patient.allows_another(Run([0.5, 0.6, 0.55]), 1)
    assert not patient.allows_another(Run([0.5, 0.6, 0.55, 0.6]), 1) and "early stop" in patient.stopped


def test_training_stops_before_an_epoch_that_would_pass_the_deadline(tmp_path, image_folder, monkeypatch):
    """Each epoch costs 10 fake seconds; with a deadline at 25 the third epoch would end at 30."""
    from transferkit.core.config import TrainConfig

    clock = Clock()
    original = trainer_module.Training.run_epoch

    def epoch_of_ten_seconds(self):
        original(self)
        clock.now += 10
    monkeypatch.setattr(trainer_module.Training, "run_epoch", epoch_of_ten_seconds)
    cfg = TrainConfig(data=str(image_folder), model="resnet18", weights="none", image_size=32, epochs=6,
                      batch_size="4", quiet=True, out=str(tmp_path / "run")).validate()
    plan = {"chosen": "test"}
    trainer_module.train(cfg, limit=TimeLimit(deadline=25, clock=clock), plan=plan)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert clock.now == 20 and record["plan"]["measured"]["epochs_run"] == 2
    assert record["plan"]["stopped"].startswith("after epoch 2 of 6: time limit")


def test_budget_command_plans_trains_and_records_the_plan(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--budget", "20m", "--models", "efficientnet_lite0", "--sizes", "32",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "plan: chosen:" in err and "budget:" in err
    record = json.loads((out / "run.json").read_text())
    plan = record["plan"]
    chosen = plan["chosen"]
    assert record["config"]["model"] == chosen["model"] and record["config"]["image_size"] == chosen["size"]
    assert record["config"]["freeze"] == chosen["freeze"] and record["config"]["head"] == chosen["head"]
    assert plan["alternatives"] and plan["reasons"] and plan["rank"]["rows"]
    assert plan["measured"]["top1"] == record["metrics"]["top1"]
    assert chosen["seconds"] * SAFETY <= plan["budget_s"] - plan["spent_before_training_s"]
    assert "digits" not in plan["pilot"] or "flip" not in json.dumps(chosen)  # digits: never flipped
    assert plan["tta"]["chosen"] == "none" and "never flipped" in plan["tta"]["why"]  # digits
    assert "Plan" in (out / "report.html").read_text() and "Test-time augmentation: none" in (out / "report.html").read_text()


def test_a_budget_too_small_is_one_line_and_exit_2(tmp_path, capsys):
    args = ["train", "--data", "digits", "--budget", "3s", "--models", "efficientnet_lite0", "--sizes", "32",
            "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "too small for any recipe" in err and "give --budget" in err
    assert not (tmp_path / "run").exists()


def test_the_pilot_goes_to_the_best_candidate_whose_fine_tune_can_still_fit():
    from transferkit.plan.budget import pilot_candidate

    slow = ranked("large", 224, 0.90, 0.85, engine=50, back=40)      # its fine-tune cannot fit in 10 minutes
    fast = ranked("small", 96, 0.86, 0.80, engine=1500, back=800)
    # 300 pilot images: slow's pilot (~82 s) fits the measuring share, its fine-tune does not fit the rest
    assert pilot_candidate([slow, fast], 300, SIZES, FIXED, True, spent=60, budget=600) == (fast, 6)
    assert "more than the budget leaves" in pilot_candidate([slow], 300, SIZES, FIXED, True, spent=60, budget=600)
    # 1,800 pilot images: slow's pilot itself (~442 s) is more than the measuring share
    assert "more than the measuring share" in pilot_candidate([slow], 1800, SIZES, FIXED, True, spent=60, budget=600)
    assert pilot_candidate([slow, fast], 1800, SIZES, FIXED, True, spent=60, budget=10_000)[0] is slow
    # two cuts: the deeper fine-tune (more stages trained) is piloted where it fits, else the last block alone
    two = ranked("two", 96, 0.86, 0.80, engine=1500, back=800)
    two.train_rates = {5: 100, 6: 800}
    assert pilot_candidate([two], 300, SIZES, FIXED, True, spent=60, budget=10_000) == (two, 5)
    assert pilot_candidate([two], 300, SIZES, FIXED, True, spent=60, budget=300) == (two, 6)


def test_time_the_plan_leaves_ranks_the_candidates_the_first_round_skipped(monkeypatch):
    from transferkit.plan import budget as budget_module
    from transferkit.plan.rank import Candidate, RankResult

    clock = Clock()
    small, large = Candidate("small", 96), Candidate("large", 224)
    first = RankResult([ranked("small", 96, 0.80, 0.70, engine=1000)], [("large@224", "predicted 54 s would pass")],
                       "cv", 500, 10.0, [(small, 10.0)])
    calls = []

    def fake_rank(cfg, splits, candidates, sample, time_limit, clock, robust, measured):
        calls.append((candidates, time_limit, list(measured)))
        clock.now += 30
        return RankResult([ranked("large", 224, 0.90, 0.85, engine=200)], [], "cv", 500, 30.0, measured + [(large, 30.0)])
    monkeypatch.setattr(budget_module, "rank", fake_rank)
    # large@224 is predicted from small@96's 10 s at 10 x (224 / 96)^2 = 54 s: not in half of 60 s, in half of 200 s
    assert budget_module.second_round(None, None, [small, large], first, 60, 500, clock, 0.0) is first and not calls
    merged = budget_module.second_round(None, None, [small, large], first, 200, 500, clock, 0.0)
    assert calls == [([large], 100, [(small, 10.0)])]
    assert [r.model for r in merged.rows] == ["large", "small"] and merged.skipped == [] and merged.seconds == 40
    assert choose(merged.rows, SIZES, left=170, budget=300, spent=130, fixed=FIXED).chosen.model == "large"


class _Splits:
    def __init__(self, val: int, test: int):
        self.val, self.test = [0] * val, [0] * test


def _fake_eval(monkeypatch, clock: list, val: tuple, seconds_per_image: float):
    """evaluate_run stand-in: each call advances the fake clock as scoring at that speed would."""
    from transferkit.plan import tta

    calls = []

    def evaluate_run(run_dir, splits, split, tta):
        n = len(getattr(splits, split))
        clock[0] += 2 * n * seconds_per_image
        calls.append(split)
        if split == "val":
            return {"top1": val[1], "top1_per_view": [val[0], val[0] - 0.01]}
        return {"top1": 0.9, "top5": 1.0}

    monkeypatch.setattr(tta, "evaluate_run", evaluate_run)
    return calls


@pytest.mark.parametrize("case, flip, left, val, calls, chosen", [
    ("never flipped", False, 1e6, (0.8, 0.9), [], "none"),
    ("no time", True, 10, (0.8, 0.9), [], "none"),
    ("gains on val", True, 1e6, (0.80, 0.81), ["val", "test"], "flip"),
    ("no gain on val", True, 1e6, (0.81, 0.81), ["val"], "none"),
])
def test_tta_is_measured_on_val_and_used_only_when_it_gains_and_fits(monkeypatch, case, flip, left, val, calls, chosen):
    from transferkit.plan.tta import decide_tta

    clock = [0.0]
    made = _fake_eval(monkeypatch, clock, val, seconds_per_image=0.001)
    got = decide_tta("run", _Splits(1000, 2000), flip, deadline=left, rate=1000, start=1, clock=lambda: clock[0])
    assert made == calls and got["chosen"] == chosen, (case, got)
    assert clock[0] <= left  # never past the deadline
    if chosen == "flip":
        assert got["test_top1"] == 0.9 and got["val_top1_tta"] > got["val_top1"]


def test_tta_on_test_is_skipped_when_val_shows_it_would_not_fit(monkeypatch):
    from transferkit.plan.tta import decide_tta

    clock = [0.0]
    # Scoring runs 10x slower than the backbone's speed predicted: val fits (the first check allows
    # twice the prediction), and the measured speed says test would not.
    made = _fake_eval(monkeypatch, clock, (0.80, 0.82), seconds_per_image=0.01)
    got = decide_tta("run", _Splits(100, 2000), True, deadline=30, rate=1000, start=1, clock=lambda: clock[0])
    assert made == ["val"] and got["chosen"] == "none" and "more than is left" in got["why"]
    assert clock[0] <= 30
