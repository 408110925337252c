"""``transferkit embed``: the features a model hands its classifier, for every image of a data set.

For users who train their own classifiers (logistic regression, k-NN, ...) on frozen features.
Output: ``.npz`` (always available) or ``.parquet`` (needs pyarrow) with the embedding, the
label index and name, the split and, for image files, the path.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from transferkit.core import distributed as dist
from transferkit.core.devices import uses_convolutions
from transferkit.core.errors import UserError
from transferkit.core.progress import log
from transferkit.core.safeio import atomic_write
from transferkit.data.imagesets import DataCache, decode_splits
from transferkit.data.specs import load_data
from transferkit.data.transforms import first_prepared, prepare
from transferkit.engine.batches import Batches
from transferkit.engine.loop import predict_logits
from transferkit.engine.optim import device_precision
from transferkit.models.cut import HeadInput
from transferkit.models.registry import create_backbone, describe
from transferkit.runs.inference import engine_settings
from transferkit.runs.rundir import load_run, read_run
from transferkit.runtimes.choose import SAMPLE, Frozen, choose, engine_device, in_torch, stays_in_torch
from transferkit.runtimes.guard import guard_from_sets


class Flat(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.flatten(self.inner(x), 1)


def embedder(run_dir: str | None, model: str | None, weights: str = "imagenet"):
    """``(module returning (N, D) features, Preprocess, seed)``; the seed is the run's (its split of a folder)."""
    if run_dir:
        tm, pre, _, run = load_run(run_dir)
        net, classifier, seed = tm.net, tm.layout.classifier, run["config"].get("seed", 0)
    else:
        net, info = create_backbone(model, weights)
        pre, classifier, seed = info.preprocess(), describe(net).classifier, 0
    return Flat(HeadInput(net.eval(), classifier)), pre, seed


def _on_engine(module, pre, sets: dict, dev, channels_last: bool, settings):
    """``(module, channels_last)``: a CPU engine for one CPU process (or when asked for), else the module."""
    if stays_in_torch(dev, settings.backend, settings.precision):
        return in_torch(module, settings.precision), channels_last
    sample = first_prepared(next(iter(sets.values())), pre, SAMPLE)
    guard = (guard_from_sets(sets.get("val"), sets.get("train"), pre, kind="features")
             if settings.precision != "fp32" else None)
    choice = choose(Frozen(module.eval(), pre.size, "embedder"), sample,
                    replace(settings, images=sum(len(s) for s in sets.values())), guard,
                    f"{len(sample)} images being embedded")
    log(choice.message)
    return choice.engine, False


def embed(source: str, data: str, out: str, from_run: bool, device: str = "auto", batch_size: int = 128,
          progress=None, seed: int | None = None, skip_bad: bool = False, weights: str = "imagenet",
          cache_dir: str | None = None, backend: str = "auto", precision: str = "fp32", threads: int = 0,
          allow_outside_paths: bool = False, decode_workers: int = 0) -> dict:
    """Embed every split of ``data`` into ``out``. Under torchrun each process embeds a share of
    every split and rank 0 writes the gathered file. ``seed`` splits a plain folder into train/val
    (default: the run's own seed, so the split column matches the run's training split). ``weights``:
    the pretrained weights of a model given by name (as ``--weights``). ``backend``, ``precision``,
    ``threads``: the CPU engine (runtimes/choose.py), or on a GPU fp32|bf16|fp16 in torch; reduced
    precision on the CPU is judged on the data's validation split with a nearest-class-mean probe
    (runtimes/guard.py). ``allow_outside_paths``: read image paths of a parquet file or CSV that leave
    its folder (data/specs.py). ``decode_workers``: processes decoding files into the decoded-image cache."""
    device = engine_device(device, backend, precision)  # CPU engines run on the CPU
    with dist.scope():
        return _embed(source, data, out, from_run, device, batch_size, progress, seed, skip_bad, weights, cache_dir,
                      engine_settings(backend, precision, threads, cache_dir), allow_outside_paths, decode_workers)


def _embed(source, data, out, from_run, device, batch_size, progress, seed, skip_bad, weights, cache_dir,
           settings, allow_outside_paths, decode_workers) -> dict:
    out_path = Path(out)
    if out_path.suffix not in (".npz", ".parquet"):
        raise UserError(f"--out {out}: use a .npz or .parquet file name")
    module, pre, run_seed = embedder(source if from_run else None, None if from_run else source, weights)
    seed = run_seed if seed is None else seed
    dev = dist.setup(device)
    settings = replace(settings, precision=device_precision(dev, settings.precision))
    channels_last = uses_convolutions(module)
    module = module.to(dev)
    splits = load_data(data, seed, allow_outside_paths)
    rows = {"embedding": [], "label": [], "split": [], "path": []}
    sets = {n: s for n in ("train", "val", "test") if (s := getattr(splits, n)) is not None}
    sets = decode_splits(sets, pre.size, pre.interpolation, skip_bad=skip_bad, progress=progress,
                         consequence=", nothing embedded",
                         cache=DataCache.from_settings(read_run(source)["config"] if from_run else {}, dev, cache_dir,
                                                       decode_workers))
    module, channels_last = _on_engine(module, pre, sets, dev, channels_last, settings)
    for name, imageset in sets.items():
        feats, labels = predict_logits(module, Batches(imageset, batch_size, rank=dist.rank(), world=dist.world()),
                                       lambda raw, _s, _b: prepare(raw, pre, dev, channels_last),
                                       progress=progress, desc=f"embedding {name}")
        rows["embedding"].append(feats.numpy().astype(np.float32))
        rows["label"].append(labels.numpy())
        rows["split"] += [name] * len(labels)
        rows["path"] += list(imageset.paths) if getattr(imageset, "paths", None) else [""] * len(labels)
    embedding, label = np.concatenate(rows["embedding"]), np.concatenate(rows["label"])
    result = {"out": str(out_path), "n": int(len(label)), "dim": int(embedding.shape[1])}
    if not dist.is_main():
        return result
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".npz":
        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, embedding=embedding, label=label, label_name=np.array(splits.classes)[label],
                         split=np.array(rows["split"]), path=np.array(rows["path"]), classes=np.array(splits.classes))
        atomic_write(out_path, write)
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError("writing .parquet needs pyarrow (pip install pyarrow); or use a .npz file name") from None
        table = pa.table({"embedding": list(embedding), "label": label,
                          "label_name": [splits.classes[i] for i in label], "split": rows["split"], "path": rows["path"]})
        atomic_write(out_path, lambda tmp: pq.write_table(table, tmp))
    return result
