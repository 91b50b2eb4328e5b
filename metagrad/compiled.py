"""Opt-in compiled meta-gradients: ``torch.compile`` of the batched computation.

``mg.compile(method)`` returns a :class:`CompiledMethod`, called like the method,
``compiled(loss, params, tasks) -> MetaGradient``, with the eager method's numbers up to
float rounding (kernels are fused and reordered).

**Signatures and the cache.** A call's *signature* is what a compiled graph depends on:
the parameters' names, shapes, dtype and device, the task pytree's structure and its
tensors' shapes, dtypes and devices, and the loss's code (its code object, for a Python
function; its type otherwise). Everything else the loss reads (the module it wraps,
tensors and numbers it closes over) is left to ``torch.compile``'s guards, so a new but
identical ``lambda`` per call, or ``mg.module_loss`` of another model of the same
architecture, reuses the compiled graph. Each signature gets its own compiled code
object, so torch's per-code-object recompilation limit (8) counts recompilations of one
signature only (a loss whose Python state changes every call), never the number of
signatures; the cache keeps the ``cache_size`` most recently used signatures (least
recently used evicted first). ``compile_seconds`` holds the one-off cost per signature.

**What runs per call.** The first call of a signature validates everything the eager
method validates (``Method.prepare``: parameter dtypes and devices, task shapes, a
forward pass of the loss) and compiles. Later calls with the same signature skip that:
the structure, dtypes, devices and shapes are part of the signature, so they cannot have
changed. What can change from call to call are values, and of those the eager method
checks one before computing: that the task data are finite. The compiled graph computes
that check itself (one fused reduction over the task tensors) and the call raises the
eager method's ``ValueError`` naming the tensor when it fails; the result is discarded.
The numerical diagnostics of ``metagrad.diagnose`` run after the call as in eager mode
(``diagnose="off"`` skips them, as benchmarks do).

**Inner loops: unrolled or stepped** (``loop=``). ``"unrolled"`` traces the whole batched
computation, K inner steps included, as one graph: the fastest call at small K, but
tracing and code generation grow with K (K copies of the step). ``"stepped"`` compiles
one inner step, (proximal) gradient descent batched over tasks, and calls it K times
from Python; MAML's backward pass is then the reverse sweep v ← v − αH(θ⁽ᵏ⁾)v,
k = K−1 … 0, from v = ∇L_val(φ) (the same meta-gradient as
``backward="trajectory"``, Finn et al. 2017 eq. (1)-(2)) with one compiled sweep step;
the other methods' per-task code after the inner loop (solver, penalty, ...) is one more
graph that receives the inner loop's result (``metagrad._inner.KnownInnerLoop``). Compile
time is then independent of K. ``"auto"`` (default) uses the stepped form from
:data:`STEPPED_FROM` inner steps on.

**Persistent cache.** Compiled graphs are stored by inductor's FX-graph and AOTAutograd
caches in ``TORCHINDUCTOR_CACHE_DIR`` (default ``<tmp>/torchinductor_<user>``; set the
variable before the first compile to keep them elsewhere; :func:`cache_dir` says where
they go). A new process with the same configuration then traces again (seconds) but
skips code generation and C++ compilation.

**Fallback.** ``fallback=True`` runs the eager method, with one
:class:`CompileFallbackWarning` per compiled method, for any signature that
``torch.compile`` cannot trace (e.g. a loss with data-dependent Python control flow);
without it such a call raises ``RuntimeError`` saying what failed.

On CPU the generated C++ is built with inductor's C++ wrapper (``cpp_wrapper``): one
compiler run per graph instead of one per fused kernel, which is most of the compile
time on a small machine. On CUDA the default mode is ``"reduce-overhead"`` (CUDA graphs)
for the unrolled form.
"""

from __future__ import annotations

import functools
import time
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap
from torch.utils import _pytree as torch_pytree

from . import _pytree as pt
from ._hvp import Loss, hvp, resolve_mode
from ._inner import InnerResult, KnownInnerLoop, gd_step
from ._pytree import Params
from ._task import Task
from .methods._backward import Trajectory
from .methods._base import MetaGradient, Method, _check_tasks
from .methods.maml import MAML

VERIFIED_TORCH = ("2.8", "2.10", "2.13", "2.14")
"""torch releases on which the compiled path was run against the eager one (tox matrix)."""

LOOPS = ("auto", "unrolled", "stepped")
STEPPED_FROM = 3
"""``loop="auto"`` compiles one inner step (stepped) from this many inner steps on, and
the whole unrolled computation below it. Measured (bench/compile_time.py, 1 CPU thread,
sinusoid MLP, 25 tasks): at K = 1 the unrolled graph is the faster call and compiles as
fast; from K = 3 on the stepped form compiles in about the time of K = 1 while the
unrolled one grows with K."""

DEFAULT_CACHE_SIZE = 32


class CompileFallbackWarning(UserWarning):
    """``mg.compile(..., fallback=True)`` is running the eager method for some signature."""


def cache_dir() -> str:
    """The folder where inductor keeps compiled graphs across processes
    (``TORCHINDUCTOR_CACHE_DIR``, default ``<tmp>/torchinductor_<user>``)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir

    return inductor_cache_dir()


# ------------------------------------------------------------------------- signatures


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
    leaves, spec = torch_pytree.tree_flatten((tasks.train, tasks.val))
    return (_loss_key(loss), tuple(param_keys), spec, tuple(_leaf_key(x) for x in leaves))


def _all_finite(train: Any, val: Any) -> Tensor:
    """One 0-dim bool: every floating-point task tensor is finite (inside the graph)."""
    flags = [torch.isfinite(x).all() for x in torch_pytree.tree_leaves((train, val))
             if isinstance(x, Tensor) and x.is_floating_point()]
    return torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool)


def _own_code(fn: Callable) -> Callable:
    """``fn`` with a code object of its own. torch.compile keeps its compiled entries, and
    counts recompilations against ``recompile_limit``, per code object: closures made by
    one factory share one, so without this every signature of every compiled method would
    count against one limit of 8 (and the 9th would fail)."""
    assert isinstance(fn, types.FunctionType)
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


# ------------------------------------------------------------------ compiled programs


def _unrolled(method: Method) -> Callable:
    """(loss, θ, train, val) ↦ (mean gᵢ, per-task diagnostics, all task data finite)."""

    def whole(loss, theta, train, val):
        grad, diag = method.batched(loss)(theta, train, val)
        return grad, diag, _all_finite(train, val)

    return whole


def _inner_step(method: Method) -> Callable:
    """(loss, θ, φ, train) ↦ (φ after one inner step, L_tr(φ)), batched over tasks."""
    lam = method._inner_lam()

    def step(loss, theta, phi, train):
        return vmap(lambda p, b: gd_step(loss, theta, p, b, method.inner_lr, lam))(phi, train)

    return step


def _sweep_step(method: Method, mode: str) -> Callable:
    """(loss, θ⁽ᵏ⁾, train, v) ↦ v − αH(θ⁽ᵏ⁾)v, batched over tasks (the transpose of one
    inner step's Jacobian I − αH applied to v)."""

    def back(loss, point, train, v):
        def one(p, b, u):
            return pt.axpy(-method.inner_lr, hvp(loss, p, b, u, mode), u)

        return vmap(one)(point, train, v)

    return back


def _val_gradient(loss, phi, val):
    return vmap(grad_and_value(loss))(phi, val)


def _maml_finish(loss, v, inner_losses, post, train, val):
    diag = {"inner_losses": inner_losses, "pre_update_loss": inner_losses[:, 0],
            "post_update_loss": post, "grad_norm": vmap(pt.norm)(v)}
    return pt.mean0(v), diag, _all_finite(train, val)


def _tail(method: Method) -> Callable:
    """The method's per-task computation after an inner loop that has already run."""
    lam = method._inner_lam()

    def tail(loss, theta, train, val, phi, inner_losses):
        def one(tr, va, p, losses):
            known = KnownInnerLoop(loss, InnerResult(p, losses[0], losses), method.steps,
                                   method.inner_lr, lam)
            return method._task_result(known, theta, tr, va)

        grads, diag = vmap(one)(train, val, phi, inner_losses)
        return pt.mean0(grads), diag, _all_finite(train, val)

    return tail


@dataclass
class _Program:
    """The compiled pieces of one signature and how to run them."""

    method: Method
    stepped: bool
    compile: Callable[[Callable], Callable]
    pieces: dict[str, Callable] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.stepped:
            self.pieces["whole"] = self.compile(_unrolled(self.method))
            return
        self.pieces["step"] = self.compile(_inner_step(self.method))
        if isinstance(self.method, MAML):
            mode = resolve_mode(self.method.hvp, "cpu")  # same on every device today
            self.pieces["val"] = self.compile(_val_gradient)
            self.pieces["back"] = self.compile(_sweep_step(self.method, mode))
            self.pieces["finish"] = self.compile(_maml_finish)
        else:
            self.pieces["tail"] = self.compile(_tail(self.method))

    def __call__(self, loss: Loss, theta: Params, train: Any, val: Any):
        if not self.stepped:
            return self.pieces["whole"](loss, theta, train, val)
        step = self.pieces["step"]
        num_tasks = torch_pytree.tree_leaves(train)[0].shape[0]
        # φ⁽⁰⁾ = θ copied per task, so every step sees the same (batched) input layout.
        phi = {k: v.expand(num_tasks, *v.shape).contiguous() for k, v in theta.items()}
        every = 1
        if isinstance(self.method, MAML) and isinstance(self.method.backward, Trajectory):
            every = self.method.backward.checkpoint or 1
        stored: list[Params] = []
        losses: list[Tensor] = []
        for k in range(self.method.steps):
            if isinstance(self.method, MAML) and k % every == 0:
                stored.append(phi)
            phi, value = step(loss, theta, phi, train)
            losses.append(value)
        inner_losses = torch.stack(losses, 1)
        if not isinstance(self.method, MAML):
            return self.pieces["tail"](loss, theta, train, val, phi, inner_losses)
        v, post = self.pieces["val"](loss, phi, val)
        back = self.pieces["back"]
        steps = self.method.steps
        for index in reversed(range(len(stored))):
            segment = [stored[index]]
            for _ in range(min(every, steps - index * every) - 1):
                # checkpointed: recompute the segment's iterates from the stored one
                segment.append(step(loss, theta, segment[-1], train)[0])
            for point in reversed(segment):
                v = back(loss, point, train, v)
        return self.pieces["finish"](loss, v, inner_losses, post, train, val)


# ------------------------------------------------------------------------- the wrapper


@dataclass
class _Entry:
    program: _Program | None  # None: this signature runs the eager method (fallback)
    loss: Any  # kept alive: the key holds its code object, guards may refer to it
    calls: int = 0


class CompiledMethod:
    """A metagrad method whose batched meta-gradient runs compiled; see the module docstring.

    Call it like the method. ``compile_seconds`` maps each compiled signature to the wall
    time of its first call (tracing + code generation + one run); ``signatures`` lists the
    cached ones, most recently used last; ``eager_signatures`` those running eagerly after
    a fallback.
    """

    def __init__(self, method: Method, backend: str = "inductor", mode: str | None = None,
                 loop: str = "auto", fallback: bool = False,
                 cache_size: int = DEFAULT_CACHE_SIZE):
        self.method = method
        self.backend = backend
        self.mode = mode
        self.loop = loop
        self.fallback = fallback
        self.cache_size = cache_size
        self.compile_seconds: dict[tuple, float] = {}
        self._cache: OrderedDict[tuple, _Entry] = OrderedDict()
        self._warned = False

    def __repr__(self) -> str:
        return (f"CompiledMethod({self.method!r}, backend={self.backend!r}, mode={self.mode!r}, "
                f"loop={self.loop!r}, fallback={self.fallback}, cache_size={self.cache_size})")

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def signatures(self) -> list[tuple]:
        return list(self._cache)

    @property
    def eager_signatures(self) -> list[tuple]:
        return [k for k, e in self._cache.items() if e.program is None]

    # -- configuration per signature -------------------------------------------------
    def _mode(self, device: torch.device) -> str | None:
        if self.mode is None and device.type == "cuda" and self.backend == "inductor":
            return "reduce-overhead"  # CUDA graphs: launch overhead dominates small tasks
        return self.mode

    def _stepped(self, mode: str | None) -> bool:
        if self.method.steps == 0:
            return False
        if self.loop == "stepped":
            return True
        if self.loop == "unrolled":
            return False
        # CUDA graphs overwrite a graph's outputs on its next replay; the stepped form
        # keeps outputs of earlier replays (the iterates), so it stays unrolled there.
        return self.method.steps >= STEPPED_FROM and mode != "reduce-overhead"

    def _compiler(self, device: torch.device) -> tuple[Callable, str | None]:
        mode = self._mode(device)
        options: dict[str, Any] = {}
        if self.backend == "inductor" and device.type == "cpu" and mode is None:
            options["cpp_wrapper"] = True  # one C++ build per graph, not one per kernel

        def compile_one(fn: Callable) -> Callable:
            return torch.compile(_own_code(fn), backend=self.backend, mode=mode,
                                 options=options or None, dynamic=False, fullgraph=True)

        return compile_one, mode

    # -- the call --------------------------------------------------------------------
    def __call__(self, loss: Loss, params: Mapping[str, Tensor], tasks: Task) -> MetaGradient:
        key = signature(loss, params, tasks)
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
        return self._run(entry, key, loss, theta, tasks)

    def _first_call(self, key: tuple, loss: Loss, theta: Params, tasks: Task) -> MetaGradient:
        device = next(iter(theta.values())).device
        compile_one, mode = self._compiler(device)
        entry = _Entry(None, loss)
        try:
            entry.program = _Program(self.method, self._stepped(mode), compile_one)
            start = time.perf_counter()
            out = self._run(entry, key, loss, theta, tasks, first=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.compile_seconds[key] = time.perf_counter() - start
        except _TaskDataError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure to trace or compile
            message = self._failure(err)
            if not self.fallback:
                raise RuntimeError(message) from err
            entry.program = None
            self._insert(key, entry)
            if not self._warned:
                self._warned = True
                warnings.warn(message + " Running the eager method for this signature "
                              "(shown once per compiled method).", CompileFallbackWarning,
                              stacklevel=3)
            return self.method(loss, theta, tasks)
        self._insert(key, entry)
        return out

    def _insert(self, key: tuple, entry: _Entry) -> None:
        self._cache[key] = entry
        while len(self._cache) > self.cache_size:
            old, _ = self._cache.popitem(last=False)
            self.compile_seconds.pop(old, None)

    def _run(self, entry: _Entry, key: tuple, loss: Loss, theta: Params, tasks: Task,
             first: bool = False) -> MetaGradient:
        assert entry.program is not None
        try:
            grad, diag, finite = entry.program(loss, theta, tasks.train, tasks.val)
        except Exception as err:
            if first:
                raise
            raise RuntimeError(self._failure(err)) from err
        entry.calls += 1
        if not bool(finite):
            _check_tasks(tasks, theta)  # raises the eager method's message, naming the tensor
            raise _TaskDataError("tasks contain NaN or infinite values")
        if self._mode(next(iter(theta.values())).device) == "reduce-overhead":
            # CUDA-graph outputs live in a buffer the next replay overwrites.
            grad = {k: v.clone() for k, v in grad.items()}
            diag = {k: v.clone() for k, v in diag.items()}
        return self.method.finish(loss, theta, tasks, grad, diag)

    def _failure(self, err: Exception) -> str:
        """What went wrong, for the RuntimeError or the fallback warning."""
        text = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
        name = self.method.name
        if "recompile" in text.lower() or "cache_size_limit" in text:
            return (f"torch.compile recompiled {name}'s meta-gradient for one input signature "
                    f"more than torch._dynamo.config.recompile_limit = "
                    f"{torch._dynamo.config.recompile_limit} times ({text}). Something the "
                    "loss reads changes between calls in a way that needs a new graph each "
                    "time (e.g. an int it closes over); give it as a tensor, build the loss "
                    "once, or use fallback=True.")
        if self.method.hvp == "fwdrev":
            return (f"torch.compile could not trace {name}'s batched meta-gradient with "
                    f"forward-over-reverse Hessian-vector products ({text}); torch "
                    f"{torch.__version__}'s dynamo does not trace torch.func.jvp through every "
                    "operation. Use hvp='revrev' (the same numbers) or the eager method.")
        if not torch.__version__.startswith(VERIFIED_TORCH):
            return (f"torch.compile could not trace {name}'s batched meta-gradient on torch "
                    f"{torch.__version__} ({text}); mg.compile is verified on torch "
                    f"{', '.join(VERIFIED_TORCH)}. The eager method gives the same numbers.")
        return (f"torch.compile could not trace {name}'s batched meta-gradient ({text}). "
                "A loss must be traceable as one graph: no data-dependent Python control "
                "flow (if on a tensor's value), no .item() or .tolist(), no printing. The "
                "eager method gives the same numbers.")


class _TaskDataError(ValueError):
    """Task data with NaN or infinite values (raised as the eager method's ValueError)."""


def compile(  # noqa: A001  (mirrors torch.compile)
    method: Method, *, backend: str = "inductor", mode: str | None = None,
    loop: str = "auto", fallback: bool = False, cache_size: int = DEFAULT_CACHE_SIZE,
) -> CompiledMethod:
    """Compile ``method``'s batched meta-gradient; see the module docstring.

    ``backend``, ``mode``: passed to ``torch.compile``. ``loop``: ``"auto"``,
    ``"unrolled"`` or ``"stepped"``. ``fallback``: run the eager method (warning once)
    where compilation fails, instead of raising. ``cache_size``: how many input
    signatures to keep compiled (least recently used evicted).
    """
    if not isinstance(method, Method):
        raise TypeError(f"compile() takes a metagrad method, got {type(method).__name__}")
    if method.batching != "vmap":
        raise ValueError("compile() needs batching='vmap' (the loop fallback is not traced)")
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    if loop == "stepped" and mode == "reduce-overhead":
        raise ValueError("loop='stepped' keeps outputs of earlier graph replays, which CUDA "
                         "graphs (mode='reduce-overhead') overwrite; use loop='unrolled'")
    if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
        raise ValueError(f"cache_size must be a positive integer, got {cache_size!r}")
    if not isinstance(fallback, bool):
        raise TypeError(f"fallback must be True or False, got {fallback!r}")
    return CompiledMethod(method, backend, mode, loop, fallback, cache_size)
