"""Training across processes and machines: torch's DistributedDataParallel under ``torchrun``.

``torchrun`` starts one process per device (``--nproc-per-node``) on each node and tells each
its ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in the environment; :func:`init_from_env` joins
them into one process group (gloo on CPU, NCCL for CUDA tensors). Every process draws the same
seeded epoch and takes its share of every batch (the samplers' ``rank`` and ``world_size``), so
the optimiser sees the batches of a one-process run; the gradients are averaged by DDP, the
losses summed here. Rank 0 writes every file.
"""

from __future__ import annotations

import os
import typing as ty

import torch
import torch.distributed as dist


class Workers(ty.NamedTuple):
    """This process's place in the process group (rank 0 of 1 without ``torchrun``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes the outputs."""
        return self.rank == 0


def launched() -> bool:
    """Whether ``torchrun`` started this process as one of several."""
    return int(os.environ.get('WORLD_SIZE', '1')) > 1


def init_from_env(device: str) -> str:
    """Join the process group that ``torchrun`` set up; the device of this process.

    ``--device auto`` or ``cuda`` become ``cuda:LOCAL_RANK`` when CUDA is there (one GPU per
    process, NCCL between them); CPU tensors go through gloo.
    """
    if dist.is_initialized():
        return device
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    cuda = torch.cuda.is_available() and device in ('auto', 'cuda')
    if cuda:
        torch.cuda.set_device(local_rank)
        device = f'cuda:{local_rank}'
    elif device == 'auto':
        device = 'cpu'
    dist.init_process_group(backend='cpu:gloo,cuda:nccl' if cuda else 'gloo')
    return device


def workers() -> Workers:
    """Rank and size of the process group, or a single process."""
    if not dist.is_initialized():
        return Workers()
    return Workers(dist.get_rank(), dist.get_world_size(), int(os.environ.get('LOCAL_RANK', 0)))


def barrier() -> None:
    """Wait for every process (nothing without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the processes (itself without a process group)."""
    if dist.is_initialized():
        dist.all_reduce(value)
    return value


def shutdown(wait: bool = True) -> None:
    """Leave the process group, by default once every process is done.

    The barrier keeps a rank that finished early from tearing down its gloo connections while
    rank 0 still writes: a peer closing under a live connection aborts the other process
    ("terminate called without an active exception"). A failed rank leaves without waiting
    (``wait=False``), so the others fail at their next collective instead of hanging here.
    """
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
