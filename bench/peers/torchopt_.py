"""torchopt 0.7.3 (Ren et al. 2023): MAML with ``torchopt.MetaSGD`` and
``extract_state_dict``/``recover_state_dict`` per task (its MAML example's pattern);
iMAML with its own implicit differentiation, ``torchopt.diff.implicit.custom_root`` on the
optimality condition ∇L_tr(φ) + λ(φ − θ) = 0 with ``linear_solve.solve_cg(maxiter=5)``
(CG on (H + λI), which has the same Krylov iterates as CG on (I + H/λ), scaled by λ; the
solution is then multiplied by λ, so both give x_m). FOMAML: torchopt's
``stop_gradient`` after the inner loop.

Audit targets (``AUDIT_TARGETS``, settings in metagrad's vocabulary)
--------------------------------------------------------------------

=========  ==========================================================================
maml       ``torchopt.MetaSGD(module, lr=inner_lr)``; per task ``steps`` ×
           ``opt.step(L_tr)``, gradient of L_val(φ) w.r.t. θ, then
           ``recover_state_dict`` of module and optimizer (its MAML example's pattern).
           With ``--inner momentum`` / ``nesterov``: ``torchopt.MetaSGD(module, lr,
           momentum=β, nesterov=...)``; ``--inner adam``: ``torchopt.MetaAdam(module, lr,
           betas=(β₁, β₂), eps=ε)``; ``--inner one_rate``: ``lr`` a 0-dim tensor that
           requires grad, whose gradient is returned too.
fomaml     the same, then ``torchopt.stop_gradient(module)`` and the gradient of
           L_val(φ) w.r.t. the detached φ (with momentum or Adam too; not with a learned
           ``lr``, whose graph ``stop_gradient`` cuts).
imaml      ``custom_root(grad(F), argnums=1, solve=solve_cg(maxiter=cg_iters, rtol=0,
           atol=0))`` on F(φ, θ) = L_tr(φ) + λ/2‖φ − θ‖²; the inner solver is ``steps``
           × ``torchopt.sgd(lr=inner_lr)`` from φ = θ (its iMAML example's pattern).
neumann    the same with ``solve=solve_inv(ns=True, maxiter=terms, alpha=step/lam)``.
=========  ==========================================================================

Variants (``AUDIT_VARIANTS``): ``"imaml normal_cg"`` uses ``solve_normal_cg(maxiter=
cg_iters, rtol=0, atol=0)``, the solver of torchopt's own iMAML example and
``custom_root``'s default.

Facts relied on (torchopt 0.7.3 source):

* ``MetaSGD`` and ``MetaAdam`` are ``MetaOptimizer``s over ``alias.sgd`` / ``alias.adam``:
  ``chain(…, trace(momentum, nesterov) | scale_by_adam(b1, b2, eps), scale_by_neg_lr(lr))``
  (torchopt/alias/sgd.py, adam.py). ``trace`` is torch.optim.SGD's buffer b ← βb + g
  (nesterov: u = g + βb; torchopt/transform/trace.py:169-202); the state lives in the
  optimizer and is put back per task by ``recover_state_dict`` (the MAML example's pattern),
  so it starts at zero in every task. ``scale_by_neg_lr`` multiplies by ``-lr``
  (torchopt/alias/utils.py:222), a tensor included, so a 0-dim ``lr`` that requires grad is
  a learned step size. ``scale_by_adam`` divides the moments by ``1 - pow(decay, count)``
  with ``count`` an int64 tensor (torchopt/transform/scale_by_adam.py:63-73, 198): torch
  computes ``pow(python float, int64 tensor)`` in the default dtype, float32, so the bias
  corrections are float32 numbers even for float64 parameters; and
  ``m.div(v.add(eps_root).sqrt_().add(eps))`` (line 210) adds ε to √v̂, as Alg. 1 of
  Kingma & Ba.

* ``MetaOptimizer.step`` takes ``autograd.grad(loss, params, create_graph=True)`` and
  applies the update out of place (torchopt/optim/meta/base.py:77-90); ``MetaSGD`` with
  momentum 0 is ``φ − lr·g``. ``stop_gradient`` detaches in place
  (torchopt/utils.py:78-79).
* The system: ``_root_vjp`` builds ``matvec(u) = (∂F'/∂φ)ᵀ u`` with F' = ∇_φF the
  optimality function, i.e. (H(φ) + λI) u, solves it for ``v = −∇L_val(φ)``
  (torchopt/diff/implicit/decorator.py:123-140), then returns ``(∂F'/∂θ)ᵀ u = −λu``
  (decorator.py:150-156). The meta-gradient is therefore λ·solve(H + λI, ∇L_val(φ)),
  evaluated at the inner solver's output φ (its K-th proximal GD iterate).
* ``solve_cg`` is ``linalg.cg(matvec, b, x0=init)`` with x0 = 0 when ``init`` is None
  (linear_solve/cg.py:72-78; linalg/cg.py:117-118). It iterates while ``rᵀr > max(rtol²
  bᵀb, atol²)`` and ``k < maxiter`` (linalg/cg.py:70-76), so ``rtol=0, atol=0`` runs
  exactly ``maxiter`` iterations unless the residual is exactly zero (then the iterate is
  kept, as metagrad's ``cg`` does). The default ``rtol=1e-5`` would stop early.
  CG on (H + λI) = λ(I + H/λ) from x = 0 gives iterates that are exactly 1/λ times those
  on (I + H/λ) (the Krylov spaces and step lengths scale), so λ·x_m is metagrad's IMAML
  x_m for ``cg_iters = m``; the difference is rounding only.
* ``solve_inv(ns=True, maxiter=J, alpha=a)`` calls ``linalg.ns`` (linear_solve/inv.py:
  87-88), which returns a·Σ_{j=0..J} (I − aA)ʲ b (linalg/ns.py:93-103; J matvecs). With
  A = H + λI and a = η/λ: I − aA = I − η(I + H/λ), and λ·a = η, so the meta-gradient is
  η Σ_{j=0..J} (I − η(I + H/λ))ʲ ∇L_val(φ): metagrad's Neumann with ``terms = J``,
  ``step = η``. ``alpha=None`` means a = 1, i.e. η = λ.
* Exception: when the parameters are ONE 0-dim tensor, ``_solve_inv`` ignores ``ns``,
  ``maxiter`` and ``alpha`` and returns the exact quotient b / A with shape (1, 1) instead
  of () (linear_solve/inv.py:83-85, ``materialize_matvec`` ravels the scalar); the
  ``custom_root`` backward then raises "Mismatch in shape" (decorator.py:156). Several
  tensors, a 0-dim one among them, are fine.
* ``solve_normal_cg`` runs CG on the normal equations AᵀA x = Aᵀb (linear_solve/
  normal_cg.py:74-87). With A = λ(I + H/λ) its λ-scaled m-th iterate is the m-th CG
  iterate on (I + H/λ)² x = (I + H/λ) b: the same limit as IMAML, different iterates.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from . import _audit, _common

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


def maml_variant(problem, spec):
    """MAML through torchopt's ``MetaSGD(momentum=β)`` or ``MetaAdam``, its MAML example's
    pattern (the state put back per task)."""
    import torchopt

    model = problem.module
    inner = _audit.Inner(spec.form, beta=0.9)
    opt = _meta_optimizer(torchopt, model, inner, spec.inner_lr)
    criterion = problem.criterion
    params = list(model.parameters())
    net_state = torchopt.extract_state_dict(model)
    opt_state = torchopt.extract_state_dict(opt)

    def one(i):
        (x, y), (xv, yv) = problem.tasks.task(i)
        for _ in range(spec.steps):
            opt.step(criterion(model(x), y))
        g = torch.autograd.grad(criterion(model(xv), yv), params)
        torchopt.recover_state_dict(model, net_state)
        torchopt.recover_state_dict(opt, opt_state)
        return g

    return _common.mean_over_tasks(one, problem.tasks.num_tasks)


VARIANT_CASES = {"momentum": maml_variant, "adam": maml_variant}
"""The inner-loop variants timed against metagrad's (``metagrad_bench.peers.variants``)."""


def _meta_optimizer(torchopt, model, inner: _audit.Inner, lr):
    """torchopt's differentiable optimizer for metagrad's update rule."""
    if inner.kind == "adam":
        return torchopt.MetaAdam(model, lr=lr, betas=inner.betas, eps=inner.eps)
    if inner.kind in ("momentum", "nesterov"):
        return torchopt.MetaSGD(model, lr=lr, momentum=inner.beta,
                                nesterov=inner.kind == "nesterov")
    return torchopt.MetaSGD(model, lr=lr)


def _audit_maml(first_order: bool):
    method = "fomaml" if first_order else "maml"

    def factory(**settings) -> _audit.Target:
        what = f"torchopt {method}"
        s, inner = _audit.inner_settings(what, settings, ("steps", "inner_lr"),
                                         rates=() if first_order else ("one",))

        def target(loss, params, tasks):
            import torchopt

            model = _audit.ParamModule(loss, params)
            theta = list(model.parameters())
            rates = inner.rate_list(model.keys) if inner.rates is not None else []
            opt = _meta_optimizer(torchopt, model, inner, rates[0] if rates else inner.lr)
            net_state = torchopt.extract_state_dict(model)
            opt_state = torchopt.extract_state_dict(opt)

            def one(i):
                train, val = tasks.task(i)
                try:
                    for _ in range(s["steps"]):
                        opt.step(model(train))
                    if first_order:
                        torchopt.stop_gradient(model)
                        return _audit.one_scalar_grad(model(val), list(model.parameters()))
                    return _audit.one_scalar_grad(model(val), theta + rates)
                finally:
                    torchopt.recover_state_dict(model, net_state)
                    torchopt.recover_state_dict(opt, opt_state)

            return _audit.mean_with_rates(one, tasks, model.keys, inner)

        return target

    return factory


def _implicit_target(loss, params, tasks, steps: int, inner_lr: float, lam: float, solve):
    """custom_root on ∇_φ[L_tr(φ) + λ/2‖φ − θ‖²] = 0 with the given linear solver."""
    import torchopt

    keys = list(params)

    def objective(phi, theta, batch):
        return loss(dict(zip(keys, phi)), batch) + _audit.proximal(phi, theta, lam)

    @torchopt.diff.implicit.custom_root(torch.func.grad(objective, argnums=0), argnums=1,
                                        solve=solve)
    def inner(phi, theta, batch):
        # custom_root runs the solver inside an autograd.Function's forward (grad off).
        with torch.enable_grad():
            sgd = torchopt.sgd(lr=inner_lr)
            state = sgd.init(phi)
            phi = tuple(p.detach().requires_grad_(True) for p in phi)
            for _ in range(steps):
                g = torch.autograd.grad(objective(phi, theta, batch), phi)
                updates, state = sgd.update(g, state, inplace=False)
                phi = tuple(p.detach().requires_grad_(True)
                            for p in torchopt.apply_updates(phi, updates, inplace=False))
        return tuple(p.detach() for p in phi)

    theta = tuple(p.detach().clone().requires_grad_(True) for p in params.values())

    def one(i):
        train, val = tasks.task(i)
        phi = inner(tuple(t.detach().clone() for t in theta), theta, train)
        return _audit.one_scalar_grad(loss(dict(zip(keys, phi)), val), theta)

    return _audit.mean_over_tasks(one, tasks, keys)


def _audit_imaml(solver: str):
    def factory(**settings) -> _audit.Target:
        s = _audit.check_settings(f"torchopt imaml ({solver})", settings,
                                  ("steps", "inner_lr", "lam", "cg_iters"))

        def target(loss, params, tasks):
            import torchopt

            make = {"solve_cg": torchopt.linear_solve.solve_cg,
                    "solve_normal_cg": torchopt.linear_solve.solve_normal_cg}[solver]
            # rtol = atol = 0: exactly cg_iters iterations (see the module docstring).
            solve = make(maxiter=s["cg_iters"], rtol=0.0, atol=0.0)
            return _implicit_target(loss, params, tasks, s["steps"], s["inner_lr"], s["lam"],
                                    solve)

        return target

    return factory


def _audit_neumann(**settings) -> _audit.Target:
    s = _audit.check_settings("torchopt neumann", settings,
                              ("steps", "inner_lr", "lam", "terms"), {"step": 1.0})

    def target(loss, params, tasks):
        import torchopt

        # alpha = η/λ turns the series on H + λI into metagrad's on I + H/λ (docstring).
        solve = torchopt.linear_solve.solve_inv(ns=True, maxiter=s["terms"],
                                                alpha=s["step"] / s["lam"])
        return _implicit_target(loss, params, tasks, s["steps"], s["inner_lr"], s["lam"], solve)

    return target


AUDIT_TARGETS = {"maml": _audit_maml(False), "fomaml": _audit_maml(True),
                 "imaml": _audit_imaml("solve_cg"), "neumann": _audit_neumann}
AUDIT_VARIANTS = {"imaml normal_cg": _audit_imaml("solve_normal_cg")}
AUDIT_INNER = {"maml": ("momentum", "nesterov", "adam", "one_rate"),
               "fomaml": ("momentum", "nesterov", "adam")}
"""The inner-loop forms each method runs (``metagrad audit --inner``): MetaSGD with momentum,
MetaAdam, a learned ``lr``."""
