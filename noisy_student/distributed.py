"""The one place that knows about devices and process ranks: the training device, torchrun's
environment, the process group and the few collectives the loop needs. With one process every function is a no-op or the identity.

    torchrun --nproc_per_node=N recipes/NAME.py ...      # N processes, one per GPU (or CPU)

Rank 0 alone writes the run directory and talks to wandb; every rank trains its share of each
global batch (DDP averages the gradients), labels its shard of the unlabeled images, and reads
the same checkpoints on resume (the run directory must be on a file system all ranks see).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from .errors import TrainingError

T = TypeVar("T")


def rank() -> int:
    """This process's global rank: 0 when not launched by torchrun."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0: the process that writes the run directory and talks to wandb."""
    return rank() == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def resolve_device(name: str) -> torch.device:
    """train.device: "auto" (CUDA when there is one), "cpu" or "cuda"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def setup(device: torch.device, timeout_s: float = 600.0) -> torch.device:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU); returns this rank's device.

    A rank that stops answering makes the others fail after `timeout_s` instead of hanging."""
    if world_size() == 1:
        return device
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
        device = torch.device("cuda", local_rank())
    if not active():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_s))
    return device


def teardown() -> None:
    if active():
        _CPU_GROUPS.clear()
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def once(fn: Callable[[], T]) -> T:
    """`fn()` computed on rank 0 alone and broadcast: one decision every rank shares."""
    return broadcast(fn() if not active() or rank() == 0 else None)


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def agree(flags: list[bool]) -> list[bool]:
    """Each flag true on every rank when it is true on any (a stop signal seen by one rank, a
    checkpoint due by rank 0's clock): one small all-reduce, on the CPU (under nccl in a gloo
    group of its own, so that asking, every step, never waits for the GPU's queued work)."""
    if not active():
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_cpu_group())
    return [bool(v) for v in t.tolist()]


_CPU_GROUPS: dict[Any, Any] = {}  # the default group -> its gloo twin (nccl runs)


def _cpu_group() -> Any:
    """A group that reduces CPU tensors: the default one unless it is nccl's, else a gloo group
    over the same ranks, made once (every rank asks at the same step, as `new_group` needs)."""
    default = dist.group.WORLD
    if dist.get_backend() != "nccl":
        return default
    if default not in _CPU_GROUPS:
        _CPU_GROUPS[default] = dist.new_group(backend="gloo")
    return _CPU_GROUPS[default]


def shard(n: int) -> slice:
    """This rank's contiguous share of range(n): no index twice, none left out (no padding)."""
    world, r = (world_size(), rank()) if active() else (1, 0)
    per, extra = divmod(n, world)
    start = r * per + min(r, extra)
    return slice(start, start + per + (r < extra))
