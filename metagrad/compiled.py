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

**Inner loops: unrolled or scanned** (``loop=``). ``"unrolled"`` traces the batched
computation as it runs eagerly, K inner steps as K copies of the step: tracing and code
generation grow with K (about 11, 23 and 35 s for K = 1, 5, 10 on the sinusoid MLP, one
CPU of a loaded 2-core machine). ``"scan"`` writes the K inner steps, batched over tasks,
as one torch ``scan`` loop whose body is traced and compiled once; MAML's backward pass is then the
reverse sweep v ← v − αH(θ⁽ᵏ⁾)v, k = K−1 … 0, from v = ∇L_val(φ) over the stored
iterates, a second ``scan`` (the same meta-gradient as ``backward="trajectory"``, Finn et
al. 2017 eq. (1)-(2)); the other methods get the inner loop's result
(``metagrad._inner.KnownInnerLoop``) and run their own per-task code after it. Compile
time is then the same for every K and the call is 1.1-1.2× the unrolled one, but
torch 2.13's persistent caches do not store graphs with ``scan`` (a new process compiles
them again). ``"auto"`` (default) scans from :data:`SCAN_FROM` inner steps on. MAML with a
checkpointed trajectory stays unrolled (the scanned sweep stores every iterate), and so
does everything on torch releases without ``scan``.

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
time on a small machine. On CUDA the default mode is ``"reduce-overhead"`` (CUDA graphs),
with the unrolled form (the scanned one is not yet run on a GPU).

Forward-over-reverse Hessian-vector products (``hvp="fwdrev"``) do not trace on torch
2.13 (dynamo fails on ``torch.func.jvp`` through ``nn.functional.linear``): such a method
raises, or with ``fallback=True`` runs eagerly; ``hvp="revrev"`` gives the same numbers.
"""

from __future__ import annotations

import functools
import time
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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

LOOPS = ("auto", "unrolled", "scan")
SCAN_FROM = 6
"""``loop="auto"`` scans the inner loop from this many inner steps on. Measured with
``python -m metagrad_bench.compile_time`` (MAML, sinusoid MLP, 25 tasks, one pinned CPU,
new processes): the unrolled form compiles in about 11, 23 and 35 s at K = 1, 5, 10 and
its warm cache loads in 5-8 s; the scanned form compiles in about 17 s at every K but
torch 2.13's FX-graph cache does not store graphs with ``scan`` (warm ~11 s), and its
call is 1.1-1.2× the unrolled one. Below K = 6 the unrolled compile costs at most ~25 s
and the faster call and the persistent cache win; from K = 6 on, the flat compile time."""

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
    train, val = tasks.train, tasks.val
    if (type(train) is tuple and type(val) is tuple  # the common (x, y) batches, quickly
            and all(type(x) is Tensor for x in train) and all(type(x) is Tensor for x in val)):
        structure: Any = (len(train), len(val))
        leaves: Any = (*train, *val)
    else:
        leaves, structure = torch_pytree.tree_flatten((train, val))
    return (_loss_key(loss), tuple(param_keys), structure, tuple(_leaf_key(x) for x in leaves))


def _all_finite(train: Any, val: Any) -> Tensor:
    """One 0-dim bool: every floating-point task tensor is finite (computed in a graph)."""
    flags = [torch.isfinite(x).all() for x in torch_pytree.tree_leaves((train, val))
             if isinstance(x, Tensor) and x.is_floating_point()]
    return torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool)


def _means(diag: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The task means of the pre- and post-update losses (MetaGradient's two scalars)."""
    return diag["pre_update_loss"].mean(), diag["post_update_loss"].mean()


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
    """(loss, θ, train, val) ↦ (mean gᵢ, per-task diagnostics, all task data finite, the
    mean pre- and post-update losses)."""

    def whole(loss, theta, train, val):
        grad, diag = method.batched(loss)(theta, train, val)
        return grad, diag, _all_finite(train, val), _means(diag)

    return whole


@functools.cache
def _scan_available() -> bool:
    """torch's ``scan`` higher-order operator with ``reverse`` (a prototype in torch 2.13)."""
    try:
        import inspect

        from torch._higher_order_ops.scan import scan
    except ImportError:
        return False
    return "reverse" in inspect.signature(scan).parameters


def _scanned(method: Method) -> Callable:
    """(loss, θ, train, val) ↦ (mean gᵢ, per-task diagnostics, all task data finite), with
    the K inner steps (and MAML's K sweep steps) as torch ``scan`` loops whose bodies are
    traced once: what is compiled does not grow with K.

    The loops run over all tasks at once (the body is ``vmap`` over tasks; ``scan`` itself
    is not under ``vmap``). MAML's meta-gradient is then the reverse sweep
    v ← v − αH(θ⁽ᵏ⁾)v, k = K−1 … 0, from v = ∇L_val(φ) over the stored iterates (the
    ``backward="trajectory"`` algorithm: the same number as autograd through the loop).
    The other methods get the inner loop's result through ``KnownInnerLoop`` and run their
    own per-task code after it unchanged.
    """
    from torch._higher_order_ops.scan import scan

    lam = method._inner_lam()
    maml = isinstance(method, MAML)
    mode = resolve_mode(method.hvp, "cpu")  # the same on every device today

    def run(loss, theta, train, val):
        num_tasks = torch_pytree.tree_leaves(train)[0].shape[0]
        phi0 = {k: v.expand(num_tasks, *v.shape).clone() for k, v in theta.items()}

        def inner(phi, _):
            def one(p, b):
                new, value, _ = gd_step(loss, theta, p, b, method.inner_lr, lam)
                return new, value

            new, value = vmap(one)(phi, train)
            # scan's outputs may not alias its carry: the stored iterate is a copy.
            return new, ((value, pt.clone(phi)) if maml else value)

        steps = torch.zeros(method.steps, device=phi0[next(iter(phi0))].device)
        phi, outputs = scan(inner, phi0, steps)
        finite = _all_finite(train, val)
        if not maml:
            inner_losses = outputs.transpose(0, 1)

            def one(tr, va, p, losses):
                known = KnownInnerLoop(loss, InnerResult(p, losses[0], losses), method.steps,
                                       method.inner_lr, lam)
                return method._task_result(known, theta, tr, va)

            grads, diag = vmap(one)(train, val, phi, inner_losses)
            return pt.mean0(grads), diag, finite, _means(diag)

        values, trajectory = outputs
        v, post = vmap(grad_and_value(loss))(phi, val)

        def back(u, point):
            def one(p, b, w):
                return pt.axpy(-method.inner_lr, hvp(loss, p, b, w, mode), w)

            new = vmap(one)(point, train, u)
            return new, torch.zeros((), device=post.device)

        v, _ = scan(back, v, trajectory, reverse=True)
        inner_losses = values.transpose(0, 1)
        # The eager method's diagnostics (Method._task_result), batched.
        diag = {"inner_losses": inner_losses, "pre_update_loss": inner_losses[:, 0],
                "post_update_loss": post, "grad_norm": pt.norm_per_task(v)}
        if method.diagnose != "off":  # the last iterate is checked too, as in the eager call
            diag["final_inner_loss"] = vmap(loss)(phi, train)
        return pt.mean0(v), diag, finite, _means(diag)

    return run


# ------------------------------------------------------------------------- the wrapper


@dataclass
class _Entry:
    program: Callable | None  # None: this signature runs the eager method (fallback)
    loss: Any  # kept alive: the key holds its code object, guards may refer to it
    loop: str = "unrolled"


class CompiledMethod:
    """A metagrad method whose batched meta-gradient runs compiled; see the module docstring.

    Call it like the method. ``compile_seconds`` maps each compiled signature to the wall
    time of its first call (tracing + code generation + one run); ``signatures`` lists the
    cached ones, least recently used first; ``eager_signatures`` those running eagerly after
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

    def loop_form(self, device: torch.device | str = "cpu") -> str:
        """``"unrolled"`` or ``"scan"``: the form this method compiles to on ``device``."""
        device = torch.device(device)
        if self.loop != "auto":
            return self.loop
        checkpointed = (isinstance(self.method, MAML)
                        and isinstance(self.method.backward, Trajectory)
                        and self.method.backward.checkpoint not in (None, 1))
        if (self.method.steps < SCAN_FROM or checkpointed
                or self._mode(device) == "reduce-overhead" or not _scan_available()):
            return "unrolled"
        return "scan"

    def _mode(self, device: torch.device) -> str | None:
        if self.mode is None and device.type == "cuda" and self.backend == "inductor":
            return "reduce-overhead"  # CUDA graphs: launch overhead dominates small tasks
        return self.mode

    def _program(self, device: torch.device, cpp_wrapper: bool = True) -> tuple[Callable, str]:
        loop = self.loop_form(device)
        fn = _scanned(self.method) if loop == "scan" else _unrolled(self.method)
        mode = self._mode(device)
        options: dict[str, Any] = {}
        if cpp_wrapper and self.backend == "inductor" and device.type == "cpu" and mode is None:
            # One C++ build per graph instead of one per fused kernel, and the scan loop
            # runs in C++ rather than in Python.
            options["cpp_wrapper"] = True
        compiled = torch.compile(_own_code(fn), backend=self.backend, mode=mode,
                                 options=options or None, dynamic=False, fullgraph=True)
        return compiled, loop

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
        try:
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
                out = self._run(entry, loss, theta, tasks, first=True)
            except Exception as err:  # noqa: BLE001
                if not _cpp_build_failed(err):
                    raise
                # inductor's C++ wrapper does not build some graphs (torch 2.13: duplicate
                # buffer declarations around a scan of length 1); its Python wrapper does.
                entry.program, entry.loop = self._program(device, cpp_wrapper=False)
                out = self._run(entry, loss, theta, tasks, first=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.compile_seconds[key] = time.perf_counter() - start
        except _TaskDataError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure to trace or compile
            return self._fall_back(key, entry, err, loss, theta, tasks)
        self._insert(key, entry)
        return out

    def _fall_back(self, key: tuple, entry: _Entry, err: Exception, loss: Loss,
                   theta: Params, tasks: Task) -> MetaGradient:
        """Raise what failed or, with ``fallback=True``, run this signature eagerly from now
        on (warning once per compiled method)."""
        message = self._failure(err)
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

    def _run(self, entry: _Entry, loss: Loss, theta: Params, tasks: Task,
             first: bool = False) -> MetaGradient:
        assert entry.program is not None
        try:
            grad, diag, finite, means = entry.program(loss, theta, tasks.train, tasks.val)
        except Exception as err:
            if first:
                raise
            raise _ProgramFailed from err  # a recompilation failed: see __call__
        if not bool(finite):
            _check_tasks(tasks, theta)  # raises the eager method's message, naming the tensor
            raise _TaskDataError("tasks contain NaN or infinite values")
        if self._mode(next(iter(theta.values())).device) == "reduce-overhead":
            # CUDA-graph outputs live in a buffer the next replay overwrites.
            grad = {k: v.clone() for k, v in grad.items()}
            diag = {k: v.clone() for k, v in diag.items()}
            means = (means[0].clone(), means[1].clone())
        if self.method.diagnose != "off":
            return self.method.finish(loss, theta, tasks, grad, diag)
        # What Method.finish returns without diagnostics, with the task means taken in
        # the graph.
        return MetaGradient(grad=grad, pre_update_loss=means[0], post_update_loss=means[1],
                            diagnostics=diag, method=self.method.name)

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
                "flow (if on a tensor's value), no .item() or .tolist(), no printing; if the "
                "loss has none of these, the failure is torch.compile's own. The eager "
                "method gives the same numbers (fallback=True runs it for such signatures).")


def _cpp_build_failed(err: BaseException | None) -> bool:
    """Whether a C++ build of inductor's (``CppCompileError``) is in ``err``'s chain."""
    while err is not None:
        if type(err).__name__ == "CppCompileError" or "CppCompileError" in str(err)[:200]:
            return True
        err = err.__cause__ or err.__context__
    return False


class _ProgramFailed(Exception):
    """A compiled program failed on a later call (e.g. a recompilation for a changed
    closure); its cause is the original error."""


class _TaskDataError(ValueError):
    """Task data with NaN or infinite values (raised as the eager method's ValueError)."""


def compile(  # noqa: A001  (mirrors torch.compile)
    method: Method, *, backend: str = "inductor", mode: str | None = None,
    loop: str = "auto", fallback: bool = False, cache_size: int = DEFAULT_CACHE_SIZE,
) -> CompiledMethod:
    """Compile ``method``'s batched meta-gradient; see the module docstring.

    ``backend``, ``mode``: passed to ``torch.compile``. ``loop``: ``"auto"``,
    ``"unrolled"`` or ``"scan"``. ``fallback``: run the eager method (warning once)
    where compilation fails, instead of raising. ``cache_size``: how many input
    signatures to keep compiled (least recently used evicted).
    """
    if not isinstance(method, Method):
        raise TypeError(f"compile() takes a metagrad method, got {type(method).__name__}")
    if method.batching != "vmap":
        raise ValueError("compile() needs batching='vmap' (the loop fallback is not traced)")
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    if loop == "scan":
        if not _scan_available():
            raise ValueError(f"loop='scan' needs torch's scan operator with reverse=, which "
                             f"torch {torch.__version__} does not have; use loop='unrolled'")
        if method.steps < 2:
            raise ValueError(f"loop='scan' needs steps >= 2 (a loop to scan), got "
                             f"steps={method.steps}")
        if (isinstance(method, MAML) and isinstance(method.backward, Trajectory)
                and method.backward.checkpoint not in (None, 1)):
            raise ValueError("loop='scan' stores every inner iterate for the backward sweep, "
                             "so a checkpointed trajectory cannot use it; use loop='unrolled'")
    if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
        raise ValueError(f"cache_size must be a positive integer, got {cache_size!r}")
    if not isinstance(fallback, bool):
        raise TypeError(f"fallback must be True or False, got {fallback!r}")
    return CompiledMethod(method, backend, mode, loop, fallback, cache_size)
