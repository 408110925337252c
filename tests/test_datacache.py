"""The decoded-image cache, streamed batches and tar shards (data/imagecache.py, data/stream.py,
data/readers/shards.py): decoded once and reused, the same pixels and the same training as decoding into
memory, broken files named from the cache too, each torchrun process decoding its share."""
from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.cli import main
from transferkit.core.errors import UserError
from transferkit.core.safeio import load_torch_file
from transferkit.data import imagecache
from transferkit.data.imagesets import DataCache, TensorImages, decode_splits
from transferkit.data.pixels import row_digests
from transferkit.data.specs import load_data
from transferkit.data.stream import prefetched
from transferkit.engine.batches import Batches

SRC = str(Path(__file__).resolve().parents[1] / "src")
PALETTE = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]


def make_shards(root: Path, shards: list[str], per_shard: int = 6, classes=("cat", "dog"), label: str = "cls",
                extra: dict | None = None) -> Path:
    """WebDataset-style tars written with the standard library: shards (by file name) of PNG samples
    whose label member is ``.cls`` (index), ``.txt`` (name) or ``.json`` ({"label": name})."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for number, name in enumerate(shards):
        with tarfile.open(root / name, "w") as tar:
            def add(member: str, data: bytes):
                info = tarfile.TarInfo(member)
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
            for i in range(per_shard):
                k = i % len(classes)
                pixels = np.clip(np.array(PALETTE[k]) + rng.normal(0, 25, (20, 24, 3)), 0, 255).astype(np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                key = f"s{number}_{i:04d}"
                add(f"{key}.png", buffer.getvalue())
                add(f"{key}.{label}", {"cls": str(k), "txt": classes[k],
                                        "json": json.dumps({"label": classes[k]})}[label].encode())
                for ext, data in (extra or {}).items():
                    add(f"{key}.{ext}", data)
    return root


def cache_for(tmp_path: Path, feed: str = "auto") -> DataCache:
    return DataCache(tmp_path / "cache", feed)


def test_decoded_once_then_reused_with_the_same_pixels(tmp_path, image_folder, monkeypatch, capsys):
    splits = load_data(str(image_folder))
    sets = {"train": splits.train, "val": splits.val}
    plain = decode_splits(sets, 16, cache=None)
    first = decode_splits(sets, 16, cache=cache_for(tmp_path, "stream"))
    assert "decoded 12 now" in capsys.readouterr().err
    for name in sets:  # the cache holds exactly what decoding into memory gives
        assert torch.equal(first[name].batch(torch.arange(len(sets[name]))), plain[name].images)
        assert first[name].paths == plain[name].paths and torch.equal(first[name].labels, plain[name].labels)

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("a reused cache decoded a file")
    monkeypatch.setattr(imagecache, "load_uint8", no_decoding)
    again = decode_splits(sets, 16, cache=cache_for(tmp_path, "memory"))
    line = capsys.readouterr().err
    assert "reused 12" in line and "held in memory" in line and isinstance(again["train"], TensorImages)
    assert torch.equal(again["train"].images, plain["train"].images)
    assert again["train"].fingerprint() == first["train"].fingerprint()  # the feature cache key ignores the feed
    monkeypatch.undo()
    Image.new("RGB", (20, 20), (0, 0, 0)).save(splits.train.paths[0])  # a changed file: train decoded again
    decode_splits(sets, 16, cache=cache_for(tmp_path))
    assert "(decoded 10 now + reused 2;" in capsys.readouterr().err


def test_broken_files_are_named_from_the_cache_too(tmp_path, image_folder, monkeypatch, capsys):
    (image_folder / "dog" / "broken.png").write_bytes(b"not a png")
    splits = load_data(str(image_folder))
    sets = {"train": splits.train, "val": splits.val}
    for attempt in range(2):  # the second time from the cache's list, without decoding anything
        with pytest.raises(UserError, match=r"1 unusable image\(s\).*broken.png \(not an image"):
            decode_splits(sets, 16, cache=cache_for(tmp_path))
        monkeypatch.setattr(imagecache, "load_uint8", lambda *a, **k: pytest.fail("decoded again"))
    kept = decode_splits(sets, 16, skip_bad=True, cache=cache_for(tmp_path, "stream"))
    assert "dropped 1 unusable image(s), e.g." in capsys.readouterr().err
    assert sum(len(s) for s in kept.values()) == 12 and not any(p.endswith("broken.png") for s in kept.values() for p in s.paths)
    name = "train" if any(p.endswith("broken.png") for p in splits.train.paths) else "val"
    assert len(kept[name].batch(torch.arange(len(kept[name])))) == len(kept[name])


def test_streamed_batches_come_in_order_and_the_reader_stops_with_its_consumer():
    items = [(i, torch.full((2,), i)) for i in range(10)]
    assert [i for i, _ in prefetched(iter(items), depth=2)] == list(range(10))
    reader = prefetched(iter(items), depth=2)
    next(reader)
    reader.close()  # an interrupted epoch: the background thread ends too
    assert not [t for t in threading.enumerate() if t.name == "transferkit-prefetch"]

    def failing():
        yield (0,)
        raise OSError("disk gone")
    with pytest.raises(OSError, match="disk gone"):
        list(prefetched(failing(), depth=2))


BASE = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "2", "--batch-size", "4",
        "--quiet", "--seed", "3", "--freeze", "none", "--no-feature-cache"]


def test_streamed_training_is_the_in_memory_training(tmp_path, image_folder, capsys):
    """--augment flip, the whole model trained: streamed from the disk cache or decoded into memory
    as before, the same images in the same order give the same weights, bit for bit."""
    runs = {}
    for name, flags in (("stream", ["--feed", "stream", "--cache-dir", str(tmp_path / "c")]),
                        ("memory", ["--no-data-cache"])):
        assert main(["train", "--data", str(image_folder), "--out", str(tmp_path / name), *BASE, "--augment", "flip",
                     *flags]) == 0
        err = capsys.readouterr().err
        runs[name] = load_torch_file(tmp_path / name / "checkpoints" / "last.pt")["model"]
        feeding = [line for line in err.splitlines() if line.startswith("data: ")]
        assert len(feeding) == 1 and ("streamed from disk" if name == "stream" else "no decoded-image cache") in feeding[0]
    assert all(torch.equal(runs["stream"][k], runs["memory"][k]) for k in runs["memory"])
    assert main(["eval", str(tmp_path / "stream"), "--format", "json", "--quiet"]) == 0  # eval reuses the run's cache
    assert "reused 2" in capsys.readouterr().err


def test_shards_with_splits_labels_and_class_names(tmp_path):
    cls = make_shards(tmp_path / "cls", ["train-000000.tar", "train-000001.tar", "val-000000.tar"])
    splits = load_data(str(tmp_path / "cls" / "train-{000000..000001}.tar"), seed=1)  # train only: val held out
    assert splits.classes == ["0", "1"] and len(splits.train) + len(splits.val) == 12 and splits.test is None
    whole = load_data(str(cls))  # the folder: split by file name
    assert (len(whole.train), len(whole.val)) == (12, 6) and whole.train.paths[0].endswith("train-000000.tar/s0_0000.png")
    (cls / "classes.txt").write_text("cat\ndog\n")
    assert load_data(str(cls)).classes == ["cat", "dog"]
    for label in ("txt", "json"):
        named = load_data(str(make_shards(tmp_path / label, ["train.tar", "test.tar"], classes=("b", "a"),
                                          label=label)))
        assert named.classes == ["a", "b"] and named.test is not None
        assert [named.classes[i] for i in named.test.labels[:2]] == ["b", "a"]  # names mapped, not positions
    with pytest.raises(UserError, match=r"no shard .*train-000002.tar"):
        load_data(str(tmp_path / "cls" / "train-{000000..000002}.tar"))


def test_unsafe_members_are_never_unpickled(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    root = make_shards(tmp_path / "shards", ["train.tar", "val.tar"],
                       extra={"pyd": pickle.dumps(Payload()), "pth": pickle.dumps(Payload())})
    assert main(["data", "check", str(root)]) == 0
    splits = load_data(str(root))
    decode_splits({"train": splits.train}, 16, cache=cache_for(tmp_path, "stream"))
    assert not marker.exists()


def test_training_and_eval_on_shards(tmp_path, capsys):
    root = make_shards(tmp_path / "shards", ["train-0.tar", "train-1.tar", "val-0.tar"])
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--model", "resnet18", "--weights", "none",
                 "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--quiet", "--feed", "stream",
                 "--cache-dir", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert "data: 18 images at 32 px from the decoded-image cache" in err and "feature cache: on" in err
    assert main(["eval", str(out), "--format", "json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 6


def test_each_torchrun_process_decodes_its_share(tmp_path):
    """Two processes build one cache entry together: each decodes half of the files (the decode work of
    one process, split), and the cache holds what one process decodes."""
    root = make_shards(tmp_path / "shards", ["train.tar", "val.tar"])
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from transferkit.core import distributed as dist
        from transferkit.data.imagesets import DataCache, decode_splits
        from transferkit.data.specs import load_data
        with dist.scope():
            dist.setup("cpu")
            decode_splits({{"train": load_data({str(root)!r}).train}}, 16, cache=DataCache(Path("cache"), "stream"))
    """))
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", TRANSFERKIT_DECODE_WORKERS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [meta_file] = (tmp_path / "cache" / "images").glob("*/meta.json")
    meta = json.loads(meta_file.read_text())
    assert meta["decoded_by"] == [3, 3] and meta["n"] == 6
    train = load_data(str(root)).train
    plain = decode_splits({"train": train}, 16)["train"].images
    stored = np.fromfile(meta_file.parent / "images.u8", dtype=np.uint8)
    assert torch.equal(torch.from_numpy(stored[:6 * 3 * 16 * 16].reshape(6, 3, 16, 16)), plain)
    # each process wrote its rows' pixel digests too: the same as those of the images in memory
    assert np.array_equal(stored[6 * 3 * 16 * 16:].reshape(6, 16), row_digests(plain))


def test_batches_read_ahead_only_for_streamed_sources(tmp_path, image_folder):
    splits = load_data(str(image_folder))
    streamed = decode_splits({"train": splits.train}, 16, cache=cache_for(tmp_path, "stream"))["train"]
    in_memory = decode_splits({"train": splits.train}, 16)["train"]
    for source in (streamed, in_memory):
        batches = Batches(source, 4, shuffle=True, seed=1)
        got = [(index, raw) for _, index, raw, _ in batches(0, start=1)]
        assert [len(i) for i, _ in got] == [4, 2]
        assert torch.equal(torch.cat([raw for _, raw in got]), in_memory.images[torch.cat([i for i, _ in got])])
