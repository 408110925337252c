"""transferkit data audit: label issues, near-duplicates and leakage, outliers, the page, --exclude.

The algorithms are checked on real data with known truth (scikit-learn's digits, as pixel
features: no backbone needed) and the command end to end on a small image folder with injected
copies, through efficientnet_lite0's packaged weights at 64 px.
"""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from conftest import TINY_TRAIN, need_extra
from PIL import Image
from sklearn.datasets import load_digits
from test_report import browser_view, static_problems

from transferkit.audit import confident, duplicates, neighbors
from transferkit.audit.audit import audit_table
from transferkit.audit.features import Table
from transferkit.audit.neighbors import nearest, normalise
from transferkit.audit.outliers import find_outliers
from transferkit.cli import main
from transferkit.data.specs import load_data
from transferkit.runs.rundir import read_run
from transferkit.train.exclude import exclude_images

AUDIT = ["--model", "efficientnet_lite0", "--image-size", "64", "--quiet", "--threshold", "0.8"]


def _table(x, labels, split=None, mirrored=None, digests=None) -> Table:
    n = len(labels)
    split = np.array(split if split is not None else ["train"] * n)
    return Table(normalise(x), normalise(mirrored if mirrored is not None else x), np.asarray(labels), split,
                 np.arange(n), [f"digits:train:{i}" for i in range(n)], digests, {"train": 0})


# ---- the algorithms, on digits with known truth ------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = (data.data - data.data.mean(0)).astype(np.float32)
    return x, data.target.astype(np.int64)


def test_flipped_labels_are_found_with_the_label_they_had(digits):
    x, truth = digits
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(truth), int(0.05 * len(truth)), replace=False)
    labels = truth.copy()
    labels[flipped] = (truth[flipped] + rng.integers(1, 10, len(flipped))) % 10
    findings, _, issues, _ = audit_table(_table(x, labels), [str(d) for d in range(10)])
    found = issues.rows
    hits = np.intersect1d(found, flipped)
    assert len(hits) >= 0.75 * len(flipped) and len(hits) >= 0.9 * len(found), (len(hits), len(found), len(flipped))
    assert (issues.suggested[hits] == truth[hits]).mean() >= 0.9  # "relabel to X" names the true class
    assert abs(issues.error_rate - 0.05) < 0.03
    top = [f.row for f in findings if f.kind == "label"][:len(flipped) // 2]
    assert np.isin(top, flipped).mean() >= 0.95  # the most certain findings come first


def test_clean_labels_give_few_issues_and_a_low_error_rate(digits):
    x, labels = digits
    _, _, issues, _ = audit_table(_table(x, labels), [str(d) for d in range(10)])
    assert len(issues.rows) < 0.02 * len(labels) and issues.error_rate < 0.02


def test_confident_joint_follows_the_paper():
    # Three images of class 0, two of class 1; thresholds are the mean self-confidence per class.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 1, 1])
    t = confident.thresholds(probs, labels, 2)
    assert t == pytest.approx([(0.9 + 0.8 + 0.1) / 3, (0.7 + 0.4) / 2])
    counted = confident.confident_classes(probs, t)
    assert counted.tolist() == [0, 0, 1, 1, 0]  # image 4 reaches class 0's threshold (0.6), not class 1's
    joint = confident.confident_joint(labels, counted, 2)
    assert joint.tolist() == [[2, 1], [1, 1]]
    # Q = [[0.4, 0.2], [0.2, 0.2]]: one error expected in each class. By class: the least
    # self-confident image of each; by noise rate: the largest margin towards the other class.
    for method in confident.METHODS:
        assert sorted(confident.find_label_issues(probs, labels, method).rows.tolist()) == [2, 4], method
    issues = confident.find_label_issues(probs, labels)
    assert sorted(issues.rows.tolist()) == [2, 4] and issues.suggested[2] == 1 and issues.suggested[4] == 0
    assert issues.error_rate == pytest.approx(1 / 3 * 3 / 5 + 1 / 2 * 2 / 5)


def test_margin_count_flags_the_estimated_number_of_lowest_margins_across_classes():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 400)
    probs = rng.dirichlet(np.ones(4) * 0.3, 400)
    probs[np.arange(400), labels] += 1.0
    probs /= probs.sum(1, keepdims=True)
    wrong = rng.choice(400, 40, replace=False)
    labels[wrong] = (labels[wrong] + rng.integers(1, 4, 40)) % 4  # 10% of the labels flipped
    issues = confident.find_label_issues(probs, labels, "margin_count")
    count = int(round(400 * issues.error_rate))
    assert count > 0 and len(issues.rows) == count
    assert set(issues.rows.tolist()) == set(np.argsort(issues.margin, kind="stable")[:count].tolist())
    assert (np.diff(issues.margin[issues.rows]) >= 0).all()  # most likely wrong first
    by_class = confident.find_label_issues(probs, labels, "prune_by_class")
    assert set(by_class.rows.tolist()) != set(issues.rows.tolist())  # a rule of its own, not a renamed filter


def test_neighbours_are_flip_invariant_and_batched(monkeypatch):
    rng = np.random.default_rng(0)
    x = normalise(rng.normal(size=(300, 16)))
    mirrored = normalise(rng.normal(size=(300, 16)))
    mirrored[7] = x[3]  # image 7 seen in a mirror is image 3
    whole = nearest(x, mirrored, 5)
    assert whole.index[3, 0] == 7 and whole.similarity[3, 0] == pytest.approx(1.0)
    assert (whole.index != np.arange(300)[:, None]).all()  # never itself
    monkeypatch.setattr(neighbors, "BLOCK", 300 * 16)  # 16 rows at a time
    batched = nearest(x, mirrored, 5)
    assert np.array_equal(batched.index, whole.index) and np.allclose(batched.similarity, whole.similarity)


def test_large_sets_use_an_hnsw_index_that_finds_the_exact_neighbours(monkeypatch):
    need_extra("hnswlib", "audit")
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(40, 32))
    x = normalise(centres[rng.integers(0, 40, 3000)] + 0.6 * rng.normal(size=(3000, 32)))
    mirrored = normalise(x + 0.3 * rng.normal(size=x.shape))
    mirrored[11] = x[5]  # image 11 in a mirror is image 5
    truth = neighbors.exact(x, mirrored, 10)
    monkeypatch.setattr(neighbors, "EXACT_UP_TO", 1000)
    found = nearest(x, mirrored, 10)
    assert found.index[5, 0] == 11 and found.similarity[5, 0] == pytest.approx(1.0, abs=1e-5)
    assert (found.index != np.arange(3000)[:, None]).all()
    assert all(len(set(row)) == 10 for row in found.index)  # an image and its mirror image count once
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.index, truth.index)])
    assert recall >= 0.95, recall
    assert np.allclose(found.similarity[:, 0], truth.similarity[:, 0], atol=1e-4)


def test_duplicate_groups_join_near_copies_and_identical_pixels():
    rng = np.random.default_rng(1)
    x = normalise(rng.normal(size=(50, 32)))
    x[10] = normalise(x[None, 0] + 0.05 * rng.normal(size=(1, 32)))  # a near copy of 0
    x[20] = normalise(x[None, 10] + 0.05 * rng.normal(size=(1, 32)))  # and of 10: one group of three
    digests = rng.integers(0, 255, (50, 16), dtype=np.uint8)
    digests[40] = digests[30]  # identical pixels, whatever the features say
    groups = duplicates.duplicate_groups(nearest(x, None, 5), digests, threshold=0.95)
    assert sorted(g.members.tolist() for g in groups) == [[0, 10, 20], [30, 40]]
    assert next(g for g in groups if 30 in g.members).exact


def test_a_pair_must_stand_out_from_its_neighbourhood_unless_nearly_identical():
    rng = np.random.default_rng(2)

    def around(centre, spread, n):
        return normalise(centre + spread * rng.normal(size=(n, 32)))

    x = normalise(rng.normal(size=(80, 32)))
    x[1] = around(x[0], 0.08, 1)[0]         # a copy in a sparse region, similarity ~0.91
    x[10:22] = around(x[None, 10], 0.065, 12)  # twelve look-alikes: each pair ~0.90, as close as its 10th neighbour
    x[30:42] = around(x[None, 30], 0.02, 12)  # twelve close copies of one image (> 0.96): too many for the margin
    neighbours = nearest(x, None, 10)
    similarity = x @ x.T
    alike = similarity[10:22, 10:22][np.triu_indices(12, 1)]
    assert 0.88 < similarity[0, 1] < 0.94 and 0.88 < alike.mean() and alike.max() < duplicates.CERTAIN
    groups = duplicates.duplicate_groups(neighbours, None)
    assert sorted(g.members.tolist() for g in groups) == [[0, 1], list(range(30, 42))]
    # similarity alone (margin 0) cannot tell the look-alikes from the copy
    alone = duplicates.duplicate_groups(neighbours, None, margin=0)
    assert any(set(range(10, 22)) <= set(g.members.tolist()) for g in alone)


def test_outliers_are_far_from_everything_or_from_their_class(digits):
    x, labels = digits
    x = x.copy()
    x[5] = np.random.default_rng(0).normal(size=x.shape[1]) * 50  # noise: near nothing
    sevens, ones = np.flatnonzero(labels == 7), np.flatnonzero(labels == 1)
    x[sevens[:3]] = x[ones[:3]] * 1.01  # three "sevens" that look like ones (near each other and the ones)
    unit = normalise(x)
    found = find_outliers(unit, labels, nearest(unit, None, 10), 10)
    assert found.isolation.argmax() == 5 and found.isolation[5] > 4
    assert set(np.argsort(-found.atypical[sevens])[:3]) == {0, 1, 2}  # the most atypical sevens
    assert (found.atypical[sevens[:3]] > 3).all() and (found.isolation[sevens[:3]] < 1).all()


# ---- the command, on an image folder with injected copies ---------------------------------------

TINTS = {"a": (1.0, 0.3, 0.3), "b": (0.3, 1.0, 0.3), "c": (0.3, 0.3, 1.0)}


def _pattern(rng, tint, size=64) -> np.ndarray:
    """A smooth random picture in its class's colour: distinct from every other one, and still
    itself when resized."""
    coarse = (rng.integers(0, 256, (6, 6, 3)) * np.array(tint)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


def _copies(image: Image.Image) -> dict:
    jpeg = io.BytesIO()
    image.save(jpeg, format="JPEG", quality=50)
    w, h = image.size
    return {"resized.png": image.resize((w // 2, h // 2), Image.BICUBIC),
            "jpeg.jpg": Image.open(io.BytesIO(jpeg.getvalue())).convert("RGB"),
            "mirrored.png": image.transpose(Image.FLIP_LEFT_RIGHT),
            "cropped.png": image.crop((2, 1, w - 1, h - 2))}


def make_folder(root, leak: bool):
    """train/, val/ and test/, three classes of distinct pictures; one training picture copied four
    ways (within train), and with ``leak`` another training picture copied into test/."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 8), ("val", 2), ("test", 3)):
        for c in ("a", "b", "c"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(_pattern(rng, TINTS[c])).save(root / split / c / f"{i}.png")
    original = Image.open(root / "train" / "a" / "0.png")
    for name, image in _copies(original).items():
        image.save(root / "train" / "a" / f"copy-{name}")
    if leak:
        Image.open(root / "train" / "b" / "1.png").transpose(Image.FLIP_LEFT_RIGHT).save(root / "test" / "b" / "leak.png")
    return root


def _rows(out) -> list[dict]:
    with open(out / "audit.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    folder = make_folder(root / "data", leak=True)
    out = root / "out"
    code = main(["data", "audit", str(folder), "--out", str(out), "--cache-dir", str(root / "cache"), *AUDIT])
    return folder, out, code, root


def test_copies_are_grouped_and_a_cross_split_copy_is_leakage(leaky):
    folder, out, code, _ = leaky
    assert code == 1  # leakage
    rows = _rows(out)
    dups = {r["path"] for r in rows if r["finding"] == "duplicate"}
    copies = {str(folder / "train" / "a" / f"copy-{n}") for n in ("resized.png", "jpeg.jpg", "mirrored.png", "cropped.png")}
    assert dups == copies  # every copy, and nothing else
    leaks = [r for r in rows if r["finding"] == "leakage"]
    assert [r["path"] for r in leaks] == [str(folder / "train" / "b" / "1.png")]  # the training copy goes
    assert str(folder / "test" / "b" / "leak.png") in leaks[0]["action"]
    report = json.loads((out / "audit.json").read_text())
    assert report["leakage"] and report["findings"]["duplicate"] == 4 and report["images"] == 24 + 6 + 9 + 5


def test_the_page_is_self_contained_and_renders(leaky, tmp_path):
    _, out, _, _ = leaky
    page = (out / "audit.html").read_text(encoding="utf-8")
    assert static_problems(page) == []
    assert page.count('class="thumb"') >= 2 * 5  # each copy beside the picture it copies
    assert "remove duplicate" in page and "Near-copies across splits (leakage) (1)" in page
    seen = browser_view(out / "audit.html", tmp_path)
    assert seen["images"] >= 10 and seen["broken"] == [] and seen["fetched"] == []


def test_a_clean_folder_exits_0_and_check_deep_exits_1_on_leakage(tmp_path, capsys):
    clean = make_folder(tmp_path / "clean", leak=False)
    assert main(["data", "audit", str(clean), "--out", str(tmp_path / "a"), *AUDIT]) == 0
    assert "no leakage across splits" in capsys.readouterr().out
    leaky = make_folder(tmp_path / "leaky", leak=True)
    assert main(["data", "check", str(leaky)]) == 0  # no byte-identical files: the plain check sees nothing
    capsys.readouterr()
    assert main(["data", "check", str(leaky), "--deep", "--format", "json", "--out", str(tmp_path / "b"), *AUDIT]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["check"]["clean"] and printed["audit"]["leakage"]


def test_exclude_leaves_out_exactly_the_listed_images(leaky, tmp_path, capsys):
    folder, out, _, _ = leaky
    rows = [r for r in _rows(out) if r["finding"] in ("duplicate", "leakage")]
    listing = tmp_path / "keep-some.csv"
    with open(listing, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + [{**rows[0], "path": str(folder / "gone.png")}])
    before = load_data(str(folder))
    after = exclude_images(load_data(str(folder)), str(listing))
    listed = {r["path"] for r in rows}
    for split in ("train", "val", "test"):
        kept = set(getattr(after, split).paths) if getattr(after, split) is not None else set()
        whole = set(getattr(before, split).paths) if getattr(before, split) is not None else set()
        assert kept == whole - listed
    err = capsys.readouterr().err
    assert "excluded 5 image(s) listed in keep-some.csv" in err and "1 of the 6 entries" in err


def test_exclude_names_built_in_images_by_id(tmp_path, capsys):
    listing = tmp_path / "ids.txt"
    listing.write_text("# two training images and one test image\ndigits:train:0\ndigits:train:5\ndigits:test:3\n")
    before, after = load_data("digits"), exclude_images(load_data("digits"), str(listing))
    assert len(after.train) == len(before.train) - 2 and len(after.test) == len(before.test) - 1
    assert after.train.images[0].equal(before.train.images[1]) and after.test.images[3].equal(before.test.images[4])
    assert "excluded 3 image(s)" in capsys.readouterr().err


def test_train_exclude_runs_on_the_rest(image_folder, tmp_path, capsys):
    listing = tmp_path / "x.txt"
    listing.write_text(f"{image_folder / 'cat' / 'cat_0.png'}\n")
    assert main(["train", "--data", str(image_folder), "--out", str(tmp_path / "run"), *TINY_TRAIN,
                 "--exclude", str(listing)]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    whole = load_data(str(image_folder))
    assert run["config"]["exclude"] == str(listing)
    assert run["data"]["train"] + run["data"]["val"] == len(whole.train) + len(whole.val) - 1
    assert "excluded 1 image(s) listed in x.txt" in capsys.readouterr().err
    assert main(["train", "--data", str(image_folder), "--out", str(tmp_path / "r2"), *TINY_TRAIN,
                 "--exclude", str(tmp_path / "missing.csv")]) == 2


def test_a_run_directory_is_audited_with_its_own_data_and_backbone(tiny_run, tmp_path, capsys):
    # Random-init features: whether images look alike is noise here, the exit status with it.
    assert main(["data", "audit", str(tiny_run), "--out", str(tmp_path / "a"), "--format", "json", "--quiet"]) in (0, 1)
    found = json.loads(capsys.readouterr().out)
    run = read_run(tiny_run)  # run.json with this machine's paths (local.json) laid over it
    assert found["model"] == "resnet18" and found["data"] == run["config"]["data"]
    assert found["images"] == sum(v for k, v in run["data"].items() if k != "spec")
    assert main(["data", "audit", str(tiny_run), "--out", str(tmp_path / "b"), "--threshold", "2"]) == 2
    assert main(["data", "audit", str(tiny_run), "--out", str(tmp_path / "c"), "--margin", "-0.1"]) == 2
    assert "--margin -0.1" in capsys.readouterr().err
