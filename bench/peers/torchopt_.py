"""torchopt 0.7.3 (Ren et al. 2023): MAML with ``torchopt.MetaSGD`` and
``extract_state_dict``/``recover_state_dict`` per task (its MAML example's pattern);
iMAML with its own implicit differentiation, ``torchopt.diff.implicit.custom_root`` on the
optimality condition ∇L_tr(φ) + λ(φ − θ) = 0 with ``linear_solve.solve_cg(maxiter=5)``
(CG on (H + λI), which has the same Krylov iterates as CG on (I + H/λ), scaled by λ; the
solution is then multiplied by λ, so both give x_m). FOMAML: torchopt's
``stop_gradient`` after the inner loop.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from . import _common

NAME = "torchopt"


def available() -> str | None:
    try:
        import torchopt  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {err}"
    return None


def maml(problem, spec, first_order: bool = False):
    import torchopt

    model = problem.module
    opt = torchopt.MetaSGD(model, lr=spec.inner_lr)
    criterion = problem.criterion
    params = list(model.parameters())
    net_state = torchopt.extract_state_dict(model)
    opt_state = torchopt.extract_state_dict(opt)

    def one(i):
        (x, y), (xv, yv) = problem.tasks.task(i)
        for _ in range(spec.steps):
            opt.step(criterion(model(x), y))
        if first_order:
            torchopt.stop_gradient(model)
            fast = [p for p in model.parameters()]
            for p in fast:
                p.requires_grad_(True)
            g = torch.autograd.grad(criterion(model(xv), yv), fast)
        else:
            g = torch.autograd.grad(criterion(model(xv), yv), params)
        torchopt.recover_state_dict(model, net_state)
        torchopt.recover_state_dict(opt, opt_state)
        return g

    return _common.mean_over_tasks(one, problem.tasks.num_tasks)


def imaml(problem, spec):
    import torchopt

    model = problem.module
    criterion = problem.criterion
    names = list(problem.params)
    lam, lr = spec.lam, spec.inner_lr

    def objective(params, meta_params, data):
        x, y = data
        out = functional_call(model, dict(zip(names, params)), (x,))
        prox = sum(((p - m) ** 2).sum() for p, m in zip(params, meta_params))
        return criterion(out, y) + 0.5 * lam * prox

    # torchopt's iMAML example: the optimality function is torch.func.grad of the objective.
    optimality = torch.func.grad(objective, argnums=0)

    @torchopt.diff.implicit.custom_root(
        optimality, argnums=1, solve=torchopt.linear_solve.solve_cg(maxiter=spec.cg_iters,
                                                                     rtol=0.0, atol=0.0))
    def inner(params, meta_params, data):
        # custom_root runs this inside an autograd.Function's forward, where grad is off.
        with torch.enable_grad():
            params = tuple(p.detach().requires_grad_(True) for p in params)
            for _ in range(spec.steps):
                g = torch.autograd.grad(objective(params, meta_params, data), params)
                params = tuple((p - lr * gi).detach().requires_grad_(True)
                               for p, gi in zip(params, g))
        return tuple(p.detach() for p in params)

    theta = tuple(p.detach().requires_grad_(True) for p in model.parameters())

    def one(i):
        (x, y), (xv, yv) = problem.tasks.task(i)
        phi = inner(tuple(t.detach() for t in theta), theta, (x, y))
        val = criterion(functional_call(model, dict(zip(names, phi)), (xv,)), yv)
        return torch.autograd.grad(val, theta)

    return _common.mean_over_tasks(one, problem.tasks.num_tasks)


CASES = {
    "maml": maml,
    "fomaml": lambda problem, spec: maml(problem, spec, first_order=True),
    "imaml": imaml,
}
