r"""torch.distributed helpers for a retrieval run launched by ``torchrun``.

A run on W processes (ranks) splits the work by batch number: rank ``r``
embeds the gallery batches and explains the query batches whose number is
``r`` modulo W, so each batch holds the same images as in a one-process run
and gives the same numbers. The gallery embeddings are then gathered on
every rank. Without ``torch.distributed`` initialised everything here is the
identity of a one-process run.

Backends: gloo on CPU, NCCL on GPUs (each rank on ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the number of ranks, the device
    collectives run on (CUDA for NCCL, CPU for gloo)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def mine(self, count: int) -> List[int]:
        """The batch numbers below ``count`` this rank works on."""
        return list(range(self.rank, count, self.world_size))


def launched_by_torchrun() -> bool:
    """True when ``torchrun`` started this process with several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend: Optional[str] = None) -> Context:
    r"""Join the process group that ``torchrun`` describes in the environment.

    Args:

        backend (str, optional): "gloo" or "nccl".
                    Default: "nccl" when CUDA is available, else "gloo"

    Returns:
        *Context*: this process's rank, the world size and the device
        collectives use (``cuda:LOCAL_RANK`` with NCCL, which also becomes the
        current CUDA device). A process not launched by ``torchrun`` gets the
        one-process context and no process group.
    """
    if dist.is_available() and dist.is_initialized():
        return current_context()
    if not launched_by_torchrun():
        return Context()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return current_context()


def current_context() -> Context:
    """The context of the initialised process group (one process if none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    return Context(dist.get_rank(), dist.get_world_size(), device)


def barrier(context: Context) -> None:
    if context.active:
        dist.barrier()


def broadcast_flag(context: Context, value: bool) -> bool:
    """Rank 0's ``value`` on every rank."""
    if not context.active:
        return value
    flag = torch.tensor([int(value)], device=context.device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def all_max(context: Context, value: int) -> int:
    """The largest ``value`` over the ranks."""
    if not context.active:
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def broadcast_tensor(
    context: Context, tensor: Optional[Tensor], shape, dtype
) -> Tensor:
    """Rank 0's ``tensor`` (of known ``shape`` and ``dtype``) on every rank, on
    the CPU."""
    if not context.active:
        assert tensor is not None
        return tensor
    if context.is_main:
        assert tensor is not None
        buffer = tensor.to(context.device, dtype).contiguous()
    else:
        buffer = torch.empty(shape, dtype=dtype, device=context.device)
    dist.broadcast(buffer, src=0)
    return buffer.cpu()


def assemble_rows(
    context: Context,
    mine: Optional[Tensor],
    sizes: List[int],
    width: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""Reassemble row blocks computed round-robin over the ranks.

    Block ``b`` (``sizes[b]`` rows of ``width`` columns) was computed by rank
    ``b % world_size``; ``mine`` holds this rank's blocks packed in order
    ((rows, width), None when it has none). Returns every block in block
    order, (sum(sizes), width), on every rank: ``mine`` itself in one process,
    else a table on ``context.device`` filled by one broadcast per rank.
    Peak memory is the table plus this rank's share and one other rank's
    share (never a second copy of the table).
    """
    if not context.active:
        if mine is None:
            return torch.empty(0, width, dtype=dtype)
        return mine.to(dtype)
    world, device = context.world_size, context.device
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + size)
    table = torch.empty(starts[-1], width, dtype=dtype, device=device)
    for rank in range(world):
        blocks = range(rank, len(sizes), world)
        rows = [i for b in blocks for i in range(starts[b], starts[b + 1])]
        if not rows:
            continue
        if rank == context.rank:
            assert mine is not None and mine.shape == (len(rows), width)
            buffer = mine.to(device, dtype).contiguous()
        else:
            buffer = torch.empty(len(rows), width, dtype=dtype, device=device)
        dist.broadcast(buffer, src=rank)
        table.index_copy_(0, torch.tensor(rows, device=device), buffer)
        del buffer
    return table
