"""higher 0.2.1 (Grefenstette et al. 2019): ``innerloop_ctx`` gives a functional copy of
the module and a differentiable optimizer; we loop over tasks as its MAML example does.
iMAML: higher has no implicit gradients; labelled ``imaml (hand CG)``: higher's inner
loop (differentiable SGD on the proximal objective, not tracked) + the shared CG loop.

Audit targets (``AUDIT_TARGETS``, settings in metagrad's vocabulary):

=========  ==========================================================================
maml       ``higher.innerloop_ctx(module, SGD(lr=inner_lr), copy_initial_weights=False,
           track_higher_grads=True)``; ``steps`` × ``diffopt.step(L_tr)``; gradient of
           L_val(φ) w.r.t. the module's own parameters θ.
           With ``--inner momentum`` / ``nesterov`` the optimizer is
           ``torch.optim.SGD(lr, momentum=β, nesterov=...)``, with ``--inner adam``
           ``torch.optim.Adam(lr, betas=(β₁, β₂), eps=ε)``, which higher turns into its
           ``DifferentiableSGD`` / ``DifferentiableAdam``. Learned step sizes go in through
           ``innerloop_ctx(..., override={"lr": [tensors]})``: ``--inner one_rate`` one
           0-dim tensor for the one parameter group, ``--inner per_tensor`` one per group
           with one parameter per group; their gradient is returned too.
fomaml     the same with ``track_higher_grads=False``; gradient of L_val(φ) w.r.t. the
           adapted parameters φ (``fmodel.parameters()``), i.e. ∇L_val(φ) (with momentum
           or Adam too; not with learned rates, whose graph the untracked step cuts).
=========  ==========================================================================

Facts relied on (higher 0.2.1 source): ``DifferentiableOptimizer.step`` takes
``autograd.grad(loss, params, create_graph=track_higher_grads)`` (higher/optim.py:229-234)
and, untracked, hands back ``p.detach().requires_grad_()`` (optim.py:252-257);
``DifferentiableSGD._update`` is ``p − lr·g`` when momentum and weight decay are 0
(optim.py:283-301). So ``maml`` is exactly θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − α∇L_tr(θ⁽ᵏ⁾) differentiated
end to end (metagrad's MAML), and ``fomaml`` is ∇L_val(φ) (metagrad's FOMAML).
higher has no implicit-gradient method and no Neumann series.

Momentum and Adam (higher/optim.py): ``DifferentiableSGD._update`` keeps
``momentum_buffer`` = g on the first step and βb + (1 − dampening)g after it, steps with
g + βb for Nesterov and b otherwise (optim.py:290-301), torch.optim.SGD's form.
``DifferentiableAdam._update`` (optim.py:333-373) computes ``denom = √v + ε``,
``step_size = lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ)`` and φ − step_size·m/denom: the "efficient" form of
Kingma & Ba 2015, §2, whose ε stands for ε/√(1 − β₂ᵗ) in Alg. 1's u = m̂/(√v̂ + ε). The
optimizer state is copied from the torch optimizer (empty) when each ``innerloop_ctx``
opens, so it starts at zero in every task. ``override`` values replace the group's ``lr``
in those updates, tensors included (optim.py:137-147), so learned rates are differentiated.
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


def maml_variant(problem, spec):
    """MAML through higher's differentiable ``torch.optim.SGD(momentum=β)`` or ``Adam``."""
    import higher

    model = problem.module
    inner = _audit.Inner(spec.form, beta=0.9, lr=spec.inner_lr)
    opt = _torch_optimizer(model.parameters(), inner)
    criterion = problem.criterion

    def one(i):
        (x, y), (xv, yv) = problem.tasks.task(i)
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(spec.steps):
                diffopt.step(criterion(fmodel(x), y))
            return torch.autograd.grad(criterion(fmodel(xv), yv), model.parameters())

    return _common.mean_over_tasks(one, problem.tasks.num_tasks)


VARIANT_CASES = {"momentum": maml_variant, "adam": maml_variant}
"""The inner-loop variants timed against metagrad's (``metagrad_bench.peers.variants``)."""


def _torch_optimizer(groups, inner: _audit.Inner) -> torch.optim.Optimizer:
    """The torch optimizer higher makes differentiable, for metagrad's update rule."""
    lr = inner.lr if inner.lr is not None else 1.0  # learned rates replace it (override)
    if inner.kind == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=inner.betas, eps=inner.eps)
    if inner.kind in ("momentum", "nesterov"):
        return torch.optim.SGD(groups, lr=lr, momentum=inner.beta,
                               nesterov=inner.kind == "nesterov")
    return torch.optim.SGD(groups, lr=lr)


def _audit_maml(first_order: bool):
    method = "fomaml" if first_order else "maml"

    def factory(**settings) -> _audit.Target:
        what = f"higher {method}"
        s, inner = _audit.inner_settings(what, settings, ("steps", "inner_lr"),
                                         rates=() if first_order else ("one", "tensor"))

        def target(loss, params, tasks):
            import higher

            model = _audit.ParamModule(loss, params)
            rates: list[torch.Tensor] = []
            groups: list | object = model.parameters()
            if inner.rates is not None:
                _audit.check_rates_cover(what, inner, params)
                rates = inner.rate_list(model.keys)
                if len(rates) > 1:  # one parameter group per tensor, one rate per group
                    groups = [{"params": [p]} for p in model.parameters()]
            opt = _torch_optimizer(groups, inner)
            override = {"lr": rates} if rates else None

            def one(i):
                train, val = tasks.task(i)
                with higher.innerloop_ctx(model, opt, copy_initial_weights=False,
                                          track_higher_grads=not first_order,
                                          override=override) as (fmodel, diffopt):
                    for _ in range(s["steps"]):
                        diffopt.step(fmodel(train))
                    wrt = fmodel.parameters() if first_order else model.parameters()
                    return _audit.one_scalar_grad(fmodel(val), list(wrt) + rates)

            return _audit.mean_with_rates(one, tasks, model.keys, inner)

        return target

    return factory


AUDIT_TARGETS = {"maml": _audit_maml(False), "fomaml": _audit_maml(True)}
AUDIT_INNER = {"maml": ("momentum", "nesterov", "adam", "one_rate", "per_tensor"),
               "fomaml": ("momentum", "nesterov", "adam")}
"""The inner-loop forms each method runs (``metagrad audit --inner``): the momentum SGD and
Adam of ``torch.optim`` made differentiable, learned rates through ``override``."""
