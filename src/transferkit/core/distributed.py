"""Several processes, one training run: the torchrun (PyTorch DDP) plumbing in one place.

``torchrun --nproc_per_node=N -m transferkit train ...`` starts N copies of the program and
tells each its place through the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT).
Every helper here is a no-op in a plain single process, so the trainer calls them
unconditionally and reads the same either way. Rank 0 ("main") is the only process that writes
files or prints; the others compute, and print only errors.

Collectives work on whatever backend the process group has: NCCL when the processes train on
GPUs (one per process, ``cuda:LOCAL_RANK``), gloo on the CPU.
"""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager

import torch
import torch.distributed as torch_dist

from transferkit.core.devices import pick_device
from transferkit.core.errors import UserError

# comm: the device collectives run on (cuda with NCCL); groups: process groups joined so far
_state = {"started_here": False, "comm": None, "groups": 0}


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def launched() -> bool:
    """Started by torchrun (or another launcher that sets the same variables)."""
    return all(name in os.environ for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))


def world() -> int:
    return _env_int("WORLD_SIZE", 1) if launched() else 1


def rank() -> int:
    return _env_int("RANK", 0) if launched() else 0


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if launched() else 0


def is_main() -> bool:
    return rank() == 0


def restart_count() -> int:
    """How often torchrun (``--max-restarts``) has started this worker group again after a failure."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0) if launched() else 0


def active() -> bool:
    if not launched():
        return False
    return torch_dist.is_available() and torch_dist.is_initialized()


def setup(device_spec: str):
    """This process's device; under torchrun also join the process group (once per process)."""
    device = pick_device(device_spec)
    if not launched():
        return device
    if device.type == "cuda":
        if device_spec not in ("auto", "cuda"):
            raise UserError(f"--device {device_spec}: under torchrun each process uses cuda:LOCAL_RANK; "
                            "use --device auto or cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
        if local_rank() >= torch.cuda.device_count():
            raise UserError(f"torchrun started process {local_rank()} of this node, which has only "
                            f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node={torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        # torchrun's store outlives a process group, and a failed attempt's workers: under a key
        # prefix per attempt and per group, no process reads the address a dead or departed one
        # left there (we saw gloo connect to a killed rank's port, fail, and give up).
        _state["groups"] += 1
        store, _, _ = next(torch_dist.rendezvous("env://"))
        store = torch_dist.PrefixStore(f"transferkit/attempt_{restart_count()}/group_{_state['groups']}", store)
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank(),
                                world_size=world(), device_id=device if device.type == "cuda" else None)
        _state["started_here"] = True
    _state["comm"] = device if torch_dist.get_backend() == "nccl" else torch.device("cpu")
    return device


def backend() -> str | None:
    if not active():
        return None

    return torch_dist.get_backend()


def _comm():
    return _state["comm"] or torch.device("cpu")


def cleanup() -> None:
    """Leave the process group, if ``setup`` joined it (a caller's own group is left alone)."""
    if _state["started_here"] and active():
        # A DDP wrapper caught in a reference cycle would otherwise outlive the group and be torn
        # down at interpreter exit, where gloo aborts ("terminate called without an active exception").
        gc.collect()
        torch_dist.destroy_process_group()
    _state["started_here"], _state["comm"] = False, None


@contextmanager
def scope():
    """``with scope(): ...``: whatever ``setup`` joins inside is left on the way out, errors included."""
    finished = False
    try:
        yield
        finished = True
    finally:
        if finished:
            # Leave together: a process that tears gloo down while a peer is still writing the run
            # directory was seen to abort ("terminate called without an active exception"). Not on
            # errors, where the peers may be inside another collective.
            barrier()
        cleanup()


def barrier() -> None:
    if active():
        torch_dist.barrier(device_ids=[_comm().index] if _comm().type == "cuda" else None)


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Element-wise sum (or min, max) of every process's ``values``; float64, so counts stay exact."""
    if not active():
        return [float(v) for v in values]

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm())
    torch_dist.all_reduce(tensor, op={"sum": torch_dist.ReduceOp.SUM, "min": torch_dist.ReduceOp.MIN, "max": torch_dist.ReduceOp.MAX}[op])
    return tensor.tolist()


def all_true(flag: bool) -> bool:
    return all_reduce([1.0 if flag else 0.0], "min")[0] > 0


def any_true(flag: bool) -> bool:
    return all_reduce([1.0 if flag else 0.0], "max")[0] > 0


def broadcast_object(obj):
    """Rank 0's ``obj`` (picklable) on every process."""
    if not active():
        return obj

    box = [obj]
    torch_dist.broadcast_object_list(box, src=0, device=_comm())
    return box[0]


def all_gather_objects(obj) -> list:
    """Every process's ``obj``, in rank order, on every process."""
    if not active():
        return [obj]

    out = [None] * world()
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_module(module, buffers_only: bool = False) -> None:
    """Overwrite parameters and buffers with rank 0's, in place: weights only rank 0 could read
    from a file, or BatchNorm statistics, which each DDP process updates from its own share
    of the batch."""
    if not active():
        return

    tensors = list(module.buffers()) + ([] if buffers_only else list(module.parameters()))
    for tensor in tensors:
        shared = tensor.data.to(_comm()).contiguous()  # channels_last weights are not "contiguous"
        torch_dist.broadcast(shared, src=0)
        if shared.data_ptr() != tensor.data.data_ptr():
            tensor.data.copy_(shared)


def gather_rows(rows, index, n: int):
    """Put each process's ``rows`` (row i is item ``index[i]`` of an ``n``-item split) back together
    in split order, on every process. Processes may hold different numbers of rows (even none)."""

    if not active():
        out = torch.empty((n, *rows.shape[1:]), dtype=rows.dtype)
        out[index] = rows
        return out

    meta = all_gather_objects((len(index), tuple(rows.shape[1:]), rows.dtype))
    counts = [m[0] for m in meta]
    if sum(counts) != n:
        raise RuntimeError(f"gathered {sum(counts)} rows for a split of {n}")
    trailing, dtype = next(((m[1], m[2]) for m in meta if m[0]), (tuple(rows.shape[1:]), rows.dtype))
    most = max(counts)
    # gloo and NCCL gather equal shapes only: pad every share to the largest.
    padded = torch.zeros((most, *trailing), dtype=dtype, device=_comm())
    padded_index = torch.zeros(most, dtype=torch.long, device=_comm())
    if len(index):
        padded[:len(index)] = rows.to(_comm())
        padded_index[:len(index)] = index.to(_comm())
    parts = [torch.empty_like(padded) for _ in counts]
    positions = [torch.empty_like(padded_index) for _ in counts]
    torch_dist.all_gather(parts, padded)
    torch_dist.all_gather(positions, padded_index)
    out = torch.empty((n, *trailing), dtype=dtype)
    for count, part, where in zip(counts, parts, positions):
        out[where[:count].cpu()] = part[:count].cpu()
    return out
