"""Contiguous shards of a meta-batch, one per rank."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import Tensor
from torch.utils import _pytree as torch_pytree

from .._task import Task


def shard_tasks(tasks: Task, rank: int | None = None, world_size: int | None = None, *,
                group: Any = None) -> Task:
    """Rank ``rank``'s contiguous share of a meta-batch of T tasks among ``world_size``
    ranks (default: this process in ``group``): tasks [lo, hi) with the first T mod R
    ranks holding ⌈T/R⌉ tasks and the others ⌊T/R⌋ (possibly 0). With these shards the
    global task indices of :func:`distributed` are the indices in ``tasks``.

    Per-task tensors in ``tasks.info`` (leading dimension T) are sliced too.

    Parameters
    ----------
    tasks : Task
        The whole meta-batch.
    rank : int or None
        This rank's index (None: the process's rank in ``group``).
    world_size : int or None
        The number of ranks (None: the size of ``group``).
    group : ProcessGroup or None
        The process group that ``rank`` and ``world_size`` default to.

    Returns
    -------
    Task
        The rank's contiguous share (possibly empty).
    """
    if not isinstance(tasks, Task):
        raise TypeError(f"tasks must be a metagrad.Task, got {type(tasks).__name__}")
    if rank is None:
        rank = dist.get_rank(group)
    if world_size is None:
        world_size = dist.get_world_size(group)
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
    total = tasks.num_tasks
    size, extra = divmod(total, world_size)
    lo = rank * size + min(rank, extra)
    hi = lo + size + (1 if rank < extra else 0)

    def cut(x: Any) -> Any:
        return x[lo:hi] if isinstance(x, Tensor) else x

    info = {k: v[lo:hi] if isinstance(v, Tensor) and v.dim() and v.shape[0] == total else v
            for k, v in tasks.info.items()}
    return Task(torch_pytree.tree_map(cut, tasks.train), torch_pytree.tree_map(cut, tasks.val),
                info)
