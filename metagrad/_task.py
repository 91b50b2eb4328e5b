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
    """A meta-batch of T tasks: ``Task(train=(x_tr, y_tr), val=(x_val, y_val))``.

    Every tensor in ``train`` and ``val`` carries the task index in dim 0, so
    ``T = x_tr.shape[0]`` tasks are adapted and differentiated together; task i's
    batches are the slices ``[i]`` (:meth:`task`).

    Parameters
    ----------
    train : Any
        The train (support) batches: a tensor or any pytree of tensors (usually
        ``(x, y)``), each with a leading task dimension T. The inner loop adapts on it.
    val : Any
        The val (query) batches, the same way; the post-update loss is taken on it.
    info : dict[str, Any], optional
        Per-task metadata, not used by the methods (e.g. sinusoid amplitudes and phases).
    """

    train: Any
    val: Any
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_tasks(self) -> int:
        """T, the size of the leading task dimension (``len(tasks)`` too)."""
        leaves = _leaves(self.train) + _leaves(self.val)
        if not leaves:
            raise ValueError("Task.train and Task.val hold no tensors")
        return int(leaves[0].shape[0])

    def __len__(self) -> int:
        return self.num_tasks

    def task(self, i: int) -> tuple[Any, Any]:
        """One task's batches.

        Parameters
        ----------
        i : int
            The task's index, ``0 <= i < T``.

        Returns
        -------
        tuple[Any, Any]
            Task ``i``'s ``(train, val)`` batches, without the task dimension.
        """
        pick = lambda x: x[i] if isinstance(x, torch.Tensor) else x  # noqa: E731
        return torch_pytree.tree_map(pick, self.train), torch_pytree.tree_map(pick, self.val)

    def to(self, *args: Any, **kwargs: Any) -> Task:
        """The same tasks moved or cast: ``Tensor.to(*args, **kwargs)`` on every floating
        tensor; integer tensors (labels) move to the device but keep their dtype.

        Parameters
        ----------
        *args, **kwargs
            What ``torch.Tensor.to`` takes: a device, a dtype, or both.

        Returns
        -------
        Task
            A new ``Task`` (``info`` is shared, not copied).
        """

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
