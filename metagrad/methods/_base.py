"""The shared shape of every method: validate, detach, map a per-task function
over the task dimension (``torch.func.vmap``, or a loop as fallback), average.

A method is a frozen dataclass whose fields are its whole configuration
(``MAML(steps=5, inner_lr=0.01)``); ``__call__(loss, params, tasks)`` runs it.
Subclasses implement ``_per_task(loss, theta, train, val)`` for one task and
return a :class:`TaskOutput`, and describe themselves with class variables
(``name``, ``paper``, ``target``, ``log_columns``) so that applications never
keep their own lists of methods or settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.func import vjp, vmap
from torch.utils import _pytree as torch_pytree

from .. import _pytree as pt
from .. import _rates
from .._batched import task_dims
from .._hvp import HVP_MODES, Loss, resolve_mode
from .._inner import InnerLoop, InnerResult
from .._pytree import Params
from .._rates import Rates
from .._rules import GD, Adam, Momentum, rule_label, rule_named
from .._task import Task
from .._validate import non_negative_int, settle
from ..diagnose import DIAGNOSE_MODES, Finding, check_finite, emit

BATCHING_MODES = ("vmap", "loop")

SETTINGS = ("steps", "inner_lr", "lam", "cg_iters", "terms", "step")
"""The numerical settings a method can read, in the one vocabulary used by code, CLI
flags, CSV columns and plot labels: K inner steps, inner step size α, λ, CG iterations m,
Neumann terms J and Neumann step η. Every other field of a method is a code-path option."""


@dataclass
class TaskOutput:
    """One task's result, as a method's per-task code returns it.

    Attributes
    ----------
    grad : dict of str to Tensor
        gᵢ, shaped like the parameters.
    pre_update_loss : Tensor
        L_tr(θ).
    post_update_loss : Tensor
        L_val(φ).
    diagnostics : dict of str to Tensor
        The task's diagnostics (``inner_losses``, solver records, …).
    phi : dict of str to Tensor
        The adapted parameters φ, whose train loss the numerical checks read.
    hyper_grad : dict
        The task's meta-gradient with respect to the inner loop's meta-parameters
        (learned rates, momentum's β), shaped like them; empty when there are none.
    """

    grad: Params
    pre_update_loss: Tensor
    post_update_loss: Tensor
    diagnostics: dict[str, Tensor]
    phi: Params
    hyper_grad: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetaGradient:
    """Result of ``method(loss, params, tasks)``.

    Attributes
    ----------
    grad : dict of str to Tensor
        The mean over tasks of the per-task vectors gᵢ, shaped like ``params``, in their
        dtype and on their device.
    pre_update_loss : Tensor
        Mean over tasks of L_tr(θ) (0-dim).
    post_update_loss : Tensor
        Mean over tasks of L_val(φ) (0-dim).
    diagnostics : dict of str to Tensor
        Per-task tensors with the task index in dim 0 (inner losses, CG residuals, …).
    method : str
        The method's name.
    findings : list of Finding
        The numerical problems found, as values (empty when all is well).
    hyper_grad : dict
        The mean meta-gradient with respect to the inner loop's meta-parameters:
        ``hyper_grad["inner_lr"]`` with the keys and shapes of ``inner_lr`` when it is a
        tensor or a dict of tensors, ``hyper_grad["beta"]`` for a momentum β given as a
        tensor; empty when the inner loop has none.
    """

    grad: Params
    pre_update_loss: Tensor
    post_update_loss: Tensor
    diagnostics: dict[str, Tensor] = field(default_factory=dict)
    method: str = ""
    findings: list[Finding] = field(default_factory=list)
    hyper_grad: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        """The findings' messages; empty when all is well."""
        return [f.message for f in self.findings]


@dataclass(frozen=True)
class Method:
    """Base of every method: a frozen dataclass whose fields are its whole configuration;
    ``method(loss, params, tasks)`` returns a :class:`MetaGradient`. A new method subclasses
    it (or one of the methods), sets ``name`` and implements ``_from_inner`` (or
    ``_per_task``); :func:`metagrad.register_method` makes every application run it.

    Parameters
    ----------
    steps : int
        K ≥ 0, the inner steps per task.
    inner_lr : float, Tensor or dict of str to Tensor
        The inner step size α > 0, or learned rates: a 0-dim tensor, or one tensor per
        adapted parameter (per tensor, per entry, per step; see :class:`InnerLoop`).
    inner : GD, Momentum, Adam or str
        The inner update rule: ``mg.GD()`` (default), ``mg.Momentum(beta)``, ``mg.Adam()``,
        or its name.
    batching : {"vmap", "loop"}
        All tasks at once with ``torch.func.vmap`` (default), or a Python loop over them.
    hvp : {"auto", "revrev", "fwdrev"}
        How Hessian-vector products are taken (``"auto"``: the measured default).
    diagnose : {"warn", "error", "record", "off"}
        What the numerical checks do with a problem they find (``metagrad.diagnose``).
    """

    steps: int = 5
    inner_lr: float | Tensor | Rates = 0.01
    inner: GD | Momentum | Adam | str = field(default="gd", kw_only=True)
    batching: str = field(default="vmap", kw_only=True)
    hvp: str = field(default="auto", kw_only=True)
    diagnose: str = field(default="warn", kw_only=True)

    name: ClassVar[str] = "method"
    """Short name, used in the registry ``metagrad.METHODS``, on the command line and in CSVs."""
    title: ClassVar[str] = ""
    """Human-readable name."""
    paper: ClassVar[str] = ""
    """The reference that defines the method."""
    target: ClassVar[str] = "maml"
    """Which bilevel-exact meta-gradient the method computes or approximates: ``"maml"``
    (∇_θ L_val(θ⁽ᴷ⁾(θ)) with the same steps and inner_lr) or ``"implicit"`` (the implicit
    gradient λ(H(φ*) + λI)⁻¹ ∇L_val(φ*) of the proximal inner problem at the same lam)."""
    gradient_of: ClassVar[str | None] = None
    """What gᵢ is the exact gradient of, where it is one (checked by finite differences):
    ``"meta_objective"`` (θ ↦ L_val(θ⁽ᴷ⁾(θ))), ``"val_at_phi"`` (L_val at φ, in φ),
    ``"train_along_path"`` (α Σₖ ∇L_tr(θ⁽ᵏ⁾)), ``"penalty_at_phi"`` (L_val + λ‖∇L_tr‖² at φ,
    in φ), or None (the implicit methods: a linear-solver iterate, no objective)."""
    log_columns: ClassVar[dict[str, str]] = {}
    """Per-task diagnostics worth a column in a training log, each with the reduction
    over tasks (``"min"``, ``"max"`` or ``"mean"``) that flags trouble."""
    oracle_name: ClassVar[str | None] = None
    """The name under which the oracle (``metagrad_reference.METHODS``) computes the same
    quantity densely; None: the method's own ``name``. A new method that computes a known
    quantity another way names that quantity here."""
    code_paths: ClassVar[dict[str, tuple[Any, ...]]] = {
        "batching": BATCHING_MODES, "hvp": ("revrev", "fwdrev")}
    """Options that select another code path to the same number, with their values; the
    verification runs each one."""

    hyper_gradient: ClassVar[str | None] = None
    """How the method differentiates the inner loop's meta-parameters (learned rates,
    momentum's β): ``"exact"`` (through every inner step, as MAML), ``"first_order"`` (the
    inner gradients held constant, as FOMAML treats the loop), or None: the method's
    meta-direction is not the gradient of an objective in them (Reptile) or does not depend
    on them (the implicit methods), and it refuses rate tensors that require a gradient."""

    def __post_init__(self) -> None:
        settle(self, "steps", non_negative_int)
        object.__setattr__(self, "inner_lr", _rates.normalise(self.inner_lr))
        object.__setattr__(self, "inner", rule_named(self.inner))
        if self.batching not in BATCHING_MODES:
            raise ValueError(f"batching must be one of {BATCHING_MODES}, got {self.batching!r}")
        if self.hvp not in HVP_MODES:
            raise ValueError(f"hvp must be one of {HVP_MODES}, got {self.hvp!r}")
        if self.diagnose not in DIAGNOSE_MODES:
            raise ValueError(f"diagnose must be one of {DIAGNOSE_MODES}, got {self.diagnose!r}")

    # -- self-description ------------------------------------------------------------------
    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """The numerical settings this method reads (a subset of :data:`SETTINGS`, in order)."""
        own = {f.name for f in fields(cls)}
        return tuple(s for s in SETTINGS if s in own)

    @classmethod
    def default_settings(cls) -> dict[str, Any]:
        """The class defaults of :meth:`setting_names`, e.g. ``IMAML``: ``lam=1.0, cg_iters=5``."""
        defaults = {f.name: f.default for f in fields(cls)}
        return {name: defaults[name] for name in cls.setting_names()}

    @classmethod
    def verify_plan(cls, inner_lr: float, lam: float) -> list[dict[str, Any]]:
        """The settings ``metagrad verify`` checks this method at, on a problem whose
        natural step size and λ are ``inner_lr`` and ``lam``: by default one and five inner
        steps, the other settings at their class defaults."""
        rest = {k: v for k, v in cls.default_settings().items() if k not in ("steps", "inner_lr")}
        return [dict(steps=k, inner_lr=inner_lr, **rest) for k in (1, 5)]

    @classmethod
    def test_plan(cls, inner_lr: float, lam: float, dim: int,
                  steps: tuple[int, ...] = (0, 1, 3, 10)) -> list[dict[str, Any]]:
        """The settings the accuracy suite checks this method at, on a problem of dimension
        ``dim`` whose natural step size and λ are ``inner_lr`` and ``lam``: by default every
        inner step count in ``steps``, the other settings at their class defaults."""
        rest = {k: v for k, v in cls.default_settings().items() if k not in ("steps", "inner_lr")}
        return [dict(steps=k, inner_lr=inner_lr, **rest) for k in steps]

    def settings(self) -> dict[str, Any]:
        """This method's numerical settings as a dict, e.g. ``{"steps": 5, "inner_lr": 0.01}``."""
        return {name: getattr(self, name) for name in self.setting_names()}

    def config(self) -> dict[str, Any]:
        """Every field (settings and options) as a plain dict, for CSV rows and reports."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @property
    def implicit(self) -> bool:
        """True for the methods whose target is the implicit gradient (IMAML, Neumann)."""
        return self.target == "implicit"

    # -- per-task work, supplied by each method -------------------------------------------
    @property
    def inner_loop(self) -> InnerLoop:
        """The inner loop this method runs on every task (:class:`metagrad.InnerLoop`), made
        once per method object: it is read inside compiled code, which must not build it."""
        loop = self.__dict__.get("_inner_loop")
        if loop is None:
            loop = self.build_inner_loop()
            object.__setattr__(self, "_inner_loop", loop)
        return loop

    def build_inner_loop(self) -> InnerLoop:
        """The inner loop of this method, built from its fields: ``steps`` plain gradient
        descent steps of size ``inner_lr``. A new method overrides this to run another."""
        assert not isinstance(self.inner, str)  # normalised in __post_init__
        return InnerLoop(self.steps, self.inner_lr, self.inner)

    def _per_task(self, loss: Loss, theta: Params, train: Any, val: Any,
                  hyper: dict[str, Any]) -> TaskOutput:
        """One task: the inner loop, then :meth:`_from_inner`. With meta-parameters in
        ``hyper`` and ``hyper_gradient == "first_order"``, also their first-order
        meta-gradient (:meth:`_first_order`). MAML, which differentiates through the loop,
        replaces this whole function."""
        if hyper and self.hyper_gradient == "first_order":
            return self._first_order(loss, theta, train, val, hyper)
        inner = self.inner_loop.run(loss, theta, train, hyper=hyper or None)
        return self._from_inner(loss, theta, train, val, inner)

    def _first_order(self, loss: Loss, theta: Params, train: Any, val: Any,
                     hyper: dict[str, Any]) -> TaskOutput:
        """gᵢ from :meth:`_from_inner`, and the meta-parameters' first-order meta-gradient
        (∂φ/∂h)ᵀ gᵢ with every inner gradient held constant: for step sizes,
        ∂/∂αₖ = −uₖ ⊙ gᵢ summed over the entries a rate covers. gᵢ must be the gradient in φ
        of the method's objective at φ (FOMAML: ∇L_val(φ)), as it is when the loop is
        treated as a constant; Li et al. 2017 (Meta-SGD) and Antoniou et al. 2019 (MAML++)
        use this first-order form too."""

        def phi_of(h: dict[str, Any]):
            inner = self.inner_loop.run(loss, theta, train, hyper=h, first_order=True)
            return inner.phi, (inner.pre_update_loss, inner.inner_losses)

        phi, pullback, (pre, losses) = vjp(phi_of, hyper, has_aux=True)  # type: ignore[misc]
        out = self._from_inner(loss, theta, train, val, InnerResult(phi, pre, losses))
        out.hyper_grad = pullback(out.grad)[0]
        return out

    def _from_inner(self, loss: Loss, theta: Params, train: Any, val: Any,
                    inner: InnerResult) -> TaskOutput:
        """One task's gᵢ from its finished inner loop (the methods that treat the loop as a
        constant)."""
        raise NotImplementedError

    def gradient_equivalents(self) -> float:
        """Predicted cost per task in gradient-equivalents (one forward + backward pass of
        the loss on one task batch; a Hessian-vector product counts as two)."""
        raise NotImplementedError

    # -- the compiled path's scanned form (``metagrad.compile``) ------------------------------
    scan_needs_trajectory: ClassVar[bool] = False
    """Whether :meth:`batched_from_scan` needs the inner iterates θ⁽ᵏ⁾ (MAML's sweep does).
    Such a method sweeps back over them and says how in three parts, which the compiled
    path's stepped form compiles one by one: :meth:`sweep_start`, :meth:`sweep_step` (once
    per iterate, last first) and :meth:`sweep_finish`."""

    def sweep_start(self, loss: Loss, phi: Params, val: Any) -> tuple[Params, Tensor]:
        """The reverse sweep's start, every task at once: (the swept vector, L_val(φ))."""
        raise NotImplementedError

    def sweep_step(self, loss: Loss, point: Params, train: Any, v: Params) -> Params:
        """One step of the reverse sweep at the iterates ``point``, every task at once."""
        raise NotImplementedError

    def sweep_finish(self, loss: Loss, train: Any, inner: InnerResult, v: Params,
                     post: Tensor) -> tuple[Params, dict[str, Any], dict[str, Tensor]]:
        """(mean gᵢ, mean meta-parameter gradients, per-task diagnostics) from the sweep."""
        raise NotImplementedError

    @property
    def scannable(self) -> str | None:
        """None when the inner loop can run as one ``scan`` (see :meth:`batched_from_scan`),
        else why not."""
        if self.inner_loop.hyper() and self.hyper_gradient is not None:
            return ("the scanned loop does not differentiate the inner loop's "
                    "meta-parameters (learned rates)")
        return None

    def batched_from_scan(self, loss: Loss, theta: Params, train: Any, val: Any,
                          inner: InnerResult, trajectory: Params | None
                          ) -> tuple[Params, dict[str, Any], dict[str, Tensor]]:
        """``(mean gᵢ, mean meta-parameter gradients, per-task diagnostics)`` from every
        task's inner loop, run beforehand by :meth:`InnerLoop.scan` (batched over tasks).
        By default each task's :meth:`_from_inner`, under ``vmap``."""

        def one(tr, va, phi, losses):
            return self._task_result(loss, theta, tr, va, {},
                                     InnerResult(phi, losses[0], losses))

        grads, hyper_grads, diag = vmap(one)(train, val, inner.phi, inner.inner_losses)
        return pt.mean0(grads), _mean0_tree(hyper_grads), diag

    # -- the public call -----------------------------------------------------------------
    def _findings(self, loss: Loss, theta: Params, tasks: Task,
                  diag: dict[str, Tensor]) -> list[Finding]:
        """Numerical problems visible in the per-task diagnostics (extended by subclasses)."""
        mode = resolve_mode(self.hvp, next(iter(theta.values())).device)
        # The measurements that explain a finding are kept for a while across calls (they
        # cost more than the meta-gradient): one dict per method object.
        memo = self.__dict__.setdefault("_explained", {})
        memo["calls"] = memo.get("calls", 0) + 1
        return check_finite(diag) + self.inner_loop.check(diag, loss, theta, tasks, mode,
                                                          self.batching, memo)

    def hyper(self, like: Tensor) -> dict[str, Any]:
        """The inner loop's meta-parameters as the inputs of this call's computation:
        detached copies, in the dtype and on the device of ``like`` (the parameters)."""
        out: dict[str, Any] = {}
        for name, value in self.inner_loop.hyper().items():
            converted = _rates.as_hyper(value, like)
            if converted is not None:
                out[name] = converted
        return out

    def batched(self, loss: Loss) -> Callable[..., tuple[Params, dict[str, Any],
                                                         dict[str, Tensor]]]:
        """The pure batched computation ``(θ, train, val, hyper) ↦ (mean gᵢ, mean
        meta-parameter gradients, per-task diagnostics)``, ``hyper`` as :meth:`hyper` gives
        it (empty when the loop has no meta-parameters).

        No validation and no Python-side checks, so it can be traced by ``torch.compile``
        (see :func:`metagrad.compile`). With the checks on (``diagnose != "off"``) it also
        returns ``final_inner_loss`` = L_tr(φ) per task: one forward pass, so that the last
        inner iterate, the only one for K = 1, is checked like the others.
        """

        def one(theta: Params, train: Any, val: Any, hyper: dict[str, Any]):
            return self._task_result(loss, theta, train, val, hyper)

        def run(theta: Params, train: Any, val: Any, hyper: dict[str, Any] | None = None):
            hyper = hyper or {}
            if self.batching == "vmap":
                # Non-tensor leaves of a batch (names, flags) are passed to every task as they
                # are; random ops (dropout) draw independently per task, as in a loop.
                dims = (None, task_dims(train), task_dims(val), None)
                with self._vmap_errors():
                    grads, hyper_grads, diag = vmap(one, in_dims=dims, randomness="different")(
                        theta, train, val, hyper)
            else:
                grads, hyper_grads, diag = _loop(lambda th, tr, va: one(th, tr, va, hyper),
                                                 theta, Task(train, val))
            return pt.mean0(grads), _mean0_tree(hyper_grads), diag

        return run

    @contextmanager
    def _vmap_errors(self) -> Iterator[None]:
        """``vmap``'s failures on the loss said in the user's terms, with the way out."""
        try:
            yield
        except (RuntimeError, ValueError) as err:
            if "vmap" not in str(err) and "Batching rule" not in str(err):
                raise
            raise RuntimeError(
                f"{self.name}: torch.func.vmap could not run the loss over the task "
                f"dimension ({str(err).splitlines()[0][:300]}). This happens when the "
                "loss calls .item() or .tolist(), branches in Python on a tensor's "
                "value, or uses an operation vmap has no batching rule for. Run the "
                "tasks one at a time instead with batching='loop' (the same numbers, "
                "slower), or rewrite that part with torch.where.") from err

    def batched_eager(self, loss: Loss, theta: Params, train: Any, val: Any,
                      hyper: dict[str, Any]
                      ) -> tuple[Params, dict[str, Any], dict[str, Tensor]] | None:
        """What :meth:`batched` computes, run eagerly with the inner loop by reverse mode on
        the task-batched parameters (:meth:`metagrad.InnerLoop.run_batched`: one ``vmap``
        of the forward pass and one ``torch.autograd.grad`` per step instead of
        ``torch.func`` transforms per task) and each task's rest (:meth:`_from_inner`)
        under ``vmap``; None where the method has no such form for these settings (then
        :meth:`batched` runs). The numbers are :meth:`batched`'s up to float rounding."""
        if (self.batching != "vmap" or type(self)._per_task is not Method._per_task
                or (hyper and self.hyper_gradient == "first_order")):
            return None
        dims = (task_dims(train), task_dims(val))
        inner = self.inner_loop.run_batched(loss, theta, train, dims[0])
        return self.batched_from_inner(loss, theta, train, val, inner, dims)

    def batched_from_inner(self, loss: Loss, theta: Params, train: Any, val: Any,
                           inner: InnerResult, dims: tuple[Any, Any]
                           ) -> tuple[Params, dict[str, Any], dict[str, Tensor]]:
        """:meth:`batched_eager`'s rest, from every task's finished inner loop (stacked
        over tasks): by default each task's :meth:`_from_inner` under ``vmap``; a method
        whose rest is a gradient at φ overrides it with reverse mode on the stacked φ.
        ``dims``: ``vmap``'s ``in_dims`` of the train and val batches."""

        def one(tr, va, phi, pre, losses):
            return self._task_result(loss, theta, tr, va, {}, InnerResult(phi, pre, losses))

        grads, hyper_grads, diag = vmap(one, in_dims=(*dims, 0, 0, 0), randomness="different")(
            train, val, inner.phi, inner.pre_update_loss, inner.inner_losses)
        return pt.mean0(grads), _mean0_tree(hyper_grads), diag

    def _task_result(self, loss: Loss, theta: Params, train: Any, val: Any,
                     hyper: dict[str, Any], inner: InnerResult | None = None
                     ) -> tuple[Params, dict[str, Any], dict[str, Tensor]]:
        """One task's gᵢ, meta-parameter gradients and diagnostics: what :meth:`batched`
        maps over the tasks (from the task's finished inner loop when ``inner`` is given).
        With the checks on, ``final_inner_loss`` = L_tr(φ) too (one forward pass)."""
        out = (self._per_task(loss, theta, train, val, hyper) if inner is None
               else self._from_inner(loss, theta, train, val, inner))
        # float64: a finite meta-gradient with entries beyond 1.8e19 must not read as inf.
        diag = {**out.diagnostics, "pre_update_loss": out.pre_update_loss,
                "post_update_loss": out.post_update_loss,
                "grad_norm": pt.norm(out.grad, torch.float64)}
        if self.diagnose != "off":
            diag["final_inner_loss"] = loss(pt.detach(out.phi), train)
        return out.grad, out.hyper_grad, diag

    def prepare(self, loss: Loss, params: Mapping[str, Tensor], tasks: Task) -> Params:
        """Validate the call's inputs; return the detached parameters."""
        theta = _check_params(params)
        loop = self.inner_loop  # built here, outside any compiled code
        loop.check_params(theta)
        self._check_hyper(loop, theta)
        self._check_settings_fit(next(iter(theta.values())).dtype)
        _check_tasks(tasks, theta)
        _check_loss(loss, theta, tasks)
        return theta

    def _check_hyper(self, loop: InnerLoop, theta: Params) -> None:
        """A method that cannot differentiate the inner loop's meta-parameters refuses ones
        that ask for a gradient, instead of returning zeros for them."""
        wanted = [name for name, value in loop.hyper().items()
                  if any(t.requires_grad for t in
                         (value.values() if isinstance(value, Mapping) else [value]))]
        if wanted and self.hyper_gradient is None:
            raise ValueError(
                f"{self.name} returns no meta-gradient for {', '.join(wanted)} (tensors that "
                f"require grad): {self.hyper_gradient_note} Learn them with MAML (exact) or "
                "FOMAML (first order), or pass tensors that do not require grad to use them "
                "as fixed step sizes")

    hyper_gradient_note: ClassVar[str] = (
        "its meta-direction is not the gradient of an objective in the inner loop's "
        "meta-parameters.")
    """Why the method has no meta-gradient for learned rates (shown when it refuses them)."""

    def _check_settings_fit(self, dtype: torch.dtype) -> None:
        """Step sizes and λ are multipliers in the parameters' dtype (and 1/λ too): a value
        beyond its range would overflow inside the computation, not name itself."""
        info = torch.finfo(dtype)
        for name in self.setting_names():
            value = getattr(self, name)
            if isinstance(value, float) and value > 0 and not info.tiny <= value <= info.max:
                raise ValueError(
                    f"{name}={value:g} is outside what {dtype} parameters can hold "
                    f"({info.tiny:.3g} to {info.max:.3g}); choose {name} in that range or "
                    "use a wider dtype")

    def finish(self, loss: Loss, theta: Params, tasks: Task, grad: Params,
               diag: dict[str, Tensor], hyper_grad: dict[str, Any] | None = None
               ) -> MetaGradient:
        """Package the result and run the numerical checks of ``metagrad.diagnose``."""
        result = MetaGradient(
            grad=grad,
            pre_update_loss=diag["pre_update_loss"].mean(),
            post_update_loss=diag["post_update_loss"].mean(),
            diagnostics=diag,
            method=self.name,
            hyper_grad=self._hyper_grad_as_given(hyper_grad or {}),
        )
        if self.diagnose != "off":
            result.findings = [Finding(f.kind, f.template, f.tasks, self.name)
                               for f in self._findings(loss, theta, tasks, diag)]
            emit(result.findings, self.diagnose)
        return result

    def _hyper_grad_as_given(self, hyper_grad: dict[str, Any]) -> dict[str, Any]:
        """Meta-parameter gradients in the dtypes and on the devices of the user's tensors."""
        given = self.inner_loop.hyper()
        return {k: _rates.in_given_dtypes(v, given[k]) for k, v in hyper_grad.items()}

    def __call__(self, loss: Loss, params: Mapping[str, Tensor], tasks: Task) -> MetaGradient:
        theta = self.prepare(loss, params, tasks)
        hyper = self.hyper(next(iter(theta.values())))
        with self._vmap_errors():
            result = self.batched_eager(loss, theta, tasks.train, tasks.val, hyper)
        if result is None:
            result = self.batched(loss)(theta, tasks.train, tasks.val, hyper)
        grad, hyper_grad, diag = result
        return self.finish(loss, theta, tasks, grad, diag, hyper_grad)

    # -- meta-training policy, read by ``metagrad train`` (sinusoid regression) ------------
    train_settings: ClassVar[dict[str, Any]] = {}
    """Settings for sinusoid meta-training where the class default does not suit it
    (the measurements behind them: ``bench/results/train_defaults``)."""
    outer_optimizer: ClassVar[str] = "adam"
    """The outer update in meta-training: ``"adam"`` or ``"sgd"`` (θ ← θ − ε g)."""
    outer_lr: ClassVar[float] = 1e-3
    """Its default rate: Adam 1e-3 (Finn, Abbeel & Levine 2017, §5.1)."""
    min_train_steps: ClassVar[int] = 0
    """Fewest inner steps for which meta-training moves θ at all."""
    tuning_grid: ClassVar[dict[str, tuple]] = {}
    """The values of its own settings a study tries on validation tasks (empty: the
    protocol's settings are fixed)."""

    # -- what the audit (metagrad.testing) may compare this method with -------------------
    audit_family: ClassVar[tuple[str, dict[str, Any]] | None] = None
    """The family of ``metagrad_reference.variants`` whose options, as given here, compute this
    method (e.g. ``("unrolled", {"output": "maml"})``); None: only the mistakes that any
    method can make (sum, sign, query batch, off-by-one counts, …) are compared."""
    audit_mistakes: ClassVar[tuple[str, ...]] = ()
    """Keys of the catalogued mistakes of the family (``metagrad.testing.diagnosis``) that
    code claiming this method is compared with when it fails."""

    def audit_curvature(self) -> float:
        """The spectral radius the audit's problems give the train-loss Hessian at θ: α·‖H‖ =
        1/2, so that each factor I − αH moves a gradient by up to half (α the largest rate)."""
        return 0.5 / _rates.largest(self.inner_lr)


def _plain(value: Any) -> Any:
    """Option objects as plain values in a config dict: MAML's backward mode and a default
    update rule by their short name, a rule with other settings by its repr, rates by the
    forms used."""
    if isinstance(value, (int, float, str)) or value is None:
        return value
    if isinstance(value, (Tensor, Rates)):
        return _rates.describe(value)
    if isinstance(value, (GD, Momentum, Adam)):
        label = rule_label(value)
        return label if rule_named(label) == value else repr(value)
    return getattr(value, "name", value)


def _mean0_tree(tree: dict[str, Any]) -> dict[str, Any]:
    """The mean over the leading (task) dimension of every tensor in a nested dict."""
    return torch_pytree.tree_map(lambda v: v.mean(0), tree)


def _loop(one, theta: Params, tasks: Task):
    """Fallback: run the per-task function task by task and stack the results."""
    outs = [one(theta, *tasks.task(i)) for i in range(tasks.num_tasks)]
    return torch_pytree.tree_map(lambda *xs: torch.stack(xs), *outs)


def _check_params(params: Any) -> Params:
    if not isinstance(params, Mapping) or not params:
        raise TypeError(
            "params must be a non-empty dict[str, Tensor], e.g. dict(model.named_parameters()); "
            f"got {type(params).__name__}"
        )
    dtype = device = None
    for k, v in params.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise TypeError(f"params[{k!r}] must be a floating-point tensor, got {v!r:.60}")
        if v.device.type == "meta":
            raise ValueError(
                f"params[{k!r}] is on the meta device (a shape without values, e.g. from "
                "torch.device('meta') or an unmaterialised model); move the model to a real "
                "device first (model.to_empty(device='cpu') and initialise it)")
        if dtype is None:
            dtype, device = v.dtype, v.device
        elif v.dtype != dtype or v.device != device:
            raise ValueError(
                f"all params must share one dtype and device; params[{k!r}] is {v.dtype} on "
                f"{v.device}, others are {dtype} on {device}"
            )
        if not torch.isfinite(v).all():
            # Checked like the task data: otherwise the inner loop would be blamed for it.
            raise ValueError(f"params[{k!r}] contains NaN or infinite values")
    # The meta-gradient is returned as values, so no autograd graph of the caller's is needed.
    return pt.detach(params)


def _check_tasks(tasks: Any, theta: Params) -> None:
    if not isinstance(tasks, Task):
        raise TypeError(f"tasks must be a metagrad.Task, got {type(tasks).__name__}")
    ref = next(iter(theta.values()))
    sizes = {}
    for split in ("train", "val"):
        for i, leaf in enumerate(torch_pytree.tree_leaves(getattr(tasks, split))):
            if isinstance(leaf, torch.Tensor):
                where = f"tasks.{split}[{i}]"
                if leaf.dim() == 0:
                    raise ValueError(f"{where} is 0-dim; every tensor needs a leading task dim")
                if leaf.device != ref.device:
                    raise ValueError(f"{where} is on {leaf.device} but params are on "
                                     f"{ref.device}; move them with tasks.to(device)")
                if leaf.is_floating_point() and leaf.dtype != ref.dtype:
                    raise ValueError(f"{where} is {leaf.dtype} but params are {ref.dtype}; "
                                     f"convert with tasks.to({ref.dtype})")
                if leaf.is_floating_point() and not torch.isfinite(leaf).all():
                    raise ValueError(f"{where} contains NaN or infinite values")
                if leaf.numel() == 0 and leaf.shape[0] > 0:
                    raise ValueError(
                        f"{where} has no examples (shape {tuple(leaf.shape)}): every task "
                        f"needs at least one {split} example (a loss over none is 0/0)")
                sizes[where] = leaf.shape[0]
    if not sizes:
        raise ValueError("tasks hold no tensors")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"inconsistent leading task dimension across task tensors: {sizes}")
    if next(iter(sizes.values())) == 0:
        raise ValueError("tasks have zero tasks in the leading dimension")


def _check_loss(loss: Any, theta: Params, tasks: Task) -> None:
    """One forward pass on the first task: the loss must return a real 0-dim tensor and must
    not write into the parameters. It runs on copies of the parameters and with the random
    number generators restored afterwards, so that checking never changes the caller's
    tensors, module buffers or random stream."""
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(params, batch), got {type(loss).__name__}")
    train, _ = tasks.task(0)  # views of the caller's task tensors
    batch = torch_pytree.tree_map(
        lambda x: x.clone() if isinstance(x, torch.Tensor) else x, train)
    # Copies in a graph (not leaves, so that an in-place write into one is seen below
    # rather than refused by autograd first).
    copies = {k: v.clone().requires_grad_(True).clone() for k, v in theta.items()}
    devices = [v.device for v in theta.values() if v.device.type == "cuda"][:1]
    # With gradients on: the value must be connected to the parameters' graph.
    with torch.enable_grad(), torch.random.fork_rng(devices=devices):
        value = loss(copies, batch)
    changed = [k for k in theta if not torch.equal(copies[k].detach(), theta[k])]
    if changed:
        raise ValueError(
            f"loss(params, batch) wrote into params {changed} in place; a loss must be a pure "
            "function of the parameters (use out-of-place operations, e.g. w = w + 1)")
    # (the task data are finite: checked before, so equality is a fair test)
    wrote = any(not torch.equal(a, b) for a, b in zip(
        torch_pytree.tree_leaves(batch), torch_pytree.tree_leaves(train), strict=True)
        if isinstance(a, torch.Tensor))
    if wrote:
        raise ValueError(
            "loss(params, batch) wrote into the batch in place; a loss must not change its "
            "inputs (use out-of-place operations, e.g. x = x * 2 instead of x.mul_(2))")
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"loss(params, batch) must return a tensor, got {type(value).__name__}")
    if value.dim() != 0:
        raise ValueError(
            f"loss(params, batch) must return a 0-dim scalar tensor, got shape "
            f"{tuple(value.shape)}; reduce it, e.g. with .mean() (or .squeeze() for shape (1,))")
    if not value.is_floating_point():
        raise TypeError(
            f"loss(params, batch) must return a real floating scalar, got {value.dtype}")
    if not value.requires_grad:
        raise ValueError(
            "loss(params, batch) does not depend on params through autograd (its value has "
            "no gradient: returned .detach()ed, computed under torch.no_grad(), or through "
            ".item()/numpy), so every meta-gradient would be zero; compute it from the "
            "tensors in params with differentiable operations")
