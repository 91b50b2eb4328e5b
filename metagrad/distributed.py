"""Meta-batches across processes: each rank computes its own tasks' meta-gradients in
full, then one all-reduce of the flattened result combines them.

    import torch.distributed as dist
    dist.init_process_group("gloo")            # or "nccl"; processes started by torchrun
    method = mg.distributed(mg.MAML(steps=5, inner_lr=0.01))
    out = method(loss, params, local_tasks)     # each rank: its own shard of the meta-batch
    out.grad                                    # every rank: the mean over all tasks of all ranks

With R ranks, rank r holding T_r tasks whose meta-gradients are g_{r,1} … g_{r,T_r}
(any of the six methods, computed entirely on the rank: inner loops, second-order
terms and linear solves never leave it), the result on every rank is the global mean

    g = (Σ_r Σ_{i ≤ T_r} g_{r,i}) / (Σ_r T_r),

the same number one process would compute on the concatenated meta-batch (up to float
rounding), and ``pre_update_loss`` / ``post_update_loss`` are global means in the same
way. Shards may be uneven, and a rank may hold no task at all (``tasks=None`` or a Task
with a leading dimension of 0): it contributes nothing to the sums and still receives
the result. :func:`shard_tasks` splits one meta-batch into such contiguous shards.

Why not ``torch.nn.parallel.DistributedDataParallel``: DDP averages gradients with
hooks that fire as the parameters' ``.grad`` is accumulated in a backward pass, and does
not support ``torch.autograd.grad`` or a gradient taken through gradients (double
backward), which is exactly what second-order MAML and the Hessian-vector products of
the implicit methods are. Here no autograd graph crosses processes: each rank finishes
its meta-gradient first, and only values are reduced.

What one call exchanges (all ranks of the group must call in the same order):

1. a status all-reduce (MAX over a small int64 vector): a fingerprint of the method's
   settings and of the parameters' names, shapes and dtypes (and, at the first call per
   parameter signature, of their values), whether the rank's local computation failed,
   its number of tasks T_r and its number of numerical findings;
2. the gradient all-reduce (SUM over one flat buffer in the parameters' dtype, on their
   device): T_r · mean_i g_{r,i}, Σ_i L_tr(θ) and Σ_i L_val(φ) of the rank's tasks;
3. only when something is wrong: ``all_gather_object`` of the failure messages, of the
   settings that differ, or of the findings.

The loss function is code and cannot be compared: every rank must pass the same one.
``out.diagnostics`` holds this rank's own tasks only (see :class:`DistributedMetaGradient`).
With ``mg.compile(method)`` each rank compiles its local computation for its own shard's
shapes (uneven shards: one compilation per distinct shard size); the exchange runs
eagerly, outside the graph.

Errors are collective, never a hang: a local exception (bad input, a loss that raises,
out of memory) is caught, reported in the status exchange, re-raised on its rank and
turned into ``RuntimeError: rank r failed: ...`` on the others; different settings or
parameters across ranks are a ``ValueError`` on every rank naming what differs. The
local call runs with ``diagnose="record"``, and the findings of all ranks, renumbered
to global task indices (task i of rank r is task offset_r + i, offset_r = Σ_{q<r} T_q),
are acted on afterwards with the method's own ``diagnose`` mode on every rank: all
ranks warn, or all raise :class:`metagrad.NumericalError`.

A rank that dies without raising (killed, segfault, lost node) cannot report itself.
Gloo notices the closed connection and fails the others' exchange within seconds;
otherwise the wait is bounded by ``timeout`` (each of the two all-reduces, see
:func:`distributed`) or by the process group's own timeout,
``dist.init_process_group(..., timeout=timedelta(minutes=5))`` (by default 10 minutes
for NCCL and 30 for the other backends), after which the NCCL watchdog aborts the
process. The gathers of step 3 run only after a status exchange that every rank
joined, and are bounded by the group's timeout. After such an error the process group
is unusable: end the job (torchrun's ``--max-restarts`` can restart it).
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils import _pytree as torch_pytree

from . import _pytree as pt
from ._hvp import Loss
from ._pytree import Params
from ._task import Task
from .compiled import CompiledMethod
from .diagnose import Finding, emit
from .methods._base import MetaGradient, Method, _check_params

_HASH_MASK = (1 << 62) - 1
"""Fingerprints are 62-bit, so that both h and −h fit in int64 with room for a neutral value."""
_CPU_BACKENDS = ("gloo", "mpi", "ucc")
"""Backends that reduce CPU tensors; the status exchange runs on the CPU with them."""


@dataclass
class DistributedMetaGradient(MetaGradient):
    """:class:`metagrad.MetaGradient` of a distributed call.

    ``grad``, ``pre_update_loss``, ``post_update_loss`` and ``findings`` are global (all
    tasks of all ranks; findings with global task indices) and identical on every rank.
    ``diagnostics`` holds the per-task tensors of this rank's own tasks only (its row i
    is global task ``task_offset + i``; empty on a rank without tasks): gathering them
    every call would cost a collective that the healthy path does not need.
    """

    num_tasks: int = 0
    """Σ_r T_r, the number of tasks the mean is over."""
    task_offset: int = 0
    """Global index of this rank's first task, Σ_{q<r} T_q."""
    local_tasks: int = 0
    """T_r, this rank's number of tasks."""


@dataclass
class DistributedMethod:
    """A method (or :func:`metagrad.compile` of one) whose meta-batch is spread over the
    ranks of a ``torch.distributed`` process group; see the module docstring and
    :func:`distributed`. Call it as the method: ``(loss, params, tasks)``.
    """

    method: Method | CompiledMethod
    group: Any = None
    """The process group (``None``: the default group)."""
    timeout: timedelta | None = None
    """Longest wait in each exchange (``None``: the process group's own timeout)."""
    _local: Method | CompiledMethod = field(init=False, repr=False)
    _checked: set[tuple] = field(default_factory=set, init=False, repr=False)
    """Parameter signatures whose first call passed the status exchange."""

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
        fingerprint, description, key = 0, {}, ()  # type: tuple[int, dict, tuple]
        count = found = 0
        try:
            theta = _check_params(params)
            self._check_backend(theta)
            key, fingerprint, description = self._fingerprint(theta)
            if _no_tasks(tasks):
                buffer = next(iter(theta.values())).new_zeros(pt.numel(theta) + 2)
            else:
                local = self._local(loss, params, tasks)  # type: ignore[arg-type]
                diag = local.diagnostics
                count, found = int(diag["pre_update_loss"].shape[0]), len(local.findings)
                # What this rank adds to the sums: [T_r · mean g, Σ L_tr(θ), Σ L_val(φ)].
                buffer = torch.cat([pt.flatten(local.grad) * count,
                                    diag["pre_update_loss"].sum().reshape(1),
                                    diag["post_update_loss"].sum().reshape(1)])
        except Exception as err:  # noqa: BLE001  (re-raised below, after the exchange)
            error, count, found = err, 0, 0

        # 1. Status: MAX over [h, −h, failed_r, T_r, findings_r]; slots of other ranks are 0.
        status = torch.zeros(2 + 3 * world, dtype=torch.int64)
        if error is None:
            status[0], status[1] = fingerprint, -fingerprint
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
            raise ValueError(_differences(self._gather(description)))
        self._checked.add(key)
        total = sum(counts)
        if total == 0:
            raise ValueError("mg.distributed: no rank has any task (every rank passed "
                             "tasks=None or an empty Task); the mean over tasks is undefined")

        # 2. The gradient: ONE all-reduce of the flat buffer, in the params' dtype and device.
        buffer = self._all_reduce(buffer, dist.ReduceOp.SUM, "the gradient all-reduce", rank)
        mean = buffer / total
        n = pt.numel(theta)

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
            method=self.name, findings=findings,
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

    def _fingerprint(self, theta: Params) -> tuple[tuple, int, dict]:
        """(signature, 62-bit hash, description) of the settings and the parameters' names,
        shapes and dtypes. Until a call with this parameter signature has passed the status
        exchange, the parameter values are hashed too: ranks that start from different θ
        (an unseeded initialisation) would average meaningless gradients."""
        key = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in theta.items())
        description = self._description(theta, key, values=key not in self._checked)
        digest = hashlib.blake2b(repr(description).encode(), digest_size=8).digest()
        return key, int.from_bytes(digest, "little") & _HASH_MASK, description

    def _description(self, theta: Params, key: tuple, values: bool) -> dict:
        base = self.base
        compiled = self.method if isinstance(self.method, CompiledMethod) else None
        description: dict[str, Any] = {
            "method": base.name,
            "settings": base.config(),
            "compiled": None if compiled is None else
            {"backend": compiled.backend, "mode": compiled.mode},
            "params": [(k, shape, dtype) for k, shape, dtype in key],
        }
        if values:
            data = hashlib.blake2b(digest_size=8)
            for v in theta.values():
                data.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            description["parameter values (first call)"] = data.hexdigest()
        return description

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
    ranks, g = Σ_r Σ_i g_{r,i} / Σ_r T_r (see the module docstring for the protocol,
    errors and findings). ``tasks`` is this rank's shard, or ``None`` for none.
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


def shard_tasks(tasks: Task, rank: int | None = None, world_size: int | None = None, *,
                group: Any = None) -> Task:
    """Rank ``rank``'s contiguous share of a meta-batch of T tasks among ``world_size``
    ranks (default: this process in ``group``): tasks [lo, hi) with the first T mod R
    ranks holding ⌈T/R⌉ tasks and the others ⌊T/R⌋ (possibly 0). With these shards the
    global task indices of :func:`distributed` are the indices in ``tasks``.

    Per-task tensors in ``tasks.info`` (leading dimension T) are sliced too.
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


def _differences(descriptions: list[dict]) -> str:
    """What differs between the ranks' fingerprint descriptions, rank by rank."""

    def per_rank(values: list[Any]) -> str:
        return ", ".join(f"rank {r} has {v}" for r, v in enumerate(values))

    lines = []
    for key in ("method", "compiled"):
        values = [d[key] for d in descriptions]
        if len({repr(v) for v in values}) > 1:
            lines.append(f"{key}: {per_rank([repr(v) for v in values])}")
    names = list(dict.fromkeys(k for d in descriptions for k in d["settings"]))
    for name in names:
        values = [d["settings"].get(name, "<absent>") for d in descriptions]
        if len({repr(v) for v in values}) > 1:
            lines.append(f"setting {name}: {per_rank([repr(v) for v in values])}")
    params = [{k: (shape, dtype) for k, shape, dtype in d["params"]} for d in descriptions]
    for name in dict.fromkeys(k for p in params for k in p):
        values = [p.get(name) for p in params]
        if len(set(values)) > 1:
            shown = ["no such parameter" if v is None else f"shape {v[0]} {v[1]}" for v in values]
            lines.append(f"params[{name!r}]: {per_rank(shown)}")
    if not lines and [list(p) for p in params].count(list(params[0])) != len(params):
        lines.append("parameter order: "
                     + per_rank([repr(list(p)) for p in params]))
    key = "parameter values (first call)"
    values = [d.get(key) for d in descriptions]
    if not lines and len(set(values)) > 1:
        lines.append("parameter values at the first call (digests: "
                     f"{per_rank(values)}): initialise every rank's model from the same "
                     "seed, or broadcast rank 0's parameters (torch.distributed.broadcast)")
    if not lines:  # cannot happen unless the ranks disagree on which call is the first
        lines.append("the fingerprints differ, but the descriptions agree: every rank must "
                     "make the same sequence of calls")
    return ("mg.distributed: the ranks disagree, so their meta-gradients cannot be averaged: "
            + "; ".join(lines) + ". Every rank must call the same method with the same "
            "settings on parameters of the same names, shapes and dtypes.")
