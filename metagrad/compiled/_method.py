"""``CompiledMethod``: a method whose batched meta-gradient runs compiled, one compiled
program per input signature, in a bounded least-recently-used cache, with the eager
method as the fallback where torch.compile fails."""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as torch_pytree

from .. import _pytree as pt
from .._hvp import Loss
from .._pytree import Params
from .._task import Task
from ..methods._base import MetaGradient, Method, _check_params, _check_tasks
from ._choice import TIMED_CALLS, CostBook, Plan, cache_folder, cold_estimate, digest
from ._messages import cpp_build_failed, failure
from ._programs import own_code, scan_available, scanned, stepwise, unrolled
from ._signature import signature

LOOPS = ("auto", "unrolled", "scan", "stepwise")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile's modes."""
SCAN_FROM = 6
"""``loop="auto"`` scans the inner loop from this many inner steps on: below it the
unrolled form's compile time is short and its graphs are kept by torch's persistent
caches, from it on the scanned form's flat compile time wins. The stepwise form compiles
in flat time too and its graphs are kept across processes, but its calls take about twice
as long (each inner step's Hessian-vector product recomputes that step's forward pass,
and nothing fuses across steps), so it is not the default. Measured:
``python -m metagrad_bench.compile_time``, results page *compile_cpu*."""

DEFAULT_CACHE_SIZE = 32


class CompileFallbackWarning(UserWarning):
    """``mg.compile(..., fallback=True)`` is running the eager method for some signature."""


@dataclass
class _Entry:
    program: Callable | None  # None: this signature runs the eager method (fallback)
    loss: Any  # kept alive: the key holds its code object, guards may refer to it
    loop: str = "unrolled"


class CompiledMethod:
    """A metagrad method whose batched meta-gradient runs compiled (see :func:`compile`).

    Call it like the method. ``compile_seconds`` maps each compiled signature to the wall
    time of its first call (tracing + code generation + one run); ``signatures`` lists the
    cached ones, least recently used first; ``eager_signatures`` those running eagerly after
    a fallback.

    Parameters
    ----------
    method : Method
        The method to compile (``batching="vmap"``).
    backend : str or callable
        A ``torch.compile`` backend (default ``"inductor"``).
    mode : str or None
        A ``torch.compile`` mode (None: the default on CPU, ``"reduce-overhead"``, CUDA
        graphs, on a GPU).
    loop : {"auto", "unrolled", "scan", "stepwise"}
        The inner loop's compiled form (``"auto"``: scanned from ``SCAN_FROM`` steps on,
        where the method can scan it; see :meth:`loop_form`).
    fallback : bool
        Run the eager method (warning once) where compilation fails, instead of raising.
    cache_size : int
        How many input signatures stay compiled (least recently used evicted).
    calls : int or None
        How many calls to expect per input signature; given, each signature runs eagerly
        until compiling is predicted to pay back over the calls left (see :func:`compile`).
    """

    def __init__(self, method: Method, backend: str = "inductor", mode: str | None = None,
                 loop: str = "auto", fallback: bool = False,
                 cache_size: int = DEFAULT_CACHE_SIZE, calls: int | None = None):
        self.method = method
        self.backend = backend
        self.mode = mode
        self.loop = loop
        self.fallback = fallback
        self.cache_size = cache_size
        self.calls = calls
        self.compile_seconds: dict[tuple, float] = {}
        self.decisions: dict[tuple, str] = {}
        """Per signature, with ``calls`` given: whether it runs eagerly or compiled, and why."""
        self._cache: OrderedDict[tuple, _Entry] = OrderedDict()
        self._plans: dict[tuple, Plan] = {}
        self._timing: dict[tuple, list[float]] = {}
        self._book: CostBook | None = None
        self._warned = False

    def __repr__(self) -> str:
        return (f"CompiledMethod({self.method!r}, backend={self.backend!r}, mode={self.mode!r}, "
                f"loop={self.loop!r}, fallback={self.fallback}, cache_size={self.cache_size}, "
                f"calls={self.calls})")

    @property
    def book(self) -> CostBook:
        """Measured compile and call times of earlier compiles with this cache folder."""
        if self._book is None:
            self._book = CostBook(cache_folder() if self.backend == "inductor" else None)
        return self._book

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def signatures(self) -> list[tuple]:
        return list(self._cache)

    @property
    def eager_signatures(self) -> list[tuple]:
        return [k for k, e in self._cache.items() if e.program is None]

    def loop_form(self, device: torch.device | str = "cpu") -> str:
        """``"unrolled"``, ``"scan"`` or ``"stepwise"``: the form this method compiles to on
        ``device``. ``loop="auto"`` scans from :data:`SCAN_FROM` steps on where the method
        can scan its loop (:attr:`metagrad.Method.scannable`), and unrolls otherwise and
        under CUDA graphs (one graph to replay)."""
        device = torch.device(device)
        if self.loop != "auto":
            return self.loop
        if (self.method.steps < SCAN_FROM or self.method.scannable is not None
                or self._mode(device) == "reduce-overhead" or not scan_available()):
            return "unrolled"
        return "scan"

    def _mode(self, device: torch.device) -> str | None:
        if self.mode is None and device.type == "cuda" and self.backend == "inductor":
            return "reduce-overhead"  # CUDA graphs: launch overhead dominates small tasks
        return self.mode

    def _program(self, device: torch.device, cpp_wrapper: bool = True) -> tuple[Callable, str]:
        loop = self.loop_form(device)
        self.method.inner_loop  # noqa: B018 - built before tracing, which cannot build it
        mode = self._mode(device)
        mode = None if mode == "default" else mode
        options: dict[str, Any] = {}
        # (torch.compile takes a mode or options, not both)
        if cpp_wrapper and self.backend == "inductor" and device.type == "cpu" and mode is None:
            # One C++ build per graph instead of one per fused kernel, and the scan loop
            # runs in C++ rather than in Python.
            options["cpp_wrapper"] = True
            if torch._inductor.config.cpp.vec_isa_ok is None:
                # Take the vector instruction sets the CPU reports (cpuid) instead of
                # test-building a C++ file for each one first (seconds of a cold start). A
                # compiler that cannot build them fails the build; the retry without the
                # C++ wrapper then test-builds them, as inductor does by default.
                options["cpp.vec_isa_ok"] = True

        def compile_piece(fn: Callable) -> Callable:
            return torch.compile(own_code(fn), backend=self.backend, mode=mode,
                                 options=options or None, dynamic=False, fullgraph=True)

        if loop == "stepwise":
            return stepwise(self.method, compile_piece), loop
        return compile_piece(scanned(self.method) if loop == "scan"
                             else unrolled(self.method)), loop

    # -- the call --------------------------------------------------------------------
    def __call__(self, loss: Loss, params: Mapping[str, Tensor], tasks: Task) -> MetaGradient:
        key = signature(loss, params, tasks)
        if self.calls is not None and key is not None:
            plan = self._plans.get(key)
            if plan is None or plan.compile_at is None:
                return self._planned_eager_call(key, plan, loss, params, tasks)
        entry = self._cache.get(key) if key is not None else None
        if key is None or entry is None:
            # First call of this signature: the eager method's full validation.
            theta = self.method.prepare(loss, params, tasks)
            key = signature(loss, theta, tasks)
            assert key is not None
            return self._first_call(key, loss, theta, tasks)
        self._cache.move_to_end(key)
        if entry.program is None:
            return self.method(loss, params, tasks)
        theta = pt.detach(params)
        try:
            if key in self._timing:
                return self._timed_run(key, entry, loss, theta, tasks)
            return self._run(entry, loss, theta, tasks)
        except _ProgramFailed as failed:
            assert isinstance(failed.__cause__, Exception)
            return self._fall_back(key, entry, failed.__cause__, loss, theta, tasks)

    def _first_call(self, key: tuple, loss: Loss, theta: Params, tasks: Task) -> MetaGradient:
        device = next(iter(theta.values())).device
        entry = _Entry(None, loss)
        start = time.perf_counter()
        try:
            try:
                entry.program, entry.loop = self._program(device)
                outputs = self._execute(entry, loss, theta, tasks, first=True)
            except Exception as err:  # noqa: BLE001
                if not cpp_build_failed(err):
                    raise
                # inductor's C++ wrapper does not build some graphs (torch 2.13: duplicate
                # buffer declarations around a scan of length 1); its Python wrapper does.
                _forget_vector_isa()
                entry.program, entry.loop = self._program(device, cpp_wrapper=False)
                outputs = self._execute(entry, loss, theta, tasks, first=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.compile_seconds[key] = time.perf_counter() - start
            self._record_compile(key, entry, device)
        except _TaskDataError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure to trace or compile
            return self._fall_back(key, entry, err, loss, theta, tasks)
        self._insert(key, entry)
        # Compiled and run: what the numerical checks then say (diagnose="error" raises) is
        # about the numbers, not about compiling, and the program stays cached.
        return self._package(loss, theta, tasks, outputs)

    # -- the choice between eager and compiled (calls=N, metagrad.compiled._choice) ------
    def _planned_eager_call(self, key: tuple, plan: Plan | None, loss: Loss,
                            params: Mapping[str, Tensor], tasks: Task) -> MetaGradient:
        if plan is None:
            device = next(iter(params.values())).device
            form = self.loop_form(device)
            plan = Plan(self.calls or 0, digest(key, self.method, form, self.backend,
                                                self._mode(device)), device.type,
                        cold_estimate(self.method.gradient_equivalents(), form, device.type))
            self._plans[key] = plan
        start = time.perf_counter()
        out = self.method(loss, params, tasks)
        if plan.eager_call(time.perf_counter() - start, self.book):
            plan.compile_at = plan.done + 1
        self.decisions[key] = plan.reason
        return out

    def _record_compile(self, key: tuple, entry: _Entry, device: torch.device) -> None:
        """The compile time into the cost book, and the next calls timed for it."""
        if self.backend != "inductor":
            return
        plan = self._plans.get(key)
        name = plan.digest if plan is not None else digest(
            key, self.method, entry.loop, self.backend, self._mode(device))
        self.book.add_compile(name, device.type, self.compile_seconds[key], entry.loop)
        self._timing[key] = []

    def _timed_run(self, key: tuple, entry: _Entry, loss: Loss, theta: Params,
                   tasks: Task) -> MetaGradient:
        start = time.perf_counter()
        out = self._run(entry, loss, theta, tasks)
        times = self._timing[key]
        times.append(time.perf_counter() - start)
        if len(times) >= TIMED_CALLS:
            del self._timing[key]
            plan = self._plans.get(key)
            device = next(iter(theta.values())).device
            name = plan.digest if plan is not None else digest(
                key, self.method, entry.loop, self.backend, self._mode(device))
            self.book.add_calls(name, sorted(times)[len(times) // 2],
                                plan.eager_s if plan is not None else None)
        return out

    def _fall_back(self, key: tuple, entry: _Entry, err: Exception, loss: Loss,
                   theta: Params, tasks: Task) -> MetaGradient:
        """Raise what failed or, with ``fallback=True``, run this signature eagerly from now
        on (warning once per compiled method)."""
        message = failure(err, self.method.name, self.method.hvp)
        if not self.fallback:
            raise RuntimeError(message) from err
        entry.program = None
        self._insert(key, entry)
        if not self._warned:
            self._warned = True
            warnings.warn(message + " Running the eager method for this signature "
                          "(shown once per compiled method).", CompileFallbackWarning,
                          stacklevel=4)
        return self.method(loss, theta, tasks)

    def _insert(self, key: tuple, entry: _Entry) -> None:
        self._cache[key] = entry
        while len(self._cache) > self.cache_size:
            old, _ = self._cache.popitem(last=False)
            self.compile_seconds.pop(old, None)

    def _run(self, entry: _Entry, loss: Loss, theta: Params, tasks: Task) -> MetaGradient:
        return self._package(loss, theta, tasks, self._execute(entry, loss, theta, tasks))

    def _execute(self, entry: _Entry, loss: Loss, theta: Params, tasks: Task,
                 first: bool = False) -> tuple:
        """The compiled program's outputs, after the value checks it computed (finite
        parameters and task data)."""
        assert entry.program is not None
        hyper = self.method.hyper(next(iter(theta.values())))
        try:
            grad, hyper_grad, diag, finite, means = entry.program(loss, theta, tasks.train,
                                                                  tasks.val, hyper)
        except Exception as err:
            if first:
                raise
            raise _ProgramFailed from err  # a recompilation failed: see __call__
        if not bool(finite):
            # the eager method's message, naming the parameter or the task tensor
            try:
                _check_params(theta)
                _check_tasks(tasks, theta)
            except ValueError as err:
                raise _TaskDataError(str(err)) from None
            raise _TaskDataError("the parameters or the tasks contain NaN or infinite values")
        if self._mode(next(iter(theta.values())).device) == "reduce-overhead":
            # CUDA-graph outputs live in a buffer the next replay overwrites.
            grad, hyper_grad, diag = torch_pytree.tree_map(
                lambda v: v.clone(), (grad, hyper_grad, diag))
            means = (means[0].clone(), means[1].clone())
        return grad, hyper_grad, diag, means

    def _package(self, loss: Loss, theta: Params, tasks: Task, outputs: tuple) -> MetaGradient:
        grad, hyper_grad, diag, means = outputs
        if self.method.diagnose != "off":
            return self.method.finish(loss, theta, tasks, grad, diag, hyper_grad)
        # What Method.finish returns without diagnostics, with the task means taken in
        # the graph.
        return MetaGradient(grad=grad, pre_update_loss=means[0], post_update_loss=means[1],
                            diagnostics=diag, method=self.method.name,
                            hyper_grad=self.method._hyper_grad_as_given(hyper_grad))


def _forget_vector_isa() -> None:
    """Drop inductor's memo of the usable vector instruction sets, so that the next build
    test-builds them (after a build that took them from cpuid failed)."""
    from torch._inductor import cpu_vec_isa

    cache_clear = getattr(cpu_vec_isa.valid_vec_isa_list, "cache_clear", None)
    if cache_clear is not None:
        cache_clear()


class _ProgramFailed(Exception):
    """A compiled program failed on a later call (e.g. a recompilation for a changed
    closure); its cause is the original error."""


class _TaskDataError(ValueError):
    """Parameters or task data with NaN or infinite values (raised as the eager method's
    ValueError)."""


def compile(  # noqa: A001  (mirrors torch.compile)
    method: Method, *, backend: str = "inductor", mode: str | None = None,
    loop: str = "auto", fallback: bool = False, cache_size: int = DEFAULT_CACHE_SIZE,
    calls: int | None = None,
) -> CompiledMethod:
    """Compile ``method``'s batched meta-gradient (see the package docstring): the same
    numbers as the eager method up to float rounding, much faster per call after a
    one-off compile per input signature.

    Parameters
    ----------
    method : Method
        The method to compile (``batching="vmap"``).
    backend : str or callable
        A ``torch.compile`` backend (default ``"inductor"``).
    mode : str or None
        A ``torch.compile`` mode (None: the default on CPU, ``"reduce-overhead"``, CUDA
        graphs, on a GPU).
    loop : {"auto", "unrolled", "scan", "stepwise"}
        The inner loop's compiled form (``"auto"``: scanned from ``SCAN_FROM`` steps on,
        where the method can scan it; see :meth:`loop_form`).
    fallback : bool
        Run the eager method (warning once) where compilation fails, instead of raising.
    cache_size : int
        How many input signatures stay compiled (least recently used evicted).
    calls : int or None
        How many calls to expect per input signature (a training loop's meta-steps).
        Given, each signature runs eagerly until compiling is predicted to pay back over
        the calls left, from the measured eager call time and the compile time measured
        in earlier runs with the same cache folder (see ``metagrad.compiled._choice``);
        ``decisions`` says what was chosen and why. None: compile at the first call.

    Returns
    -------
    CompiledMethod
        Called like the method: ``compiled(loss, params, tasks) -> MetaGradient``.
    """
    if not isinstance(method, Method):
        raise TypeError(f"compile() takes a metagrad method, got {type(method).__name__}")
    if method.batching != "vmap":
        raise ValueError("compile() needs batching='vmap' (the loop fallback is not traced)")
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} or None, got {mode!r}")
    if isinstance(backend, str):
        # listing the backends imports dynamo (seconds): not for the default one
        known = ("inductor",) if backend == "inductor" else torch._dynamo.list_backends(
            exclude_tags=())
        if backend not in known:
            raise ValueError(f"backend must be one of torch.compile's backends "
                             f"({', '.join(sorted(known))}) or a callable, got {backend!r}")
    elif not callable(backend):
        raise TypeError(f"backend must be a backend name or a callable, got {backend!r:.60}")
    if loop == "scan":
        if not scan_available():
            raise ValueError(f"loop='scan' needs torch's scan operator with reverse=, which "
                             f"torch {torch.__version__} does not have; use loop='unrolled'")
        if method.steps < 2:
            raise ValueError(f"loop='scan' needs steps >= 2 (a loop to scan), got "
                             f"steps={method.steps}")
        if method.scannable is not None:
            raise ValueError(f"loop='scan' cannot run {method.name} here: "
                             f"{method.scannable}; use loop='unrolled'")
    if loop == "stepwise" and (method.steps < 1 or method.scannable is not None):
        why = ("needs steps >= 1 (a step to compile)" if method.steps < 1
               else f"cannot run {method.name} here: {method.scannable}")
        raise ValueError(f"loop='stepwise' {why}; use loop='unrolled'")
    if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
        raise ValueError(f"cache_size must be a positive integer, got {cache_size!r}")
    if not isinstance(fallback, bool):
        raise TypeError(f"fallback must be True or False, got {fallback!r}")
    if calls is not None and (isinstance(calls, bool) or not isinstance(calls, int)
                              or calls < 1):
        raise ValueError(f"calls must be a positive integer or None, got {calls!r}")
    return CompiledMethod(method, backend, mode, loop, fallback, cache_size, calls)
