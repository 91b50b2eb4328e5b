"""A gradient-based meta-learning collection: sungyubkim/GBML @
1577e172dc5852267ad0b94cdb9c175a5ca7018e (MAML, iMAML, Neumann, Reptile on ``higher``).

What each class's ``outer_loop(batch, is_train=True)`` computes, read off ``gbml/*.py``:
per task, ``higher.innerloop_ctx(network, inner_optimizer)`` and ``n_inner`` steps of
``F.cross_entropy`` on the support set; then

* ``MAML`` (track_higher_grads=True): the gradient of the query loss w.r.t. the initial
  parameters, ``fmodel.parameters(time=0)``: second-order MAML;
* ``iMAML``: at the last iterate of the *plain* inner loop, ``cg`` runs ``n_cg`` CG
  iterations on (I + H/λ)x = ∇L_val(φ) starting from x₀ = ∇L_val(φ) (``x =
  outer_grad.clone()``);
* ``Neumann``: x = b + Σ_{j=1..n_series} (−H/λ)ʲ b at the last iterate of the plain loop;
* ``Reptile``: −(φ − θ) with φ = ``fmodel.parameters(time=step)``, ``step`` the last loop
  index (n_inner − 1): the displacement before the last update; and in training the
  support batch is replaced by (up to 10 of) the query points.

The task results are averaged by ``mix_grad`` with weights ``torch.ones(T) / T``: float32.
``__init__`` puts the network on CUDA and hard-codes ``lamb`` (100) and ``n_cg`` /
``n_series`` (1); the adapter builds the object without ``__init__`` and sets the
attributes the methods read (the audit's model, an SGD inner optimizer with the audit's
step size, an outer optimizer with learning rate 0, λ and the iteration count, and an
``unpack_batch`` that keeps the tensors on the CPU). ``Reptile`` reads
``fmodel.parameters(time=step)`` of an untracked model, which higher ≥ 0.2 (the only
releases on PyPI; the code dates from higher 0.1) refuses for step > 0: it is audited as it
is, and once more with higher tracking its history (``gbml-reptile-history``; same values):

    python -m metagrad_bench.real_code.gbml --repo PATH [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from metagrad.testing import module_target
from metagrad.testing.modules import fresh_model

from . import _common

SETTINGS = {
    "maml": dict(steps=2, inner_lr=0.1),
    "imaml": dict(steps=3, inner_lr=0.1, lam=2.0, cg_iters=3),
    "neumann": dict(steps=3, inner_lr=0.1, lam=2.0, terms=2, step=1.0),
    "reptile": dict(steps=3, inner_lr=0.1),
}


def _instance(cls_name: str, model, steps: int, inner_lr: float, **attrs):
    import importlib

    module = importlib.import_module(f"gbml.{cls_name.lower()}")
    cls = getattr(module, cls_name)
    obj = cls.__new__(cls)
    obj.args = argparse.Namespace(n_inner=steps, inner_lr=inner_lr)
    obj.network = model
    obj.inner_optimizer = torch.optim.SGD(model.parameters(), lr=inner_lr)
    obj.outer_optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    for key, value in attrs.items():
        setattr(obj, key, value)
    return obj


def _batch(tasks):
    return {"train": tasks.train, "test": tasks.val}


class _Tracking:
    """``higher`` with ``innerloop_ctx(..., track_higher_grads=True)`` forced: since higher 0.2
    an untracked patched model keeps only its latest parameters, so
    ``fmodel.parameters(time=step)`` (Reptile) raises; tracked, the values are the same."""

    def __getattr__(self, name):
        import higher

        return getattr(higher, name)

    @staticmethod
    def innerloop_ctx(*args, **kwargs):
        import higher

        return higher.innerloop_ctx(*args, **{**kwargs, "track_higher_grads": True})


def adapter(cls_name: str, history: bool = False, **fixed):
    """A module-target factory running ``cls_name.outer_loop`` on the audit's model; with
    ``history``, under :class:`_Tracking`."""
    def factory(*, steps, inner_lr, **settings):
        attrs = {k: settings[v] for k, v in fixed.items()}

        def run(model, tasks):
            if history:
                sys.modules[f"gbml.{cls_name.lower()}"].higher = _Tracking()
            obj = _instance(cls_name, model, steps, inner_lr, batch_size=tasks.num_tasks,
                            **attrs)
            obj.unpack_batch = lambda batch: (*batch["train"], *batch["test"])
            model.zero_grad()
            try:
                obj.outer_loop(_batch(tasks), is_train=True)
            finally:
                if history:
                    import higher

                    sys.modules[f"gbml.{cls_name.lower()}"].higher = higher
            return None  # apply_grad writes .grad

        return run

    return factory


def independent_checks() -> list:
    """Each formula above, evaluated densely on the softmax problem, against the class."""

    def weights(t):
        return (torch.ones(t) / torch.ones(t).sum())  # mix_grad's float32 weights

    def check(cls_name, method, settings, attrs, formula, words):
        given, flat = _common.problem("softmax", method, settings)
        per_task = [formula(flat, tr, val) for tr, val in flat.tasks]
        w = weights(len(per_task))
        expected = sum(wi * g for wi, g in zip(w, per_task))
        model = fresh_model(given.module, given.params)
        adapter(cls_name, history=cls_name == "Reptile", **attrs)(**settings)(model, given.tasks)
        got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        return (f"GBML {cls_name} on softmax, T=3: {words} vs the class: relative error "
                f"{_common.rel(got, expected):.1e}")

    def gd(flat, batch, steps, lr):
        points = [flat.theta]
        for _ in range(steps):
            points.append(points[-1] - lr * flat.g(points[-1], batch))
        return points

    def maml(flat, tr, val, s=SETTINGS["maml"]):
        points = gd(flat, tr, s["steps"], s["inner_lr"])
        g = flat.g(points[-1], val)
        for x in reversed(points[:-1]):
            g = g - s["inner_lr"] * flat.h(x, tr) @ g
        return g

    def imaml(flat, tr, val, s=SETTINGS["imaml"]):
        phi = gd(flat, tr, s["steps"], s["inner_lr"])[-1]
        a = torch.eye(phi.numel(), dtype=phi.dtype) + flat.h(phi, tr) / s["lam"]
        b = flat.g(phi, val)
        return _common.conjugate_gradient(a, b, s["cg_iters"], x0=b)

    def neumann(flat, tr, val, s=SETTINGS["neumann"]):
        phi = gd(flat, tr, s["steps"], s["inner_lr"])[-1]
        m = -flat.h(phi, tr) / s["lam"]
        term = total = flat.g(phi, val)
        for _ in range(s["terms"]):
            term = m @ term
            total = total + term
        return total

    def reptile(flat, tr, val, s=SETTINGS["reptile"]):
        return flat.theta - gd(flat, val, s["steps"], s["inner_lr"])[-2]

    return [
        lambda: check("MAML", "maml", SETTINGS["maml"], {}, maml,
                      "Π(I − αH(θ⁽ᵏ⁾))∇L_val(φ) weighted by float32 1/T"),
        lambda: check("iMAML", "imaml", SETTINGS["imaml"],
                      {"lamb": "lam", "n_cg": "cg_iters"}, imaml,
                      "CG_3 from x₀ = b on I + H/λ at plain-GD φ, float32 1/T"),
        lambda: check("Neumann", "neumann", SETTINGS["neumann"],
                      {"lamb": "lam", "n_series": "terms"}, neumann,
                      "Σ_{j≤J}(−H/λ)ʲb at plain-GD φ, float32 1/T"),
        lambda: check("Reptile", "reptile", SETTINGS["reptile"], {}, reptile,
                      "θ − θ⁽ᴷ⁻¹⁾ with the inner loop on the query set, float32 1/T"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = _common.parse(__doc__.splitlines()[0], argv)
    _common.on_path(args.repo, "gbml/gbml.py")
    runs = [
        _common.Run("gbml-maml", "maml", module_target(adapter("MAML")), SETTINGS["maml"],
                    "gbml/maml.py MAML.outer_loop"),
        _common.Run("gbml-maml-float32", "maml", module_target(adapter("MAML")),
                    SETTINGS["maml"], "gbml/maml.py MAML.outer_loop, float32 mode", True),
        _common.Run("gbml-imaml", "imaml", module_target(adapter(
            "iMAML", lamb="lam", n_cg="cg_iters")), SETTINGS["imaml"],
            "gbml/imaml.py iMAML.outer_loop"),
        _common.Run("gbml-neumann", "neumann", module_target(adapter(
            "Neumann", lamb="lam", n_series="terms")), SETTINGS["neumann"],
            "gbml/neumann.py Neumann.outer_loop"),
        _common.Run("gbml-reptile", "reptile", module_target(adapter("Reptile")),
                    SETTINGS["reptile"], "gbml/reptile.py Reptile.outer_loop"),
        _common.Run("gbml-reptile-history", "reptile", module_target(
            adapter("Reptile", history=True)), SETTINGS["reptile"],
            "gbml/reptile.py Reptile.outer_loop, higher tracking its history"),
    ]
    return _common.run_all(runs, independent_checks(), args.out, "gbml", args.repo)


if __name__ == "__main__":
    sys.exit(main())
