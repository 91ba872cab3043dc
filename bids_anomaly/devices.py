"""Where the numbers are computed: the torch device and the thread counts, resolved once.

Every stage (training, scoring, normative fits, preprocessing) asks here, so that ``--device``,
``--nprocs`` and ``--omp-nthreads`` mean the same thing everywhere.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bids_anomaly.errors import UsageError

if TYPE_CHECKING:
    import torch

    from bids_anomaly.config import ExecutionConfig


def resolve_device(device: str | torch.device = 'auto') -> torch.device:
    """``'auto'`` is the first CUDA device when there is one, else the CPU.

    Raises ``ValueError`` for a CUDA device that is not visible.
    """
    import torch

    if str(device) == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    resolved = torch.device(device)
    if resolved.type == 'cuda':
        index = resolved.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            message = f'Device {device!r} requested but no such CUDA device is available.'
            raise ValueError(message)
    return resolved


def check_device(device: str) -> None:
    """A CUDA device that is not there is a usage error, found before any work starts."""
    if not device.startswith('cuda'):
        return
    try:
        resolve_device(device)
    except (ValueError, RuntimeError):
        raise UsageError(
            f'--device {device}: no such CUDA device is visible (in a container, '
            'run it with --gpus all / --nv); use --device auto or cpu'
        ) from None


def resolve_threads(nprocs: int, omp_nthreads: int) -> tuple[int, int]:
    """``(processes, threads per process)``: 0 means every core (its share of them when
    ``torchrun`` starts several processes on this node), and at most 8 threads (beyond that
    ITK and torch gain little), never more threads than processes."""
    local_processes = int(os.environ.get('LOCAL_WORLD_SIZE', '1'))
    nprocs = nprocs or max(1, (os.cpu_count() or 1) // local_processes)
    return nprocs, min(omp_nthreads or 8, nprocs)


def set_threads(execution: ExecutionConfig) -> None:
    """Resolve the thread settings in place and cap the numeric libraries accordingly."""
    execution.nprocs, execution.omp_nthreads = resolve_threads(
        execution.nprocs, execution.omp_nthreads
    )
    for variable in ('OMP_NUM_THREADS', 'ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS'):
        os.environ.setdefault(variable, str(execution.omp_nthreads))
    import torch

    torch.set_num_threads(execution.omp_nthreads)
