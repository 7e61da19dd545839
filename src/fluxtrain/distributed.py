"""Multi-process helpers over ``torch.distributed`` (launch with ``torchrun``).

Everything here also works in a single process without ``torch.distributed`` initialised:
then there is one rank, rank 0, and reductions return their input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_reduce_mean", "is_distributed", "is_main_process", "rank", "world_size"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, the process that writes checkpoints and logs."""
    return rank() == 0


def all_reduce_mean(value: float | torch.Tensor) -> float | torch.Tensor:
    """The mean of ``value`` over all ranks (``value`` itself in a single process).

    Example:
        >>> all_reduce_mean(3.0)
        3.0
    """
    if not is_distributed():
        return value
    is_float = not isinstance(value, torch.Tensor)
    t = torch.as_tensor(value, dtype=torch.float64).clone()
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t = (t / dist.get_world_size()).cpu()
    return float(t) if is_float else t
