"""Opt-in compiled meta-gradients: ``torch.compile`` of the whole batched computation.

``mg.compile(method)`` returns a callable with the method's signature. The
batched function (inner loop, backward, solver, mean over tasks) is traced as
one graph per input signature (shapes, dtypes, device, loss function) and
cached; on CUDA the default mode is ``"reduce-overhead"`` (CUDA graphs). The
one-off cost of tracing and code generation is reported separately in
``compile_seconds``; steady-state calls pay only the run time. The result is
the eager meta-gradient up to float rounding (kernels are fused and reordered).

Validation and numerical diagnostics stay outside the graph, in eager mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as torch_pytree

from ._hvp import Loss
from ._task import Task
from .methods._base import MetaGradient, Method

VERIFIED_TORCH = ("2.8", "2.10", "2.13", "2.14")
"""torch releases on which the compiled path was run against the eager one (tox matrix)."""


def _signature(loss: Loss, params: dict, tasks: Task) -> tuple:
    leaves = list(params.items()) + list(enumerate(torch_pytree.tree_leaves((tasks.train,
                                                                            tasks.val))))
    return (id(loss),) + tuple(
        (k, tuple(v.shape), v.dtype, str(v.device)) if isinstance(v, torch.Tensor) else (k, v)
        for k, v in leaves
    )


@dataclass
class CompiledMethod:
    method: Method
    backend: str = "inductor"
    mode: str | None = None
    compile_seconds: dict[tuple, float] = field(default_factory=dict)
    """Wall time of the first call per input signature (tracing + codegen + one run)."""
    _cache: dict[tuple, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.method.name

    def __call__(self, loss: Loss, params: dict, tasks: Task) -> MetaGradient:
        theta = self.method.prepare(loss, params, tasks)
        key = _signature(loss, theta, tasks)
        first = key not in self._cache
        mode = self.mode
        if mode is None and next(iter(theta.values())).is_cuda and self.backend == "inductor":
            mode = "reduce-overhead"  # CUDA graphs: launch overhead dominates small tasks
        if first:
            self._cache[key] = torch.compile(self.method.batched(loss), backend=self.backend,
                                             mode=mode, dynamic=False, fullgraph=True)
        start = time.perf_counter()
        try:
            grad, diag = self._cache[key](theta, tasks.train, tasks.val)
        except Exception as err:
            if not first:
                raise
            del self._cache[key]
            # Older dynamo cannot trace torch.func transforms as one graph; say so plainly.
            raise RuntimeError(
                f"torch.compile could not trace {self.method.name}'s batched meta-gradient on "
                f"torch {torch.__version__} ({type(err).__name__}: {str(err).splitlines()[0]}). "
                f"The eager method gives the same numbers; mg.compile is verified on torch "
                f"{', '.join(VERIFIED_TORCH)}."
            ) from err
        if first:
            if next(iter(theta.values())).device.type == "cuda":
                torch.cuda.synchronize()
            self.compile_seconds[key] = time.perf_counter() - start
        if mode == "reduce-overhead":
            # CUDA-graph outputs live in a buffer the next replay overwrites.
            grad = {k: v.clone() for k, v in grad.items()}
            diag = {k: v.clone() for k, v in diag.items()}
        return self.method.finish(loss, theta, tasks, grad, diag)


def compile(  # noqa: A001  (mirrors torch.compile)
    method: Method, *, backend: str = "inductor", mode: str | None = None
) -> CompiledMethod:
    """Compile ``method``'s batched meta-gradient; see the module docstring."""
    if not isinstance(method, Method):
        raise TypeError(f"compile() takes a metagrad method, got {type(method).__name__}")
    if method.batching != "vmap":
        raise ValueError("compile() needs batching='vmap' (the loop fallback is not traced)")
    return CompiledMethod(method, backend, mode)
