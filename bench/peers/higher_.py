"""higher 0.2.1 (Grefenstette et al. 2019): ``innerloop_ctx`` gives a functional copy of
the module and a differentiable optimizer; we loop over tasks as its MAML example does.
iMAML: higher has no implicit gradients; labelled ``imaml (hand CG)``: higher's inner
loop (differentiable SGD on the proximal objective, not tracked) + the shared CG loop."""

from __future__ import annotations

import torch

from . import _common

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
