"""What the processes of a torch.distributed job exchange outside training: numpy arrays gathered
or summed, Python objects gathered, errors agreed on, and work split into equal shares.

Everything here is a no-op in a single process (no process group, or a group of one), so callers
are written once for both. Under torchrun the trainers' ``make_accelerator`` (or any
``torch.distributed.init_process_group``) joins the group first; tensors travel on the GPU when
the group is NCCL's, on the CPU otherwise (gloo).

Every function is collective: all processes call it, in the same order, or the job waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from rag.common.errors import UserError


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather(array: np.ndarray) -> list[np.ndarray]:
    """Every process's ``array``, in rank order. First dimensions may differ between processes;
    the other dimensions and the dtype must not."""
    _, size = world()
    if size == 1:
        return [array]
    device = _device()
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    length = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=device)
    lengths = [torch.empty_like(length) for _ in range(size)]
    dist.all_gather(lengths, length)
    longest = max(int(n) for n in lengths)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: tensor.shape[0]] = tensor.to(device)
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return [p[: int(n)].cpu().numpy() for p, n in zip(parts, lengths, strict=True)]


def all_sum(array: np.ndarray) -> np.ndarray:
    """The element-wise sum of every process's ``array`` (same shape and dtype everywhere)."""
    _, size = world()
    if size == 1:
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(_device())
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def all_objects(obj) -> list:
    """Every process's ``obj`` (picklable, sent between the job's own processes only)."""
    _, size = world()
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out


def agree(error: str | None) -> None:
    """Raise :class:`UserError` on every process when any process met one (``error`` its line),
    so that no process goes on to wait in a collective for one that has stopped."""
    _, size = world()
    for rank, message in enumerate(all_objects(error)):
        if message:
            raise UserError(message if size == 1 else f"rank {rank}: {message}")


def settle(seconds: float = 10.0) -> None:
    """Before a process of a job exits on an error: wait, at most ``seconds``, for the others to
    reach here too. torchrun stops every process once one exits, which would cut the others off
    before they print their own line. (gloo only: NCCL has no barrier with a timeout.)"""
    _, size = world()
    if size == 1 or dist.get_backend() != "gloo":
        return
    try:
        dist.monitored_barrier(timeout=timedelta(seconds=seconds))
    except RuntimeError:  # a process that does not come: nothing more to wait for
        pass


def share(n: int) -> list[int]:
    """This process's positions of ``n`` items: every ``size``-th from its rank, padded by cycling
    through the items so that every process gets as many (as many batches, as many collective
    searches). :func:`gather_shares` puts the results back in order."""
    rank, size = world()
    order = [i % n for i in range(n + (-n) % size)] if n else []  # cycled: n may be < size
    return order[rank::size]


def gather_shares(items: Sequence, n: int) -> list:
    """The inverse of :func:`share`: every process's results (one per position it was given),
    back in the order of the ``n`` items, padding dropped; the same list on every process."""
    _, size = world()
    if size == 1:
        return list(items)[:n]
    parts = all_objects(list(items))
    out = [parts[i % size][i // size] for i in range(n)]
    return out
