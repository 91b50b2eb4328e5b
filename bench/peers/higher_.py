"""higher 0.2.1 (Grefenstette et al. 2019): ``innerloop_ctx`` gives a functional copy of
the module and a differentiable optimizer; we loop over tasks as its MAML example does.
iMAML: higher has no implicit gradients; labelled ``imaml (hand CG)``: higher's inner
loop (differentiable SGD on the proximal objective, not tracked) + the shared CG loop.

Audit targets (``AUDIT_TARGETS``, settings in metagrad's vocabulary):

=========  ==========================================================================
maml       ``higher.innerloop_ctx(module, SGD(lr=inner_lr), copy_initial_weights=False,
           track_higher_grads=True)``; ``steps`` × ``diffopt.step(L_tr)``; gradient of
           L_val(φ) w.r.t. the module's own parameters θ.
fomaml     the same with ``track_higher_grads=False``; gradient of L_val(φ) w.r.t. the
           adapted parameters φ (``fmodel.parameters()``), i.e. ∇L_val(φ).
=========  ==========================================================================

Facts relied on (higher 0.2.1 source): ``DifferentiableOptimizer.step`` takes
``autograd.grad(loss, params, create_graph=track_higher_grads)`` (higher/optim.py:229-234)
and, untracked, hands back ``p.detach().requires_grad_()`` (optim.py:252-257);
``DifferentiableSGD._update`` is ``p − lr·g`` when momentum and weight decay are 0
(optim.py:283-301). So ``maml`` is exactly θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − α∇L_tr(θ⁽ᵏ⁾) differentiated
end to end (metagrad's MAML), and ``fomaml`` is ∇L_val(φ) (metagrad's FOMAML).
higher has no implicit-gradient method and no Neumann series.
"""

from __future__ import annotations

import torch

from . import _audit, _common

NAME = "higher"


def available() -> str | None:
    try:
        import higher  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        return f"{type(err).__name__}: {err}"
    return None


def maml(problem, spec, first_order: bool = False):
    import higher

    model = problem.module
    opt = torch.optim.SGD(model.parameters(), lr=spec.inner_lr)
    criterion = problem.criterion

    def one(i):
        (x, y), (xv, yv) = problem.tasks.task(i)
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False,
                                  track_higher_grads=not first_order) as (fmodel, diffopt):
            for _ in range(spec.steps):
                diffopt.step(criterion(fmodel(x), y))
            val = criterion(fmodel(xv), yv)
            if first_order:
                return torch.autograd.grad(val, fmodel.parameters())
            return torch.autograd.grad(val, model.parameters())

    return _common.mean_over_tasks(one, problem.tasks.num_tasks)


def imaml(problem, spec):
    import higher

    model = problem.module
    opt = torch.optim.SGD(model.parameters(), lr=spec.inner_lr)
    criterion = problem.criterion
    theta = [p.detach() for p in model.parameters()]
    names = list(problem.params)

    def loss_at(ws, batch):
        return problem.loss(dict(zip(names, ws)), batch)

    def one(i):
        (x, y), (xv, yv) = problem.tasks.task(i)
        with higher.innerloop_ctx(model, opt, copy_initial_weights=True,
                                  track_higher_grads=False) as (fmodel, diffopt):
            for _ in range(spec.steps):
                prox = sum(((p - t) ** 2).sum() for p, t in zip(fmodel.parameters(), theta))
                diffopt.step(criterion(fmodel(x), y) + 0.5 * spec.lam * prox)
            phi = [p.detach() for p in fmodel.parameters()]
        return _common.imaml_from_phi(loss_at, phi, (x, y), (xv, yv), spec.lam, spec.cg_iters)

    return _common.mean_over_tasks(one, problem.tasks.num_tasks)


CASES = {
    "maml": maml,
    "fomaml": lambda problem, spec: maml(problem, spec, first_order=True),
    "imaml (hand CG)": imaml,
}


def _audit_maml(first_order: bool):
    method = "fomaml" if first_order else "maml"

    def factory(**settings) -> _audit.Target:
        s = _audit.check_settings(f"higher {method}", settings, ("steps", "inner_lr"))

        def target(loss, params, tasks):
            import higher

            model = _audit.ParamModule(loss, params)
            opt = torch.optim.SGD(model.parameters(), lr=s["inner_lr"])

            def one(i):
                train, val = tasks.task(i)
                with higher.innerloop_ctx(model, opt, copy_initial_weights=False,
                                          track_higher_grads=not first_order) as (fmodel, diffopt):
                    for _ in range(s["steps"]):
                        diffopt.step(fmodel(train))
                    wrt = fmodel.parameters() if first_order else model.parameters()
                    return _audit.one_scalar_grad(fmodel(val), list(wrt))

            return _audit.mean_over_tasks(one, tasks, model.keys)

        return target

    return factory


AUDIT_TARGETS = {"maml": _audit_maml(False), "fomaml": _audit_maml(True)}
