"""DistributedDataParallel around the trainable part, set up so that a torchrun run repeats a
single-process one (see ``transferkit.core.distributed`` for the process group itself)."""
from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from transferkit.core.distributed import active
from transferkit.models.outputs import split_outputs


def ddp(module, device, sample, set_train):
    """``module`` in DistributedDataParallel (only its trainable parameters are synchronised).

    ``find_unused_parameters`` costs an extra graph walk every step, so it is switched on only
    when a trial forward on ``sample`` (train mode) leaves some trainable parameter without a
    gradient, e.g. a user's layer that forward never calls: without it DDP would wait forever
    for that gradient.
    """
    if not active():
        return module
    if sample.dim() == 4 and sample.is_contiguous(memory_format=torch.channels_last):
        # DDP's gradient buckets take each parameter's layout: with channels_last inputs the
        # convolutions' gradients come out channels_last, so give the weights that layout too.
        module.to(memory_format=torch.channels_last)
    unused = _has_unused_parameters(module, device, sample, set_train)
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=unused, gradient_as_bucket_view=True)


def _has_unused_parameters(module, device, sample, set_train) -> bool:
    params = [p for p in module.parameters() if p.requires_grad]
    buffers = [b.detach().clone() for b in module.buffers()]
    was_training = module.training
    # Forked RNG and restored buffers: the trial must not move dropout's random stream or
    # BatchNorm's running statistics, or the run would no longer repeat a single-process one.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        set_train()
        logits, aux = split_outputs(module(sample))
        total = logits.float().sum() + sum(a.float().sum() for a in aux)
        grads = torch.autograd.grad(total, params, allow_unused=True)
    with torch.no_grad():
        for saved, buffer in zip(buffers, module.buffers()):
            buffer.copy_(saved)
    module.train(was_training)
    return any(g is None for g in grads)
