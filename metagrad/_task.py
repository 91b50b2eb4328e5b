"""A meta-batch of tasks: train (support) and val (query) batches with a leading task dim."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as torch_pytree


def _leaves(batch: Any) -> list[torch.Tensor]:
    return [x for x in torch_pytree.tree_leaves(batch) if isinstance(x, torch.Tensor)]


@dataclass(frozen=True)
class Task:
    """``Task(train=(x_tr, y_tr), val=(x_val, y_val))``.

    Every tensor in ``train`` and ``val`` carries the task index in dim 0, so
    ``T = x_tr.shape[0]`` tasks are adapted and differentiated together.
    ``info`` holds optional per-task metadata (e.g. sinusoid amplitudes).
    """

    train: Any
    val: Any
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_tasks(self) -> int:
        leaves = _leaves(self.train) + _leaves(self.val)
        if not leaves:
            raise ValueError("Task.train and Task.val hold no tensors")
        return int(leaves[0].shape[0])

    def __len__(self) -> int:
        return self.num_tasks

    def task(self, i: int) -> tuple[Any, Any]:
        """The ``i``-th task's ``(train, val)`` batches, without the task dim."""
        pick = lambda x: x[i] if isinstance(x, torch.Tensor) else x  # noqa: E731
        return torch_pytree.tree_map(pick, self.train), torch_pytree.tree_map(pick, self.val)

    def to(self, *args: Any, **kwargs: Any) -> Task:
        """``Tensor.to`` on every floating tensor (labels keep their integer dtype)."""

        def move(x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            if x.is_floating_point():
                return x.to(*args, **kwargs)
            positional = (a for a in args if not isinstance(a, torch.dtype))
            device = kwargs.get("device", next(positional, None))
            return x.to(device=device) if device is not None else x

        return Task(torch_pytree.tree_map(move, self.train), torch_pytree.tree_map(move, self.val),
                    self.info)
