"""Every setting of a meta-training run, its defaults, and the objects built from them.

Defaults follow Finn, Abbeel & Levine 2017 §5.1 (sinusoid regression): MLP 1-40-40-1
ReLU, meta-batch 25, 10 + 10 shots, ``inner_lr`` 0.01, K = ``steps`` = 1 inner step in
meta-training (up to 10 at test time), 2000 meta-steps (the quick experiment), float32.

Everything else about a method is read off its class (``metagrad.METHODS``): its own
settings take the class default unless the class's ``train_settings`` chose another value
for this problem (the measurements that chose them: ``bench/results/train_defaults``);
the outer update is the class's ``outer_optimizer`` at ``outer_lr`` (Adam 1e-3, or for
Reptile plain SGD θ ← θ − ε g with ε = 1), unless ``meta_lr`` is given.

**Inner-loop forms** (``inner``, the ``--inner`` flag): the named variants of
``metagrad.INNER_FORMS`` applied to the method, e.g. ``("per_entry",)``: one learned step
size per parameter entry, starting at ``inner_lr`` (Meta-SGD, Li et al. 2017). Learned
rates are meta-parameters: the training loop steps them with θ in the outer optimizer
(:mod:`metagrad.train.loop`). Two methods have their own spellings (:data:`SPELLINGS`):
``metasgd`` is MAML with ``per_entry``, ``anil`` MAML with ``anil``. A run keeps its method
and its forms (``config``, ``summary.json``); folders and tables name it by its variant
name (:func:`variant_name`: ``metasgd``, ``anil``, or ``maml+per_step+multistep``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from .._forms import INNER_FORMS, forms_kwargs, inner_form
from .._module import params_of
from .._validate import non_negative_int, positive_float, positive_int
from ..distributions import Sinusoid
from ..methods import MAML, METHOD_NAMES, METHODS, SETTINGS, Method, method_class
from ..models import mlp

ADAM_META_LR = 1e-3
"""Finn et al.'s meta learning rate (Adam), also used for the joint-training baseline."""
METHOD_SETTINGS = tuple(s for s in SETTINGS if s not in ("steps", "inner_lr"))
"""Settings that only some methods read; a run keeps them None for the others."""
HELDOUT_SOURCES = ("torch", "numpy-legacy")
INITS = ("torch", "finn2017")
BASELINE_DATA = ("pooled", "support")
SPELLINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "metasgd": (MAML.name, ("per_entry",)),
    "anil": (MAML.name, ("anil",)),
}
"""Names ``metagrad train --method`` accepts besides the registered methods: name →
(method, inner-loop forms). Meta-SGD (Li, Zhou, Chen & Li 2017) is MAML with one learned
step size per parameter entry; ANIL (Raghu et al. 2020) is MAML adapting the last layer
only."""


def variant_name(method: str, inner: Sequence[str] = ()) -> str:
    """The readable name of ``method`` with the inner-loop forms ``inner``: the method's
    own name without forms, a spelling of :data:`SPELLINGS` where one fits, else the method
    and its forms joined by ``+`` (``maml+per_step+multistep``)."""
    inner = tuple(inner)
    for spelling, (m, forms) in SPELLINGS.items():
        if m == method and forms == inner:
            return spelling
    return "+".join([method, *inner])


def ordered_forms(inner: Sequence[str]) -> tuple[str, ...]:
    """The forms in the order of ``metagrad.INNER_FORMS`` (one spelling per combination),
    each named once; an unknown name is a ``ValueError`` listing the known ones."""
    names = list(inner)
    for name in names:
        inner_form(name)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"inner names the form {twice[0]!r} twice")
    return tuple(n for n in INNER_FORMS if n in names)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a meta-training run (the CLI flags, one vocabulary)."""

    method: str = "maml"
    meta_steps: int = 2000
    steps: int = 1
    inner_lr: float = 0.01
    lam: float | None = None
    cg_iters: int | None = None
    terms: int | None = None
    step: float | None = None
    inner: tuple[str, ...] = ()
    """Inner-loop forms of ``metagrad.INNER_FORMS`` applied to the method (see the module
    docstring); empty: the method as it is."""
    meta_batch: int = 25
    meta_lr: float | None = None
    seed: int = 0
    device: str = "cpu"
    shots: int = 10
    query: int = 10
    hidden: tuple[int, ...] = (40, 40)
    snapshot_every: int = 100
    heldout_tasks: int = 500
    heldout_query: int = 100
    heldout_seed: int = 2017
    eval_steps: tuple[int, ...] = (1, 5, 10)
    eval_lr: float | None = None
    """Step size of the plain GD adaptation at evaluation; None: ``inner_lr``. Set apart
    where a method's inner loop is not plain GD at ``inner_lr`` (the implicit methods'
    converged regime runs many small proximal steps) so that every method is evaluated
    with the same adaptation."""
    eval_shots: tuple[int, ...] = ()
    """Support sizes K to evaluate on besides ``shots`` (one held-out set each)."""
    heldout_source: str = "torch"
    """``"torch"``: held-out tasks drawn by ``metagrad.Sinusoid`` from ``heldout_seed``
    with ``heldout_query`` query points; ``"numpy-legacy"``: the reference test tasks of
    Finn et al.'s code (``numpy.random.seed(heldout_seed)``, its draw order, K query
    points per task; see :mod:`metagrad.train.study.finn2017`)."""
    init: str = "torch"
    """``"torch"``: PyTorch's default Linear initialisation (seeded); ``"finn2017"``:
    weights truncated normal (std 0.01, cut at ±2 std), biases zero, as the reference code."""
    baseline_data: str = "pooled"
    """Joint-training baseline's data per task: ``"pooled"`` (support and query points) or
    ``"support"`` (the K support points only, as Finn et al.'s pretraining)."""
    baseline_steps: int | None = None
    """Adam steps of the baseline; None: ``meta_steps``."""
    baseline_eval_lrs: tuple[float, ...] = ()
    """Fine-tuning step sizes tried for the baseline (Finn et al. tune it); each reported
    number of steps takes the one best on the validation tasks. Empty: ``eval_lr`` only."""
    validation_tasks: int = 200
    validation_seed: int = 101
    """Validation tasks (their own seed, never the held-out test tasks): used to choose
    hyperparameters and the baseline's step size."""
    probe_at: tuple[int, ...] = ()
    """Meta-steps at which the meta-gradient is compared with the exact ones (float64, on
    ``probe_tasks`` fixed tasks drawn from ``probe_seed``); see :mod:`metagrad.train.probe`."""
    probe_tasks: int = 5
    probe_seed: int = 102
    check_every: int = 1
    """Run the method's numerical checks (``metagrad.diagnose``) on every N-th meta-step
    (1: every step). A check costs little while all is well, but once an inner loop rises
    it explains why with a power iteration (20 Hessian-vector products per task), which
    dominates a compiled meta-step; the log's ``warnings`` and ``findings`` columns count
    the checked steps only (non-finite numbers are caught on every step regardless)."""
    compile: bool = False
    """Run the meta-gradient through ``metagrad.compile`` (one ``torch.compile`` graph;
    the same numbers up to float rounding, faster after a one-off compilation; measured in
    ``bench/results/train_defaults``)."""
    threads: int = 1
    """CPU threads for torch ops during the run. One by default: every op here is tiny
    (40-wide layers, 10 points per task), so intra-op threads only add synchronisation
    (measured in ``bench/results/train_defaults``)."""

    # Settings that may change between a run and its resumption. (A different ``threads``
    # count or compiled vs eager changes float rounding, so bit-identical resumes need the
    # same.)
    RESUMABLE_CHANGES = ("meta_steps", "snapshot_every", "threads", "compile", "check_every")

    def resolved(self) -> TrainConfig:
        """Validate, and fill the method's settings (settings it does not read stay None;
        giving one is an error)."""
        cls = method_class(self.method)
        reads = cls.setting_names()
        given = {name: getattr(self, name) for name in METHOD_SETTINGS}
        ignored = sorted(name for name, value in given.items()
                         if value is not None and name not in reads)
        if ignored:
            raise ValueError(f"{self.method} does not read {', '.join(ignored)} "
                             f"(it reads {', '.join(reads)})")
        chosen = train_defaults(self.method)
        filled: dict[str, Any] = {name: (chosen[name] if given[name] is None else given[name])
                  if name in reads else None for name in METHOD_SETTINGS}
        meta_lr = cls.outer_lr if self.meta_lr is None else self.meta_lr
        eval_lr = self.inner_lr if self.eval_lr is None else self.eval_lr
        cfg = replace(self, meta_lr=meta_lr, hidden=tuple(self.hidden),
                      inner=ordered_forms(self.inner),
                      eval_steps=tuple(sorted(set(self.eval_steps))), eval_lr=eval_lr,
                      eval_shots=tuple(sorted({*self.eval_shots, self.shots})),
                      baseline_eval_lrs=tuple(self.baseline_eval_lrs or (eval_lr,)),
                      probe_at=tuple(sorted(set(self.probe_at))), **filled)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        for name in ("meta_steps", "meta_batch", "shots", "query", "heldout_tasks",
                     "heldout_query", "threads", "validation_tasks", "probe_tasks",
                     "check_every"):
            positive_int(name, getattr(self, name))
        for name in ("steps", "snapshot_every", "seed", "heldout_seed", "validation_seed",
                     "probe_seed"):
            non_negative_int(name, getattr(self, name))
        if self.baseline_steps is not None:
            non_negative_int("baseline_steps", self.baseline_steps)
        for name in ("inner_lr", "meta_lr", "eval_lr"):
            positive_float(name, getattr(self, name))
        for lr in self.baseline_eval_lrs:
            positive_float("baseline_eval_lrs entry", lr)
        for k in self.eval_shots:
            positive_int("eval_shots entry", k)
        for s in self.probe_at:
            non_negative_int("probe_at entry", s)
            if s > self.meta_steps:
                raise ValueError(f"probe_at entry {s} is beyond meta_steps {self.meta_steps}")
        for name, allowed in (("heldout_source", HELDOUT_SOURCES), ("init", INITS),
                              ("baseline_data", BASELINE_DATA)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        least = method_class(self.method).min_train_steps
        if self.steps < least:
            raise ValueError(f"{self.method} needs steps >= {least}: with steps={self.steps} "
                             "its meta-gradient is zero and training does nothing")
        if self.heldout_source == "torch" and self.validation_seed == self.heldout_seed:
            raise ValueError(f"validation_seed {self.validation_seed} equals heldout_seed: the "
                             "validation tasks would be the test tasks")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        if not self.hidden:
            raise ValueError("hidden must list at least one layer width")
        for width in self.hidden:
            positive_int("hidden width", width)
        if not self.eval_steps:
            raise ValueError("eval_steps must list at least one number of adaptation steps")
        for k in self.eval_steps:
            positive_int("eval_steps entry", k)
        self._check_inner()
        make_method(self)  # the method checks its own settings (lam, cg_iters, terms)

    def _check_inner(self) -> None:
        """Each form must be one the method can run, and learned rates need a method with a
        meta-gradient for them."""
        cls = method_class(self.method)
        for name in self.inner:
            form = inner_form(name)
            why = form.applies_to(cls)
            if why is not None:
                raise ValueError(f"--inner {name} cannot run with {self.method}: {why}")
            if form.rates and not form.partial and cls.hyper_gradient is None:
                learners = [m for m in METHOD_NAMES if method_class(m).hyper_gradient]
                raise ValueError(
                    f"--inner {name} learns step sizes, which {self.method} has no "
                    f"meta-gradient for: {cls.hyper_gradient_note} Use it with "
                    f"{', '.join(learners)}")
        if self.inner and self.probe_at:
            raise ValueError("--probe-at compares with exact MAML at one float inner_lr; it "
                             f"does not cover the inner-loop forms ({', '.join(self.inner)})")

    @property
    def baseline_adam_steps(self) -> int:
        """Adam steps of the joint-training baseline (``baseline_steps`` or ``meta_steps``)."""
        return self.meta_steps if self.baseline_steps is None else self.baseline_steps

    @property
    def variant(self) -> str:
        """The run's readable name (:func:`variant_name`): the method, or its spelling with
        the forms."""
        return variant_name(self.method, self.inner)

    @property
    def optimizer(self) -> str:
        """The outer update rule, ``"adam"`` or ``"sgd"`` (the method's ``outer_optimizer``)."""
        return method_class(self.method).outer_optimizer

    def identity(self) -> dict[str, Any]:
        """Settings that determine the run's numbers; a snapshot must match all of them."""
        d = self.as_dict()
        for name in (*self.RESUMABLE_CHANGES, "optimizer"):
            d.pop(name)
        if not d["inner"]:  # runs without forms keep the identity they always had
            d.pop("inner")
        return d

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("hidden", "inner", "eval_steps", "eval_shots", "baseline_eval_lrs",
                     "probe_at"):
            d[name] = list(getattr(self, name))
        d["optimizer"] = self.optimizer
        return d


def train_defaults(method: str) -> dict[str, Any]:
    """Method ``method``'s settings for sinusoid meta-training: its class defaults, with its
    ``train_settings`` where the class chose another value for this problem."""
    cls = method_class(method)
    return {**cls.default_settings(), **cls.train_settings}


_DEPRECATED = {
    "SETTING_DEFAULTS": "read metagrad.METHODS[name].train_settings (or train_defaults(name))",
    "REPTILE_META_LR": "read metagrad.Reptile.outer_lr",
}


def __getattr__(name: str) -> Any:
    # Names this module used to define; computed from the method classes now.
    if name not in _DEPRECATED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import warnings
    warnings.warn(f"metagrad.train.config.{name} is deprecated: {_DEPRECATED[name]}",
                  DeprecationWarning, stacklevel=2)
    if name == "SETTING_DEFAULTS":
        return {m: dict(cls.train_settings) for m, cls in METHODS.items() if cls.train_settings}
    return next(cls.outer_lr for cls in METHODS.values() if cls.outer_optimizer == "sgd")


def make_method(cfg: TrainConfig, params: Mapping[str, torch.Tensor] | None = None) -> Method:
    """The metagrad method object for ``cfg`` (settings filled by :meth:`TrainConfig.resolved`),
    with its inner-loop forms applied. Learned rates are built for ``params`` (the network
    the run trains; a fresh one of ``cfg``'s shape when None): read them back with
    :func:`learned_rates`."""
    cls = method_class(cfg.method)
    kwargs: dict[str, Any] = {name: getattr(cfg, name) for name in cls.setting_names()}
    if cfg.inner:
        kwargs.update(form_kwargs(cfg, params_of(make_model(cfg)) if params is None
                                  else params))
    return cls(**kwargs)


def form_kwargs(cfg: TrainConfig, params: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The method's keyword arguments that ``cfg.inner`` sets: rates (learned, starting at
    ``inner_lr``, when the method has a meta-gradient for them), the update rule, the loss
    weights. Two forms that set the same argument are refused."""
    learn = method_class(cfg.method).hyper_gradient is not None
    return forms_kwargs(cfg.inner, params, cfg.steps, cfg.inner_lr, learn=learn)


def learned_rates(method: Method) -> dict[str, torch.Tensor]:
    """The method's learned step sizes: the rate tensors of its ``inner_lr`` that require a
    gradient, by parameter name (the very tensors the method holds; empty when it has
    none). The training loop steps them with θ."""
    rates = method.inner_loop.hyper().get("inner_lr")
    if isinstance(rates, Mapping):
        return {k: v for k, v in rates.items() if v.requires_grad}
    return {}


def make_model(cfg: TrainConfig) -> torch.nn.Sequential:
    """The 1-h₁-…-1 ReLU MLP, initialised from ``cfg.seed`` (float32): PyTorch's default
    initialisation, or with ``init="finn2017"`` the reference code's (``maml.py``,
    ``construct_fc_weights``): every weight truncated normal with std 0.01, redrawn beyond
    two standard deviations (TensorFlow's ``truncated_normal``), every bias zero."""
    model = mlp((1, *cfg.hidden, 1), seed=cfg.seed, dtype=torch.float32, device=cfg.device)
    if cfg.init == "finn2017":
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                else:
                    w = torch.empty(p.shape, dtype=torch.float64)
                    torch.nn.init.trunc_normal_(w, std=0.01, a=-0.02, b=0.02, generator=gen)
                    p.copy_(w)
    return model


def task_family(cfg: TrainConfig) -> Sinusoid:
    return Sinusoid(shots=cfg.shots, query=cfg.query)


def heldout_tasks(cfg: TrainConfig, shots: int | None = None):
    """The fixed test tasks with ``shots`` support points (default ``cfg.shots``): from
    ``heldout_seed`` with ``heldout_query`` query points each (more query points than in
    training: a less noisy MSE), or the reference test tasks of Finn et al.
    (``heldout_source="numpy-legacy"``, K query points). Used only for the final report
    of a run, never for choosing anything."""
    shots = cfg.shots if shots is None else shots
    if cfg.heldout_source == "numpy-legacy":
        from .study.finn2017 import reference_test_tasks
        return reference_test_tasks(cfg.heldout_tasks, shots, seed=cfg.heldout_seed,
                                    device=cfg.device)
    return Sinusoid(shots=shots, query=cfg.heldout_query).sample(
        cfg.heldout_tasks, seed=cfg.heldout_seed, device=cfg.device)


def validation_tasks(cfg: TrainConfig, shots: int | None = None):
    """Tasks for choosing hyperparameters: their own seed (``validation_seed``), drawn
    like the test tasks, so that no choice ever sees the test tasks."""
    shots = cfg.shots if shots is None else shots
    return Sinusoid(shots=shots, query=cfg.heldout_query).sample(
        cfg.validation_tasks, seed=cfg.validation_seed, device=cfg.device)


__all__ = ["ADAM_META_LR", "BASELINE_DATA", "HELDOUT_SOURCES", "INITS", "METHOD_NAMES",
           "SPELLINGS", "TrainConfig", "form_kwargs", "heldout_tasks", "learned_rates",
           "make_method", "make_model", "ordered_forms", "task_family", "train_defaults",
           "validation_tasks", "variant_name"]
