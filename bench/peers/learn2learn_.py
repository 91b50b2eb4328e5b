"""learn2learn 0.2.0 (Arnold et al. 2020): ``l2l.algorithms.MAML`` — ``clone()`` per task,
``adapt(loss)`` per inner step, ``first_order=True`` for FOMAML. iMAML: learn2learn has no
implicit gradients; labelled ``imaml (hand CG)``: 5 ``adapt`` steps on the proximal
objective (first order) + the shared CG loop.

Import note: learn2learn imports torchvision at import time (datasets). On PyPI the Linux
torchvision wheels are CUDA builds that cannot load against a CPU-only torch, so when
``import torchvision`` fails we import learn2learn with inert placeholder modules for
torchvision; only ``learn2learn.algorithms.MAML`` / ``clone_module`` / ``update_module``
are used, and they never touch it.

Audit targets (``AUDIT_TARGETS``, settings in metagrad's vocabulary):

=========  ==========================================================================
maml       ``l2l.algorithms.MAML(module, lr=inner_lr, first_order=False)``; per task
           ``clone()``, ``steps`` × ``adapt(L_tr)``; gradient of L_val(φ) w.r.t. θ.
           With rate tensors (``--inner per_entry`` or ``per_tensor``):
           ``l2l.algorithms.MetaSGD(module, lrs=rates, first_order=False)``, the same loop,
           and the gradient w.r.t. θ and the rates (Meta-SGD, Li et al. 2017).
fomaml     the same with ``first_order=True``.
=========  ==========================================================================

Facts relied on (learn2learn 0.2.0 source): ``MAML.adapt`` takes
``grad(loss, params, create_graph=not first_order)`` (learn2learn/algorithms/maml.py:136,
158-163) and ``maml_update`` sets ``p.update = −lr·g`` (maml.py:46) which ``update_module``
applies as ``p + p.update`` (learn2learn/utils/__init__.py:290-294). With
``first_order=True`` the gradient has no graph, so ∂φ/∂θ = I and the θ-gradient of
L_val(φ) is ∇L_val(φ) (metagrad's FOMAML); otherwise it is the exact second-order MAML
gradient. learn2learn has no implicit gradients.

``MetaSGD.adapt`` takes ``grad(loss, params, create_graph=not first_order)``
(learn2learn/algorithms/meta_sgd.py:136-140) and ``meta_sgd_update`` sets ``p._lr = lr`` and
replaces each parameter by ``p − p._lr · g`` (meta_sgd.py:42, 48), the rates broadcast over
the parameter (a tensor of its shape: Meta-SGD's per-entry rates; a 0-dim tensor: one per
tensor); ``clone()`` clones the rates with the module (meta_sgd.py:124), so the rates stay in
the graph: their gradient is the exact ∂L_val/∂α (with ``first_order=True``, the first-order
one, every inner gradient a constant: metagrad's FOMAML with rates). MetaSGD adapts every
parameter with rates fixed across the steps; it has no per-step rates, momentum or Adam.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
import warnings

import torch

from . import _audit, _common

NAME = "learn2learn"


class _Placeholder(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None})


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Placeholder(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def _import():
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a CUDA torchvision raises RuntimeError on CPU torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        finder = _PlaceholderFinder()
        sys.meta_path.insert(0, finder)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import learn2learn
        finally:
            sys.meta_path.remove(finder)
        return learn2learn
    import learn2learn

    return learn2learn


def available() -> str | None:
    try:
        _import()
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {err}"
    return None


def maml(problem, spec, first_order: bool = False):
    l2l = _import()
    model = problem.module
    learner0 = l2l.algorithms.MAML(model, lr=spec.inner_lr, first_order=first_order)
    criterion = problem.criterion

    def one(i):
        (x, y), (xv, yv) = problem.tasks.task(i)
        learner = learner0.clone()
        for _ in range(spec.steps):
            learner.adapt(criterion(learner(x), y))
        return torch.autograd.grad(criterion(learner(xv), yv), list(model.parameters()))

    return _common.mean_over_tasks(one, problem.tasks.num_tasks)


def imaml(problem, spec):
    l2l = _import()
    model = problem.module
    learner0 = l2l.algorithms.MAML(model, lr=spec.inner_lr, first_order=True)
    criterion = problem.criterion
    theta = [p.detach() for p in model.parameters()]
    names = list(problem.params)

    def loss_at(ws, batch):
        return problem.loss(dict(zip(names, ws)), batch)

    def one(i):
        (x, y), (xv, yv) = problem.tasks.task(i)
        learner = learner0.clone()
        for _ in range(spec.steps):
            prox = sum(((p - t) ** 2).sum() for p, t in zip(learner.parameters(), theta))
            learner.adapt(criterion(learner(x), y) + 0.5 * spec.lam * prox)
        phi = [p.detach() for p in learner.parameters()]
        return _common.imaml_from_phi(loss_at, phi, (x, y), (xv, yv), spec.lam, spec.cg_iters)

    return _common.mean_over_tasks(one, problem.tasks.num_tasks)


CASES = {
    "maml": maml,
    "fomaml": lambda problem, spec: maml(problem, spec, first_order=True),
    "imaml (hand CG)": imaml,
}


def metasgd(problem, spec):
    """Meta-SGD (Li et al. 2017): ``MetaSGD(module, lr)``, its per-entry rates learned; the
    mean gradient w.r.t. θ and the rates, θ's part returned (for the agreement column)."""
    l2l = _import()
    model = problem.module
    meta = l2l.algorithms.MetaSGD(model, lr=spec.inner_lr)
    theta = list(model.parameters())
    wrt = theta + list(meta.lrs)
    criterion = problem.criterion

    def one(i):
        (x, y), (xv, yv) = problem.tasks.task(i)
        learner = meta.clone()
        for _ in range(spec.steps):
            learner.adapt(criterion(learner(x), y))
        return torch.autograd.grad(criterion(learner(xv), yv), wrt)

    return _common.mean_over_tasks(one, problem.tasks.num_tasks)[:len(theta)]


VARIANT_CASES = {"per_entry": metasgd}
"""The inner-loop variants timed against metagrad's (``metagrad_bench.peers.variants``)."""


def _audit_maml(first_order: bool):
    method = "fomaml" if first_order else "maml"

    def factory(**settings) -> _audit.Target:
        what = f"learn2learn {method}"
        s, inner = _audit.inner_settings(what, settings, ("steps", "inner_lr"),
                                         rates=("entry", "tensor"))
        if inner.kind != "gd":
            raise NotImplementedError(f"{what}: plain gradient descent only (MAML, MetaSGD)")

        def target(loss, params, tasks):
            l2l = _import()
            model = _audit.ParamModule(loss, params)
            rates = []
            if inner.rates is None:
                wrapper = l2l.algorithms.MAML(model, lr=inner.lr, first_order=first_order)
            else:  # Meta-SGD: the rates are MetaSGD's lrs, one tensor per parameter
                _audit.check_rates_cover(what, inner, params)
                rates = inner.rate_list(model.keys)
                wrapper = l2l.algorithms.MetaSGD(model, first_order=first_order, lrs=rates)

            def one(i):
                train, val = tasks.task(i)
                learner = wrapper.clone()
                for _ in range(s["steps"]):
                    learner.adapt(learner(train))
                return _audit.one_scalar_grad(learner(val), list(model.parameters()) + rates)

            return _audit.mean_with_rates(one, tasks, model.keys, inner)

        return target

    return factory


AUDIT_TARGETS = {"maml": _audit_maml(False), "fomaml": _audit_maml(True)}
AUDIT_INNER = {"maml": ("per_entry", "per_tensor"), "fomaml": ("per_entry", "per_tensor")}
"""The inner-loop forms each method runs (``metagrad audit --inner``): MetaSGD's rates."""
