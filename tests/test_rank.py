"""rank: LogME against its definition, the one-pass heads' held-out accuracy, and the command on real data."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize

from transferkit.cli import main
from transferkit.plan.rank import Candidate, candidates_for, parse_list, sample_splits, val_is_held_out
from transferkit.plan.scores import head_scores, logme


def evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | F, alpha, beta) / n of the Bayesian linear model, straight from its matrices."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    return float(d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
                 - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - np.linalg.slogdet(a)[1] / 2) / n


@pytest.mark.parametrize("n,d", [(120, 10), (30, 50)])
def test_logme_is_the_maximised_evidence(n, d):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, n)
    f = rng.normal(size=(n, d)) + labels[:, None] * rng.normal(size=d)
    best = []
    for c in range(3):
        y = (labels == c).astype(float)
        found = minimize(lambda p: -evidence(f, y, math.exp(p[0]), math.exp(p[1])), [0.0, 0.0], method="Nelder-Mead",
                         options={"xatol": 1e-6, "fatol": 1e-10, "maxiter": 4000})
        best.append(-found.fun)
    assert logme(f, labels) == pytest.approx(np.mean(best), abs=2e-3)


def test_logme_prefers_features_that_separate_the_classes():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 400)
    noise = rng.normal(size=(400, 32))
    useful = noise + 3 * np.eye(32)[labels]
    assert logme(useful, labels) > logme(noise, labels) + 0.05


def test_heads_scored_on_held_out_images():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 40)
    centers = rng.normal(size=(3, 16)) * 4
    easy = centers[labels] + rng.normal(size=(120, 16))
    scores = head_scores(easy, labels, 3)
    assert min(scores.linear, scores.knn, scores.prototype) > 0.95 and scores.n == 120
    shuffled = head_scores(easy, rng.permutation(labels), 3)   # labels that mean nothing: chance level
    assert max(shuffled.linear, shuffled.knn, shuffled.prototype) < 0.6
    train, test = np.arange(0, 120, 2), np.arange(1, 120, 2)
    assert head_scores(easy, labels, 3, holdout=(train, test)).n == 60


def test_candidates_and_lists():
    assert [c.name for c in candidates_for(["b", "a"], [160, 96])] == ["b@96", "a@96", "b@160", "a@160"]
    assert parse_list("96, 160", int) == [96, 160] and Candidate("m", 8).name == "m@8"
    with pytest.raises(Exception, match="comma-separated"):
        parse_list("96,x", int)


def test_a_validation_split_the_data_brings_is_the_holdout(tmp_path):
    from conftest import make_image_folder

    from transferkit.data.specs import load_data

    plain = load_data(str(make_image_folder(tmp_path / "plain", per_class=10)))
    assert val_is_held_out(plain) and sample_splits(plain, 0, 0)[1] == "cv"
    for split in ("train", "val"):
        make_image_folder(tmp_path / "given" / split, per_class=6, seed=len(split))
    given = load_data(str(tmp_path / "given"))
    assert not val_is_held_out(given) and sample_splits(given, 0, 0)[1] == "val"
    assert val_is_held_out(load_data("digits"))
    sampled, _ = sample_splits(load_data("digits"), 300, 0)
    assert len(sampled.train) + len(sampled.val) == pytest.approx(300, abs=12)


def test_rank_command_on_real_digits(tmp_path, capsys):
    """Two input sizes of the packaged backbone on scikit-learn's digits: a table and its JSON."""
    args = ["rank", "--data", "digits", "--models", "efficientnet_lite0", "--sizes", "32,64", "--sample", "300",
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(args + ["--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["size"]) for r in result["rows"]] and len(result["rows"]) == 2
    assert result["mode"] == "cv" and all(0.5 < r["expected"] <= 1 for r in result["rows"])
    assert all(r["engine_rate"] > 0 and r["train_rates"] for r in result["rows"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "best: transferkit train --data digits --model efficientnet_lite0" in out


def test_robust_ranking_scores_heads_on_corrupted_validation_images(tmp_path):
    """--robust W: each head is also scored on corrupted validation images, and the sort key blends them."""
    from transferkit.core.config import TrainConfig
    from transferkit.data.specs import load_data
    from transferkit.plan.rank import rank

    cfg = TrainConfig(data="digits", cache_dir=str(tmp_path / "cache"), quiet=True).validate()
    result = rank(cfg, load_data("digits"), candidates_for(["efficientnet_lite0"], [32]), sample=300, robust=0.5)
    row = result.rows[0]
    assert set(row.robust) == set(row.heads)
    assert all(0 <= v <= 1 for v in row.robust.values())
    assert row.expected == pytest.approx(0.5 * row.heads[row.head] + 0.5 * row.robust[row.head])
    assert min(row.robust.values()) < max(row.heads.values())  # corruptions cost accuracy
    with pytest.raises(Exception, match="--robust"):
        rank(cfg, load_data("digits"), candidates_for(["efficientnet_lite0"], [32]), sample=300, robust=2)
