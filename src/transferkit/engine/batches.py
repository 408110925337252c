"""Batches of indices over a data source, in an order that depends only on (seed, epoch).

A resumed epoch replays the same batches without any saved sampler state, and under DDP every
process takes its slice of the same global batch, so a torchrun run visits images in the
single-process order. A source with several versions of each image (engine/feature_cache.py's
``FeatureViews``) has a ``draw(index, epoch, b)`` that training batches (shuffled ones) read
through, so which version an image takes depends only on (seed, epoch, batch) too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from transferkit.core.errors import UserError
from transferkit.data.stream import prefetched
from transferkit.models.outputs import split_outputs

CPU_BATCH = 64  # --batch-size auto on the CPU


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 31 + salt)


def balanced_order(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """As many indices as labels, each image drawn with probability 1 / (classes x its class's count):
    every class as likely as any other, rare images repeated, common ones left out (fastai's and
    torch's WeightedRandomSampler idea), from the same (seed, epoch) generator as a shuffle."""
    counts = torch.bincount(labels.long())
    weights = 1.0 / counts[labels.long()].double()
    return torch.multinomial(weights, len(labels), replacement=True, generator=generator)


@dataclass
class Batches:
    """Index batches over a source that has ``labels`` and ``batch(index)``.

    Under DDP (``world`` processes) ``batch_size`` is still the global batch: every process
    takes its ``rank``-th contiguous slice of each batch of the same (seed, epoch) order, so an
    epoch visits the images in the single-process order and resumes without sampler state.
    """

    source: object
    batch_size: int
    shuffle: bool = False
    seed: int = 0
    rank: int = 0
    world: int = 1
    balanced: bool = False  # --sampler balanced (with shuffle): classes drawn uniformly, with replacement

    def __len__(self) -> int:
        n = len(self.source.labels)
        # A training batch of one image breaks BatchNorm in train mode (a BN head, a user's
        # layer): a last batch that would leave some process fewer than two images (with one
        # process: a batch of one) joins the batch before it instead.
        fold = self.shuffle and n > self.batch_size and 0 < n % self.batch_size < 2 * self.world
        return math.ceil(n / self.batch_size) - fold

    def order(self, epoch: int) -> torch.Tensor:
        n = len(self.source.labels)
        if not self.shuffle:
            return torch.arange(n)
        if self.balanced:
            return balanced_order(self.source.labels, epoch_generator(self.seed, epoch))
        return torch.randperm(n, generator=epoch_generator(self.seed, epoch))

    def size(self, b: int) -> int:
        """Images in global batch ``b`` (all processes together)."""
        n = len(self.source.labels)
        return n - b * self.batch_size if b == len(self) - 1 else self.batch_size

    def __call__(self, epoch: int, start: int = 0):
        batches = self._batches(epoch, start)
        depth = getattr(self.source, "prefetch", 0)  # sources streamed from disk are read ahead (data/stream.py)
        return prefetched(batches, depth, getattr(self.source, "pin_memory", False)) if depth else batches

    def _batches(self, epoch: int, start: int):
        order = self.order(epoch)
        draw = getattr(self.source, "draw", None) if self.shuffle else None
        for b in range(start, len(self)):
            index = order[b * self.batch_size:b * self.batch_size + self.size(b)]
            if self.world > 1:
                index = index.tensor_split(self.world)[self.rank]
            raw = draw(index, epoch, b) if draw else self.source.batch(index)
            yield b, index, raw, self.source.labels[index]


def auto_batch_size(module, sample_shape: tuple, device: torch.device, autocast, limit: int, dtype=torch.float32) -> int:
    """Double the batch until a forward+backward runs out of memory; keep 3/4 of the last that fit.

    The trial batches are random numbers: BatchNorm running statistics (frozen ones included)
    are restored afterwards, and the random stream is forked, so the probe leaves no trace.
    """
    if device.type != "cuda":
        return min(CPU_BATCH, limit)
    best, size = 0, 8
    saved = [b.detach().clone() for b in module.buffers()]
    with torch.random.fork_rng(devices=[device]):
        while size <= min(limit, 4096):
            try:
                x = torch.randn((size, *sample_shape), device=device, dtype=dtype)
                with autocast():
                    split_outputs(module(x))[0].float().sum().backward()
                best = size
                size *= 2
            except torch.cuda.OutOfMemoryError:
                break
            finally:
                module.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
    with torch.no_grad():
        for buffer, value in zip(module.buffers(), saved):
            buffer.copy_(value)
    if best == 0:
        raise UserError("even a batch of 8 does not fit in GPU memory; use --image-size smaller or --freeze backbone")
    return max(8, best * 3 // 4) if best < min(limit, 4096) else best
