"""Independent meta-gradient implementations for the audit's tests: correct ones and the bug zoo.

Written independently of metagrad's methods and of the oracle: plain per-task loops of
``torch.autograd.grad`` (``create_graph=True`` where a step is differentiated), their own CG
and Neumann loops. Every deviation is a keyword of one of the factories below, so that a
test can build "MAML with the query batch in the inner loop" or "iMAML with a plain inner
loop, a pull-back step and a damped system" the way such code is written.
"""

from __future__ import annotations

import torch

SETTINGS = {
    "maml": dict(steps=2, inner_lr=0.1),
    "fomaml": dict(steps=2, inner_lr=0.1),
    "reptile": dict(steps=3, inner_lr=0.1),
    "imaml": dict(steps=3, inner_lr=0.1, lam=2.0, cg_iters=5),
    "neumann": dict(steps=3, inner_lr=0.1, lam=2.0, terms=4, step=1.0),
    "penalty": dict(steps=2, inner_lr=0.1, lam=0.5),
}


def _grad(value, wrt, create_graph=False):
    return torch.autograd.grad(value, wrt, create_graph=create_graph, allow_unused=True)


def _gd(loss, theta: dict, batch, steps: int, lr: float, *, create_graph: bool,
        lam: float | None = None, anchor: dict | None = None, graph_steps=None,
        detach: tuple[str, ...] = (), last_lr: float | None = None) -> dict:
    """θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − α∇(L_tr + λ/2‖θ⁽ᵏ⁾ − anchor‖²), the proximal term only with ``lam``.

    ``graph_steps``: the steps whose gradient is taken with ``create_graph=True`` (default:
    all when ``create_graph``); the point itself stays in the graph. ``detach``: tensors
    whose inner gradient is detached at every step. ``last_lr``: the step size of the last
    step. Without ``create_graph`` every iterate is a fresh leaf (first order)."""
    phi = dict(theta)
    for k in range(steps):
        value = loss(phi, batch)
        if lam is not None:
            value = value + 0.5 * lam * sum(((phi[n] - anchor[n]) ** 2).sum() for n in phi)
        tracked = create_graph if graph_steps is None else k in graph_steps
        g = _grad(value, list(phi.values()), tracked)
        rate = last_lr if (last_lr is not None and k == steps - 1) else lr
        phi = {n: v - rate * (gi.detach() if n in detach else gi)
               for (n, v), gi in zip(phi.items(), g)}
        if not create_graph:
            phi = {n: v.detach().requires_grad_(True) for n, v in phi.items()}
    return phi


def _leaf(params):
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def _mean(per_task, params, tasks, reduce="mean"):
    """(1/T) Σᵢ gᵢ; ``reduce="sum"``: Σᵢ gᵢ; ``"float32 weight"``: the 1/T weight kept as a
    float32 tensor (a 0-dim tensor: the sum stays in the parameters' dtype, the weight is
    1/T rounded to float32)."""
    total = None
    for i in range(tasks.num_tasks):
        g = [t.detach() for t in per_task(*tasks.task(i))]
        total = g if total is None else [a + b for a, b in zip(total, g)]
    if reduce == "sum":
        return dict(zip(params, total))
    if reduce == "float32 weight":
        weight = torch.tensor(1.0 / tasks.num_tasks, dtype=torch.float32)
        return {k: t * weight for k, t in zip(params, total)}
    return {k: t / tasks.num_tasks for k, t in zip(params, total)}


def _hvp_at(loss, phi, batch):
    """v ↦ H(φ)v by double backward at the (leaf) point φ."""
    g = _grad(loss(phi, batch), list(phi.values()), create_graph=True)

    def hvp(v):
        return list(torch.autograd.grad(g, list(phi.values()), grad_outputs=v,
                                        retain_graph=True))

    return hvp


def _dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def _cg(matvec, b, iters, stale=False, x0=None, tol=None, tol_previous=False):
    """CG from x₀ (default 0), stopping on an exactly zero residual or, with ``tol``, once
    ‖r‖ < tol (returning the update that met it, or, ``tol_previous``, the iterate before);
    ``stale``: pₖ₊₁ = rₖ + βpₖ."""
    x = [torch.zeros_like(t) for t in b] if x0 is None else [t.clone() for t in x0]
    r = [bi - ai for bi, ai in zip(b, matvec(x))] if x0 is not None else [t.clone() for t in b]
    p = [t.clone() for t in r]
    for _ in range(iters):
        rr = _dot(r, r)
        if rr == 0:
            break
        ap = matvec(p)
        a = rr / _dot(p, ap)
        x_new = [xi + a * pi for xi, pi in zip(x, p)]
        r_new = [ri - a * api for ri, api in zip(r, ap)]
        if tol is not None and float(_dot(r_new, r_new)) ** 0.5 < tol:
            return x if tol_previous else x_new
        x = x_new
        beta = _dot(r_new, r_new) / rr
        p = [(ri if stale else rn) + beta * pi for ri, rn, pi in zip(r, r_new, p)]
        r = r_new
    return x


def _matching(params, names) -> tuple[str, ...]:
    """The parameter names that end with one of ``names`` (e.g. ``"bias"``)."""
    return tuple(k for k in params if k.endswith(tuple(names)))


def maml_target(*, steps, inner_lr, first_order=False, reduce="mean", missing_step=False,
                unadapted=False, first_step_graph_only=False, detach=(), last_lr=None,
                query_inner=False):
    """Second-order MAML, or one of its bugs (keywords)."""
    def target(loss, params, tasks):
        def one(train, val):
            theta = _leaf(params)
            if unadapted:
                return _grad(loss(theta, val), list(theta.values()))
            phi = _gd(loss, theta, val if query_inner else train, steps - missing_step,
                      inner_lr, create_graph=not first_order,
                      graph_steps={0} if first_step_graph_only else None,
                      detach=_matching(params, detach),
                      last_lr=None if last_lr is None else last_lr(inner_lr))
            if first_order:  # the gradient flows through φ = θ − αg with g a constant
                phi = {k: theta[k] - (theta[k] - v).detach() for k, v in phi.items()}
            return _grad(loss(phi, val), list(theta.values()))

        return _mean(one, params, tasks, reduce)

    return target


def fomaml_target(*, steps, inner_lr, reduce="mean"):
    def target(loss, params, tasks):
        def one(train, val):
            phi = _gd(loss, _leaf(params), train, steps, inner_lr, create_graph=False)
            return _grad(loss(phi, val), list(phi.values()))

        return _mean(one, params, tasks, reduce)

    return target


def reptile_target(*, steps, inner_lr, sign=1.0, read_early=False, query_inner=False,
                   reduce="mean"):
    """θ − φ; ``read_early``: the displacement after K − 1 of the K steps."""
    def target(loss, params, tasks):
        def one(train, val):
            theta = _leaf(params)
            points = [theta]
            for _ in range(steps):
                points.append(_gd(loss, points[-1], val if query_inner else train, 1, inner_lr,
                                  create_graph=False))
            phi = points[-2] if read_early and steps > 0 else points[-1]
            return [sign * (theta[k] - phi[k]) for k in theta]

        return _mean(one, params, tasks, reduce)

    return target


def implicit_target(*, steps, inner_lr, lam, cg_iters=None, terms=None, step=1.0,
                    cg_offset=0, stale=False, without_lam=False, non_alternating=False,
                    drop_scalars=False, damping=0.0, lam_damping=0.0, warm_start=False,
                    plain_inner=False, pullback=False, reduce="mean", tol=None,
                    tol_previous=False):
    """IMAML (own CG) or Neumann (``terms``) on (I + H(φ)/λ)x = ∇L_val(φ), φ after K
    proximal steps from θ; the keywords are the deviations public code has."""

    def target(loss, params, tasks):
        def one(train, val):
            theta = _leaf(params)
            anchor = {k: v.detach() for k, v in theta.items()}
            phi = _gd(loss, theta, train, steps, inner_lr, create_graph=False,
                      lam=None if plain_inner else lam, anchor=anchor)
            if pullback:  # one step on λ/2‖φ − θ‖² alone
                phi = {k: (v - inner_lr * lam * (v - anchor[k])).detach().requires_grad_(True)
                       for k, v in phi.items()}
            b = list(_grad(loss(phi, val), list(phi.values())))
            hvp = _hvp_at(loss, phi, train)
            if without_lam:
                def matvec(v):
                    return [h + lam * vi for h, vi in zip(hvp(v), v)]
            else:
                def matvec(v):
                    return [(1 + damping) * vi + h / (lam + lam_damping)
                            for h, vi in zip(hvp(v), v)]
            if terms is None:
                x = _cg(matvec, b, cg_iters + cg_offset, stale, x0=b if warm_start else None,
                        tol=tol, tol_previous=tol_previous)
            else:  # x_J = η Σ (I − ηA)ʲ b
                sign = -1.0 if non_alternating else 1.0
                term, x = b, list(b)
                for _ in range(terms):
                    h = hvp(term)
                    term = [t - step * (t + sign * hi / lam) for t, hi in zip(term, h)]
                    x = [xi + t for xi, t in zip(x, term)]
                x = [step * xi for xi in x]
            if drop_scalars:  # a gradient that never reaches 0-dim parameters
                x = [torch.zeros_like(xi) if xi.dim() == 0 else xi for xi in x]
            return x

        return _mean(one, params, tasks, reduce)

    return target


def penalty_target(*, steps, inner_lr, lam, factor=2.0):
    def target(loss, params, tasks):
        def one(train, val):
            phi = _gd(loss, _leaf(params), train, steps, inner_lr, create_graph=False)
            g_val = _grad(loss(phi, val), list(phi.values()))
            g_tr = [t.detach() for t in _grad(loss(phi, train), list(phi.values()))]
            h = _hvp_at(loss, phi, train)(g_tr)
            return [a + factor * lam * b for a, b in zip(g_val, h)]

        return _mean(one, params, tasks)

    return target


CORRECT = {
    "maml": maml_target, "fomaml": fomaml_target, "reptile": reptile_target,
    "imaml": implicit_target, "neumann": implicit_target, "penalty": penalty_target,
}
