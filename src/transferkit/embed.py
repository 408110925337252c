"""``transferkit embed``: the features a model hands its classifier, for every image of a data set.

For users who train their own classifiers (logistic regression, k-NN, ...) on frozen features.
Output: ``.npz`` (always available) or ``.parquet`` (needs pyarrow) with the embedding, the
label index and name, the split and, for image files, the path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from transferkit import distributed as dist
from transferkit.dataspec import load_data
from transferkit.devices import uses_convolutions
from transferkit.engine import Batches, predict_logits
from transferkit.errors import UserError
from transferkit.images import unusable
from transferkit.modeling import HeadInput
from transferkit.transforms import Preprocess, prepare


class Flat(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.flatten(self.inner(x), 1)


def embedder(run_dir: str | None, model: str | None):
    """``(module returning (N, D) features, Preprocess, description)``."""
    from transferkit.layouts import describe

    if run_dir:
        from transferkit.rundir import load_run

        tm, pre, _, _ = load_run(run_dir)
        net, classifier = tm.net, tm.layout.classifier
    else:
        from transferkit.backbones import create_backbone

        net, info = create_backbone(model, "imagenet")
        pre = Preprocess(info.input_size, info.mean, info.std, info.interpolation)
        classifier = describe(net).classifier
    return Flat(HeadInput(net.eval(), classifier)), pre


def embed(source: str, data: str, out: str, from_run: bool, device: str = "auto", batch_size: int = 128,
          progress=None, seed: int = 0) -> dict:
    """Embed every split of ``data`` into ``out``. Under torchrun each process embeds a share of
    every split and rank 0 writes the gathered file."""
    with dist.scope():
        return _embed(source, data, out, from_run, device, batch_size, progress, seed)


def _embed(source, data, out, from_run, device, batch_size, progress, seed) -> dict:
    out_path = Path(out)
    if out_path.suffix not in (".npz", ".parquet"):
        raise UserError(f"--out {out}: use a .npz or .parquet file name")
    module, pre = embedder(source if from_run else None, None if from_run else source)
    dev = dist.setup(device)
    channels_last = uses_convolutions(module)
    module = module.to(dev)
    splits = load_data(data, seed)
    rows = {"embedding": [], "label": [], "split": [], "path": []}
    for name in ("train", "val", "test"):
        imageset = getattr(splits, name)
        if imageset is None:
            continue
        if hasattr(imageset, "decode"):
            imageset, bad = imageset.decode(pre.size, pre.interpolation, skip_bad=False)
            if imageset is None:
                raise unusable(bad)
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
    from transferkit.safeio import atomic_write

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
