"""``DistributedMethod``: one call on every rank, each rank's tasks computed locally, one
status exchange and one all-reduce of the flattened result (the protocol is described in
the package docstring and the how-to page)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils import _pytree as torch_pytree

from .. import _pytree as pt
from .._hvp import Loss
from .._pytree import Params
from .._task import Task
from ..compiled import CompiledMethod
from ..diagnose import Finding, emit
from ..methods._base import MetaGradient, Method, _check_params
from ._exchange import checksum, checksum_weights, describe, differences, fingerprint

_CPU_BACKENDS = ("gloo", "mpi", "ucc")
"""Backends that reduce CPU tensors; the status exchange runs on the CPU with them."""


@dataclass
class DistributedMetaGradient(MetaGradient):
    """:class:`metagrad.MetaGradient` of a distributed call.

    ``grad``, ``pre_update_loss``, ``post_update_loss``, ``hyper_grad`` and ``findings``
    are global (all tasks of all ranks; findings with global task indices) and identical
    on every rank. ``diagnostics`` holds the per-task tensors of this rank's own tasks only
    (its row i is global task ``task_offset + i``; empty on a rank without tasks):
    gathering them every call would cost a collective that the healthy path does not need.

    Attributes
    ----------
    grad, pre_update_loss, post_update_loss, diagnostics, method, findings, hyper_grad
        As in :class:`metagrad.MetaGradient` (see above for which are global).
    num_tasks : int
        The number of tasks the mean is over, all ranks together.
    task_offset : int
        The global index of this rank's first task (the tasks of the ranks before it).
    local_tasks : int
        This rank's number of tasks.
    """

    num_tasks: int = 0
    task_offset: int = 0
    local_tasks: int = 0


@dataclass
class DistributedMethod:
    """A method (or :func:`metagrad.compile` of one) whose meta-batch is spread over the
    ranks of a ``torch.distributed`` process group; made by :func:`distributed`. Call it as
    the method: ``(loss, params, tasks)``.

    Parameters
    ----------
    method : Method or CompiledMethod
        What each rank computes for its own tasks.
    group : ProcessGroup or None
        The process group (None: the default group).
    timeout : timedelta or None
        Longest wait in each exchange (None: the process group's own timeout).
    """

    method: Method | CompiledMethod
    group: Any = None
    timeout: timedelta | None = None
    _local: Method | CompiledMethod = field(init=False, repr=False)
    _weights: dict[tuple, dict[str, Tensor]] = field(default_factory=dict, init=False,
                                                     repr=False)
    """The checksum's fixed weights, per parameter signature."""

    def __post_init__(self) -> None:
        self._local = _recording(self.method)

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def base(self) -> Method:
        """The method itself (unwrapped from :func:`metagrad.compile`)."""
        return _base(self.method)

    # -- the call ------------------------------------------------------------------------
    def __call__(self, loss: Loss, params: Mapping[str, Tensor],
                 tasks: Task | None = None) -> DistributedMetaGradient:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "mg.distributed needs an initialised process group: start the processes "
                "with torchrun and call torch.distributed.init_process_group('gloo' or "
                "'nccl') first")
        rank, world = dist.get_rank(self.group), dist.get_world_size(self.group)
        if rank < 0:
            raise RuntimeError("this process is not a member of the process group given "
                               "to mg.distributed")

        # Local work. Every exception is caught so that this rank still joins the status
        # exchange: raising here would leave the other ranks waiting in a collective.
        theta: Params | None = None
        local: MetaGradient | None = None
        buffer: Tensor | None = None
        error: Exception | None = None
        digest, description = 0, {}  # type: tuple[int, dict]
        hyper_spec: tuple[list[Tensor], Any] = ([], None)
        hyper_size = 0
        count = found = 0
        try:
            theta = _check_params(params)
            self._check_backend(theta)
            description = self._description(theta, loss)
            digest = fingerprint(description)
            # Sums of T_r task gradients can overflow a half-precision dtype where their mean
            # does not: the exchange adds in at least float32 and rounds the mean back.
            acc = torch.promote_types(next(iter(theta.values())).dtype, torch.float32)
            # The meta-parameters' gradients (learned rates) travel in the same buffer.
            hyper_spec = torch_pytree.tree_flatten(self.base.hyper(next(iter(theta.values()))))
            hyper_size = sum(v.numel() for v in hyper_spec[0])
            if _no_tasks(tasks):
                buffer = next(iter(theta.values())).new_zeros(
                    pt.numel(theta) + hyper_size + 2, dtype=acc)
            else:
                local = self._local(loss, params, tasks)  # type: ignore[arg-type]
                diag = local.diagnostics
                count, found = int(diag["pre_update_loss"].shape[0]), len(local.findings)
                # What this rank adds to the sums: [T_r · mean g, T_r · mean hyper gradients,
                # Σ L_tr(θ), Σ L_val(φ)].
                hyper = torch_pytree.tree_flatten(local.hyper_grad)[0] if hyper_size else []
                buffer = torch.cat([pt.flatten(local.grad).to(acc) * count,
                                    *[h.reshape(-1).to(acc) * count for h in hyper],
                                    diag["pre_update_loss"].to(acc).sum().reshape(1),
                                    diag["post_update_loss"].to(acc).sum().reshape(1)])
        except Exception as err:  # noqa: BLE001  (re-raised below, after the exchange)
            error, count, found = err, 0, 0

        # 1. Status: MAX over [h, −h, failed_r, T_r, findings_r]; slots of other ranks are 0.
        status = torch.zeros(2 + 3 * world, dtype=torch.int64)
        if error is None:
            status[0], status[1] = digest, -digest
        else:  # neutral for MAX: below every valid fingerprint h ≥ 0 and every −h > −2⁶²
            status[0], status[1] = -1, -(1 << 62)
            status[2 + rank] = 1
        status[2 + world + rank] = count
        status[2 + 2 * world + rank] = found
        status = self._all_reduce(status.to(self._status_device()), dist.ReduceOp.MAX,
                                  "the status exchange", rank)
        values = status.tolist()
        failed = [r for r in range(world) if values[2 + r]]
        counts = values[2 + world:2 + 2 * world]
        findings_per_rank = values[2 + 2 * world:]

        if failed:
            messages = self._gather(None if error is None else
                                    f"{type(error).__name__}: {error}")
            if error is not None:
                raise error
            raise RuntimeError("; ".join(f"rank {r} failed: {messages[r]}" for r in failed)
                               + f" (mg.distributed, seen from rank {rank})")
        assert theta is not None and buffer is not None
        if values[0] != -values[1]:
            raise ValueError(differences(self._gather(description)))
        total = sum(counts)
        if total == 0:
            raise ValueError("mg.distributed: no rank has any task (every rank passed "
                             "tasks=None or an empty Task); the mean over tasks is undefined")

        # 2. The gradient: ONE all-reduce of the flat buffer, in the params' dtype and device.
        buffer = self._all_reduce(buffer, dist.ReduceOp.SUM, "the gradient all-reduce", rank)
        mean = (buffer / total).to(next(iter(theta.values())).dtype)
        n = pt.numel(theta)
        hyper_grad = self._hyper_grad(mean[n:n + hyper_size], hyper_spec)
        n += hyper_size

        # 3. Findings, gathered only when some rank has any.
        offsets = [sum(counts[:r]) for r in range(world)]
        findings: list[Finding] = []
        if any(findings_per_rank):
            gathered = self._gather([] if local is None else list(local.findings))
            findings = [f.offset(offsets[r]) for r, part in enumerate(gathered) for f in part]

        result = DistributedMetaGradient(
            grad=pt.unflatten(mean[:n], theta),
            pre_update_loss=mean[n], post_update_loss=mean[n + 1],
            diagnostics={} if local is None else local.diagnostics,
            method=self.name, findings=findings, hyper_grad=hyper_grad,
            num_tasks=total, task_offset=offsets[rank], local_tasks=count)
        _emit(findings, self.base.diagnose)
        return result

    # -- helpers -------------------------------------------------------------------------
    def _backend(self) -> str:
        return str(dist.get_backend(self.group)).lower()

    def _status_device(self) -> torch.device:
        """The CPU where the backend reduces CPU tensors, else the rank's current GPU."""
        if any(name in self._backend() for name in _CPU_BACKENDS):
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())

    def _check_backend(self, theta: Params) -> None:
        device = next(iter(theta.values())).device
        backend = self._backend()
        if device.type == "cpu" and not any(name in backend for name in _CPU_BACKENDS):
            raise ValueError(f"the process group's backend {backend!r} cannot reduce CPU "
                             "tensors: move the parameters and tasks to this rank's GPU, or "
                             "use the 'gloo' backend for CPU processes")

    def _hyper_grad(self, flat: Tensor, spec: tuple[list[Tensor], Any]) -> dict[str, Any]:
        """The mean meta-parameter gradients, in the structure (and the user's dtypes) of the
        method's meta-parameters."""
        leaves, tree = spec
        if not leaves:
            return {}
        parts, start = [], 0
        for leaf in leaves:
            parts.append(flat[start:start + leaf.numel()].reshape(leaf.shape))
            start += leaf.numel()
        return self.base._hyper_grad_as_given(torch_pytree.tree_unflatten(parts, tree))

    def _description(self, theta: Params, loss: Any) -> dict:
        """What must agree across ranks (``_exchange.describe``), the parameter values
        included at every call through a checksum computed where they live."""
        key = tuple((k, tuple(v.shape), str(v.dtype), str(v.device)) for k, v in theta.items())
        if key not in self._weights:
            self._weights[key] = checksum_weights(theta)
        compiled = self.method if isinstance(self.method, CompiledMethod) else None
        return describe(self.base, compiled, theta, loss, checksum(theta, self._weights[key]))

    def _all_reduce(self, tensor: Tensor, op: Any, what: str, rank: int) -> Tensor:
        try:
            work = dist.all_reduce(tensor, op=op, group=self.group, async_op=True)
            done = work.wait() if self.timeout is None else work.wait(self.timeout)
            if done is False:
                raise TimeoutError(f"timed out after {self.timeout}")
        except Exception as err:
            limit = ("the process group's timeout" if self.timeout is None
                     else f"timeout={self.timeout}")
            raise RuntimeError(
                f"mg.distributed: {what} did not complete on rank {rank}: another rank "
                f"crashed, was killed, or did not reach it within {limit} "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                "The process group is not usable after this.") from err
        return tensor

    def _gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(out, obj, group=self.group)
        return out


def distributed(method: Method | CompiledMethod, group: Any = None, *,
                timeout: timedelta | float | None = None) -> DistributedMethod:
    """Spread ``method``'s meta-batch over the ranks of a ``torch.distributed`` group.

    ``method`` is any metagrad method (every option) or ``mg.compile(method)`` (the local
    computation is compiled; the exchange stays outside the graph). ``group`` is the
    process group (``None``: the default one). ``timeout`` (a ``timedelta`` or seconds)
    bounds each wait for the other ranks; ``None`` uses the process group's timeout. It
    must cover the slowest rank's local computation, a first compiled call included.

    The call ``(loss, params, tasks)`` returns on every rank the mean over the tasks of all
    ranks: the sum of every rank's task meta-gradients over the total number of tasks (see
    the package docstring for the protocol, errors and findings). ``tasks`` is this rank's
    shard, or ``None`` for none.

    Parameters
    ----------
    method : Method or CompiledMethod
        The method whose meta-gradient each rank computes for its own tasks.
    group : ProcessGroup or None
        The ``torch.distributed`` process group (None: the default group).
    timeout : timedelta, float or None
        Longest wait for the other ranks in each exchange, in seconds or as a timedelta
        (None: the process group's own timeout).

    Returns
    -------
    DistributedMethod
        Called as ``(loss, params, tasks)``; returns a :class:`DistributedMetaGradient`.
    """
    if isinstance(method, DistributedMethod):
        raise TypeError("the method is already distributed")
    if not isinstance(method, (Method, CompiledMethod)):
        raise TypeError("distributed() takes a metagrad method or mg.compile(method), got "
                        f"{type(method).__name__}")
    if timeout is not None and not isinstance(timeout, timedelta):
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a timedelta or seconds, got {timeout!r}")
        timeout = timedelta(seconds=timeout)
    if timeout is not None and not (0 < timeout.total_seconds() < math.inf):
        raise ValueError(f"timeout must be positive, got {timeout}")
    return DistributedMethod(method, group, timeout)


def _base(method: Method | CompiledMethod) -> Method:
    return method.method if isinstance(method, CompiledMethod) else method


def _recording(method: Method | CompiledMethod) -> Method | CompiledMethod:
    """The same method with ``diagnose="record"`` where it would warn or raise. A compiled
    wrapper is copied shallowly, so the copy shares its caches of compiled programs (the
    programs do not depend on warn vs record: both run the checks)."""
    if isinstance(method, CompiledMethod):
        recording = copy.copy(method)
        recording.method = _recording_method(method.method)
        return recording
    return _recording_method(method)


def _recording_method(method: Method) -> Method:
    return replace(method, diagnose="record") if method.diagnose in ("warn", "error") else method


def _emit(findings: list[Finding], mode: str) -> None:
    # One frame more than the call itself, as in Method.finish: ``emit``'s warnings then
    # point at the line of the caller that made the distributed call.
    emit(findings, mode)


def _no_tasks(tasks: Any) -> bool:
    """``None`` or a Task with a leading dimension of 0: this rank contributes nothing."""
    if tasks is None:
        return True
    return isinstance(tasks, Task) and tasks.num_tasks == 0


