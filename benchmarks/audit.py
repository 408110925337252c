"""``transferkit data audit`` measured with known truth: the tables of benchmarks/RESULTS.md
("Data audit"). Every number comes from efficientnet_lite0's cached features (packaged ImageNet
weights, its own 224 px unless --image-size), on a CPU.

    python benchmarks/audit.py             # all three tables (label errors, duplicates, speed)
    python benchmarks/audit.py labels      # or one of them: labels | duplicates | speed
    python benchmarks/audit.py --quick     # small sizes, to check that the script works
    python benchmarks/audit.py speed --n 100000

- **labels**: 5% of the training labels flipped (uniformly to another class, and to the class the
  clean model confuses most with the true one) in fashion-mnist (--train-limit 10000),
  animal-shapes and mnist-5k; precision, recall and F1 of the flagged set and precision of its
  top N (N = the number flipped), for transferkit's confident learning and, on the same
  out-of-fold probabilities, cleanlab's ``find_label_issues`` (``pip install cleanlab`` for that
  column: a benchmark-only reference, AGPL, never a dependency).
- **duplicates**: Fashion-MNIST images written as 112 px PNG files (4x, so that a 0.5x copy is
  still an image), and 2% of them copied four ways: resized 0.5x, JPEG q=50, mirrored, 5% cropped.
  Precision and recall over pairs (two images of one true group are a true pair; every pair of a
  found group is a found pair) at several similarity thresholds, and recall per kind of copy.
- **speed**: images/s of the whole audit from cold (an empty cache folder: decoding and features
  included) and with the features cached, the neighbour pass alone (and scikit-learn's brute-force
  cosine ``NearestNeighbors`` on the same rows, one direction only), peak RSS of each run (each
  size in a fresh process). ``--n`` larger than the data repeats it, each repeat shifted by a pixel.
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import resource
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from transferkit.audit import confident, duplicates  # noqa: E402
from transferkit.audit.audit import K, audit_table, run_audit  # noqa: E402
from transferkit.audit.features import build_table  # noqa: E402
from transferkit.audit.neighbors import nearest  # noqa: E402
from transferkit.audit.probabilities import combined, knn_votes, out_of_fold  # noqa: E402
from transferkit.core.config import TrainConfig  # noqa: E402
from transferkit.core.cputuning import tune_malloc  # noqa: E402
from transferkit.data.imagesets import FileImages, TensorImages  # noqa: E402
from transferkit.data.specs import DataSplits, load_data  # noqa: E402
from transferkit.train.features import backbone_features  # noqa: E402
from transferkit.train.setup import limit_training_images  # noqa: E402

try:
    from cleanlab.filter import find_label_issues as cleanlab_issues
except ImportError:  # the column says how to get it
    cleanlab_issues = None

LABEL_SETS = {"fashion-mnist": 10_000, "animal-shapes": 0, "mnist-5k": 0}
QUICK_SETS = {"digits": 0, "mnist-5k": 1000}
THRESHOLDS = (0.85, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98)  # margin 0: similarity alone
MARGINS = (0.06, 0.09, 0.12, 0.15, 0.18)
SAME_RMS = 2.0  # of 255: source images this close are copies already
COPIES = ("resized 0.5x", "JPEG q=50", "mirrored", "cropped 5%")


def config(args, data: str, **more) -> TrainConfig:
    return TrainConfig(data=data, model=args.model, image_size=args.image_size, cache_dir=str(args.cache), quiet=True,
                       **more).validate()


def train_only(splits: DataSplits) -> DataSplits:
    return DataSplits(splits.spec, splits.classes, splits.train, None, None)


def prf(found, truth) -> tuple[float, float, float]:
    found, truth = set(map(int, found)), set(map(int, truth))
    hit = len(found & truth)
    p, r = hit / max(len(found), 1), hit / max(len(truth), 1)
    return p, r, 2 * p * r / max(p + r, 1e-12)


def flipped(labels: np.ndarray, classes: int, kind: str, confusion: np.ndarray, seed: int = 1):
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(labels), int(round(0.05 * len(labels))), replace=False)
    noisy = labels.copy()
    if kind == "uniform":
        noisy[rows] = (labels[rows] + rng.integers(1, classes, len(rows))) % classes
    else:  # to the class the clean model takes it for most often
        off = confusion.astype(float).copy()
        np.fill_diagonal(off, -1)
        noisy[rows] = off.argmax(1)[labels[rows]]
    return noisy, rows


def labels_table(args) -> None:
    seeds = [int(x) for x in str(args.flip_seeds).split(",")]
    f1s = {}  # (data, flips, seed) -> {method: F1}
    print("\n### Label errors: 5% of the training labels flipped\n")
    print("| data | flips | images | OOF accuracy | est. error rate | method | flagged | precision | recall | F1 | "
          "top-N precision |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for spec, limit in (QUICK_SETS if args.quick else LABEL_SETS).items():
        cfg = config(args, spec, train_limit=limit)
        splits = train_only(limit_training_images(load_data(spec, cfg.seed), cfg))
        table = build_table(backbone_features(cfg, splits, mirrored=True), spec)
        classes = len(splits.classes)
        neighbours = nearest(table.x, table.mirrored, K)
        clean = combined(out_of_fold(table.x, table.labels, classes), knn_votes(neighbours, table.labels, classes))
        confusion = np.zeros((classes, classes), dtype=np.int64)
        np.add.at(confusion, (table.labels, clean.argmax(1)), 1)
        for kind, seed in ((k, s) for s in seeds for k in ("uniform", "confusable")):
            noisy, truth = flipped(table.labels, classes, kind, confusion, seed)
            flips = kind if seeds == [1] else f"{kind} (seed {seed})"
            probs = combined(out_of_fold(table.x, noisy, classes), knn_votes(neighbours, noisy, classes))
            accuracy = float((probs.argmax(1) == table.labels).mean())
            found = {}
            for method in confident.METHODS:
                issues = confident.find_label_issues(probs, noisy, method)
                found[f"transferkit {method}" + (" (default)" if method == confident.METHOD else "")] = (
                    issues.rows, issues.error_rate)
            if cleanlab_issues is not None:
                ranked = cleanlab_issues(noisy, probs, return_indices_ranked_by="normalized_margin")
                found["cleanlab find_label_issues"] = (ranked, float("nan"))
            else:
                found["cleanlab: pip install cleanlab"] = (None, float("nan"))
            for method, (rows, rate) in found.items():
                if rows is None:
                    print(f"| {spec} | {flips} | {len(noisy):,} | {accuracy:.3f} | | {method} | | | | | |")
                    continue
                p, r, f = prf(rows, truth)
                f1s.setdefault((spec, kind, seed), {})[method.replace(" (default)", "")] = f
                top = prf(rows[:len(truth)], truth)[0]
                est = f"{rate:.1%}" if rate == rate else ""
                print(f"| {spec} | {flips} | {len(noisy):,} | {accuracy:.3f} | {est} | {method} | {len(rows):,} | "
                      f"{p:.3f} | {r:.3f} | {f:.3f} | {top:.3f} |")
    _f1_summary(f1s)


def _f1_summary(f1s: dict) -> None:
    """F1 of every method in every case, then per method: the mean, and the cases at or above cleanlab's."""
    methods = list(next(iter(f1s.values())))
    print("\n| data | flips | seed | " + " | ".join(methods) + " |")
    print("|---|---|---|" + "---|" * len(methods))
    for (spec, kind, seed), row in f1s.items():
        print(f"| {spec} | {kind} | {seed} | " + " | ".join(f"{row[m]:.3f}" for m in methods) + " |")
    reference = "cleanlab find_label_issues"
    print()
    for m in methods:
        mean = np.mean([row[m] for row in f1s.values()])
        wins = sum(row[m] >= row[reference] for row in f1s.values()) if reference in methods else 0
        versus = f", at least cleanlab's in {wins} of {len(f1s)} cases" if reference in methods else ""
        print(f"- {m}: mean F1 {mean:.3f}{versus}")


def _png(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array).resize((array.shape[1] * 4, array.shape[0] * 4), Image.BICUBIC)


def _copy(image: Image.Image, kind: str, rng) -> Image.Image:
    if kind == "resized 0.5x":
        return image.resize((image.width // 2, image.height // 2), Image.BICUBIC)
    if kind == "JPEG q=50":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=50)
        return Image.open(io.BytesIO(buffer.getvalue())).convert(image.mode)
    if kind == "mirrored":
        return image.transpose(Image.FLIP_LEFT_RIGHT)
    w, h = image.width, image.height  # 5% of each side cut, placed at random
    dw, dh = round(0.05 * w), round(0.05 * h)
    left, top = int(rng.integers(0, dw + 1)), int(rng.integers(0, dh + 1))
    return image.crop((left, top, left + w - dw, top + h - dh))


def duplicates_table(args) -> None:
    n = 500 if args.quick else 5000
    splits = load_data(args.dup_data)
    rng = np.random.default_rng(args.dup_seed)
    rows = rng.permutation(len(splits.train))[:n]
    originals = rng.choice(n, max(2, int(0.02 * n)), replace=False)
    folder = Path(tempfile.mkdtemp(prefix="tk-audit-dups-"))
    truth_group, kinds = {}, {}
    for i, row in enumerate(rows):
        label = splits.classes[int(splits.train.labels[row])].replace("/", "-")
        (folder / label).mkdir(exist_ok=True)
        image = _png(splits.train.images[row].permute(1, 2, 0).squeeze(-1).numpy())
        image.save(folder / label / f"{i:05d}.png")
        if i in originals:
            truth_group[f"{i:05d}.png"] = i
            for c, kind in enumerate(COPIES):
                name = f"{i:05d}-copy{c}." + ("jpg" if kind == "JPEG q=50" else "png")
                _copy(image, kind, rng).save(folder / label / name, **({"quality": 50} if kind == "JPEG q=50" else {}))
                truth_group[name], kinds[name] = i, kind
    cfg = config(args, str(folder))
    data = load_data(str(folder))
    whole = DataSplits(str(folder), data.classes, _whole(data), None, None)
    table = build_table(backbone_features(cfg, whole, mirrored=True), str(folder))
    names = [Path(p).name for p in table.names]
    same = _identical_sources(splits.train.images[rows])
    for a, b in same:  # the data set's own copies are duplicates too: one truth group with their copies
        ga, gb = truth_group.get(f"{a:05d}.png", a), truth_group.get(f"{b:05d}.png", b)
        for name, g in list(truth_group.items()):
            if g == gb:
                truth_group[name] = ga
        truth_group[f"{a:05d}.png"] = truth_group[f"{b:05d}.png"] = ga
    group_of = np.array([truth_group.get(name, -1) for name in names])
    truth = {pair for pair in _pairs(group_of)}
    neighbours = nearest(table.x, table.mirrored, K)
    print(f"\n### Near-duplicates: {len(originals)} of {n} {args.dup_data} images copied four ways "
          f"({len(truth)} true pairs; sample seed {args.dup_seed}; {len(same)} pairs of the sample were already "
          f"copies in the data set: pixel RMS difference < {SAME_RMS}, mirror counted)\n")
    print("| threshold | margin | groups | found pairs | precision | recall | "
          + " | ".join(f"recall {k}" for k in COPIES) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(COPIES))
    rules = [(t, 0.0) for t in THRESHOLDS] + [(t, duplicates.MARGIN) for t in THRESHOLDS[:4]] + [
        (duplicates.THRESHOLD, m) for m in MARGINS if m != duplicates.MARGIN]
    for threshold, margin in rules:
        groups = duplicates.duplicate_groups(neighbours, table.digests, threshold, margin)
        found = np.full(len(names), -1)
        for g, group in enumerate(groups):
            found[group.members] = g
        pairs = set(_pairs(found))
        hit = len(pairs & truth)
        per_kind = []
        for kind in COPIES:
            mine = {p for p in truth if any(kinds.get(names[r]) == kind for r in p)
                    and any(names[r] in truth_group and names[r] not in kinds for r in p)}
            per_kind.append(f"{len(mine & pairs) / max(len(mine), 1):.3f}")
        mark = " (default)" if (threshold, margin) == (duplicates.THRESHOLD, duplicates.MARGIN) else ""
        print(f"| {threshold} | {margin}{mark} | {len(groups)} | {len(pairs)} | {hit / max(len(pairs), 1):.3f} | "
              f"{hit / max(len(truth), 1):.3f} | " + " | ".join(per_kind) + " |")


def _identical_sources(images: torch.Tensor) -> list:
    """Pairs of the sampled source images that already are copies of each other (as they are or
    mirrored): the data set's own duplicates, which the audit should find as well."""
    x = images.flatten(1).float()
    distance = torch.minimum(torch.cdist(x, x), torch.cdist(x, images.flip(-1).flatten(1).float()))
    distance /= x.shape[1] ** 0.5  # root mean square pixel difference
    distance.fill_diagonal_(float("inf"))
    return [(int(a), int(b)) for a, b in (distance < SAME_RMS).nonzero().tolist() if a < b]


def _whole(data: DataSplits):
    """Train and val of a plain folder back together: every image in one split."""
    return FileImages(data.train.paths + data.val.paths, data.train.labels.tolist() + data.val.labels.tolist(),
                      data.classes, data.spec)


def _pairs(group_of: np.ndarray):
    for g in np.unique(group_of[group_of >= 0]):
        yield from combinations(np.flatnonzero(group_of == g).tolist(), 2)


def _repeated(n: int) -> DataSplits:
    """``n`` Fashion-MNIST images (train then test), repeated with a one-pixel shift per repeat."""
    data = load_data("fashion-mnist")
    images = torch.cat([data.train.images, data.val.images, data.test.images])
    labels = torch.cat([data.train.labels, data.val.labels, data.test.labels])
    reps = -(-n // len(images))
    images = torch.cat([images.roll(r, dims=-1) for r in range(reps)])[:n]
    labels = labels.repeat(reps)[:n]
    return DataSplits("fashion-mnist", data.classes, TensorImages(images, labels, data.classes, f"fashion-mnist x{reps}"),
                      None, None)


def _speed_child(args, n: int, cache: str, queue) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    cfg = config(args, "fashion-mnist")
    cfg.cache_dir = cache
    splits = _repeated(n)
    start = time.perf_counter()
    audit = run_audit(cfg, splits)
    total = time.perf_counter() - start
    result = {"n": n, "seconds": total, "features": audit.seconds["features"], "neighbours": audit.seconds["neighbours"]}
    if args.sklearn:
        from sklearn.neighbors import NearestNeighbors

        x = audit.table.x
        t = time.perf_counter()
        NearestNeighbors(n_neighbors=K + 1, algorithm="brute", metric="cosine").fit(x).kneighbors(x)
        sk = time.perf_counter() - t
        t = time.perf_counter()
        nearest(x, None, K)
        result.update(sklearn=sk, torch_one_way=time.perf_counter() - t)
    t = time.perf_counter()
    audit_table(audit.table, audit.classes)  # everything after the features again: the cached case
    result["after_features"] = time.perf_counter() - t
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def speed_table(args) -> None:
    sizes = [1000, 2000] if args.quick else [10_000] + ([args.n] if args.n and args.n != 10_000 else [])
    context = multiprocessing.get_context("spawn")
    print("\n### Speed and memory (CPU)\n")
    print("| images | cache | whole audit, img/s | features, s | neighbour pass, img/s | after the features, img/s | "
          "sklearn brute cosine, img/s | torch one way, img/s | peak RSS, MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        cache = tempfile.mkdtemp(prefix="tk-audit-speed-")
        for state in ("cold", "cached"):
            queue = context.Queue()
            child = context.Process(target=_speed_child, args=(args, n, cache, queue))
            child.start()
            r = queue.get()
            child.join()
            sk = f"{n / r['sklearn']:,.0f} | {n / r['torch_one_way']:,.0f}" if "sklearn" in r else " | "
            print(f"| {n:,} | {state} | {n / r['seconds']:,.0f} | {r['features']:.1f} | {n / r['neighbours']:,.0f} | "
                  f"{n / r['after_features']:,.0f} | {sk} | {r['rss_mb']:,.0f} |")


def main() -> None:
    tune_malloc()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="*", choices=("labels", "duplicates", "speed"), default=[])
    parser.add_argument("--quick", action="store_true", help="small sizes: check that the script works")
    parser.add_argument("--n", type=int, default=0, help="speed: also this many images (e.g. 100000)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--sklearn", action=argparse.BooleanOptionalAction, default=True,
                        help="speed: also time scikit-learn's brute-force NearestNeighbors")
    parser.add_argument("--flip-seeds", default="1", help="labels: seeds of the flipped labels, e.g. 1,2,3,4")
    parser.add_argument("--dup-data", default="fashion-mnist", help="duplicates: the built-in set copied from")
    parser.add_argument("--dup-seed", type=int, default=0, help="duplicates: seed of the sample and of the copies")
    parser.add_argument("--cache", default=None, help="feature cache folder of the labels and duplicates tables")
    args = parser.parse_args()
    args.cache = Path(args.cache or tempfile.mkdtemp(prefix="tk-audit-cache-"))
    if cleanlab_issues is None:
        print("cleanlab is not installed: its column is empty (pip install cleanlab to fill it)")
    for name in args.tables or ("labels", "duplicates", "speed"):
        {"labels": labels_table, "duplicates": duplicates_table, "speed": speed_table}[name](args)


if __name__ == "__main__":
    main()
