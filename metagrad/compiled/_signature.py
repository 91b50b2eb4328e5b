"""What a compiled graph depends on: the *signature* of a call, the compiled method's
cache key.

A signature is the parameters' names, shapes, dtype and device, the task pytree's
structure and its tensors' shapes, dtypes and devices, and the loss's code (its code
object, for a Python function; its type otherwise). Everything else the loss reads (the
module it wraps, tensors and numbers it closes over) is left to ``torch.compile``'s
guards, so a new but identical ``lambda`` per call, or ``mg.module_loss`` of another
model of the same architecture, reuses the compiled graph.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.utils import _pytree as torch_pytree

from .._task import Task


def _loss_key(loss: Any) -> tuple:
    """What of the loss a compiled graph is keyed on: its code; the rest is guarded."""
    if isinstance(loss, types.FunctionType):
        return ("function", loss.__code__)
    if isinstance(loss, types.MethodType):
        return ("method", _loss_key(loss.__func__), type(loss.__self__))
    if isinstance(loss, functools.partial):
        return ("partial", _loss_key(loss.func))
    return ("object", type(loss))


def _leaf_key(leaf: Any) -> Any:
    if isinstance(leaf, Tensor):
        return (leaf.shape, leaf.dtype, leaf.device)
    try:
        hash(leaf)
    except TypeError:
        return ("unhashable", id(leaf))
    return ("value", type(leaf), leaf)


def signature(loss: Any, params: Any, tasks: Any) -> tuple | None:
    """The cache key of a call (see the module docstring), or None when the inputs are not
    even shaped like a call (then the eager validation says what is wrong)."""
    if not isinstance(params, Mapping) or not params or not isinstance(tasks, Task):
        return None
    param_keys = []
    for name, value in params.items():
        if not isinstance(value, Tensor):
            return None
        param_keys.append((name, value.shape, value.dtype, value.device))
    train, val = tasks.train, tasks.val
    if (type(train) is tuple and type(val) is tuple  # the common (x, y) batches, quickly
            and all(type(x) is Tensor for x in train) and all(type(x) is Tensor for x in val)):
        structure: Any = (len(train), len(val))
        leaves: Any = (*train, *val)
    else:
        leaves, structure = torch_pytree.tree_flatten((train, val))
    return (_loss_key(loss), tuple(param_keys), structure, tuple(_leaf_key(x) for x in leaves))
