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


# ---- inner-loop variants: learned rates, momentum, Adam, the multi-step loss ------------------

def _rate_at(rates, name, param, k, late):
    """The step size of parameter ``name`` at step k: a number, one 0-dim tensor for all, or
    the dict entry (its k-th slice for a per-step rate; ``rates[k - 1]`` when ``late``)."""
    if not isinstance(rates, dict):
        return rates
    rate = rates[name]
    if rate.dim() == param.dim() + 1:  # per step
        return rate[k - 1] if late else rate[k]
    return rate


def _root(v, naive):
    """√v, with the derivative 0 where v = 0 (there m = 0 too, so that is the limit of the
    exact derivative), unless ``naive``: then autograd's 1/(2√v) = ∞ gives 0·∞ = NaN."""
    if naive:
        return v.sqrt()
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(),
                       torch.zeros_like(v))


def _direction(kind, rule, state, name, g, t, *, no_bias, bias_float32, eps_outside, ema,
               naive_sqrt):
    """u for one tensor and the rule's new state (written as torch.optim writes them)."""
    if kind == "gd":
        return g
    if kind in ("momentum", "nesterov"):
        beta = float(rule.beta)
        b = beta * state.get(name, torch.zeros_like(g)) + ((1 - beta) * g if ema else g)
        state[name] = b
        return b if kind == "momentum" else g + beta * b
    m = rule.beta1 * state.get(("m", name), torch.zeros_like(g)) + (1 - rule.beta1) * g
    v = rule.beta2 * state.get(("v", name), torch.zeros_like(g)) + (1 - rule.beta2) * g * g
    state[("m", name)], state[("v", name)] = m, v
    if no_bias:
        return m / (_root(v, naive_sqrt) + rule.eps)
    if bias_float32:  # torch.pow(python float, int64 tensor) computes in float32
        count = torch.tensor(t)
        c1 = (1 - pow(rule.beta1, count)).to(g.dtype)
        c2 = (1 - pow(rule.beta2, count)).to(g.dtype)
    else:
        c1, c2 = 1 - rule.beta1 ** t, 1 - rule.beta2 ** t
    if eps_outside:  # Kingma & Ba 2015, §2: the step size folds in the corrections
        return (c2 ** 0.5 / c1) * m / (_root(v, naive_sqrt) + rule.eps)
    return (m / c1) / (_root(v / c2, naive_sqrt) + rule.eps)


def learned_target(*, steps, inner_lr, inner=None, step_weights=None, first_order=False,
                   rate_first_order=False, rates_late=False, steps_summed=False,
                   rates_detached=False, rate_sign=False, entries_mean=False, carry=None,
                   kind=None, no_bias=False, bias_float32=False, eps_outside=False, ema=False,
                   query_inner=False, reduce="mean", perturb_rates=0.0, lam=None,
                   naive_sqrt=False):
    """MAML (FOMAML with ``first_order``; the penalty method with its ``lam``) through an
    inner loop with learned rates ``inner_lr`` (a number, a 0-dim tensor, or a dict of
    per-tensor / per-entry / per-step tensors; absent names not adapted) and the update rule
    ``inner`` (``mg.Momentum`` / ``mg.Adam``, read by attribute), returning ``(grad,
    {"inner_lr": rate-gradient})`` like ``out.hyper_grad``. The keywords are the deviations:
    see ``metagrad_reference.inner_variants`` for the equations of each."""
    rule_kind = "gd" if inner is None else (
        "adam" if hasattr(inner, "beta1") else "nesterov" if inner.nesterov else "momentum")
    kind = kind or rule_kind
    options = dict(no_bias=no_bias, bias_float32=bias_float32, eps_outside=eps_outside, ema=ema,
                   naive_sqrt=naive_sqrt)
    learned = isinstance(inner_lr, (dict, torch.Tensor))

    def target(loss, params, tasks):
        rates = ({k: v.detach().clone().requires_grad_(True) for k, v in inner_lr.items()}
                 if isinstance(inner_lr, dict) else
                 inner_lr.detach().clone().requires_grad_(True) if learned else inner_lr)
        rate_list = (list(rates.values()) if isinstance(rates, dict)
                     else [rates] if learned else [])
        used = ({k: v.detach() for k, v in rates.items()} if isinstance(rates, dict)
                else rates.detach()) if rates_detached else rates
        theta = _leaf(params)
        adapted = [k for k in theta if not isinstance(used, dict) or k in used]
        state: dict = {}
        total_g = [torch.zeros_like(v) for v in theta.values()]
        total_r = [torch.zeros_like(r) for r in rate_list]
        objective = 0.0
        count = 0

        def one(train, val, state):
            nonlocal count
            if carry is None:
                state.clear()
            elif carry == "detached":
                for key in list(state):
                    state[key] = state[key].detach()
            phi = dict(theta)
            directions = []
            losses = []
            for k in range(steps):
                value = loss(phi, val if query_inner else train)
                g = torch.autograd.grad(value, [phi[n] for n in adapted],
                                        create_graph=not first_order)
                count += 1
                step = {}
                for n, gn in zip(adapted, g):
                    u = _direction(kind, inner, state, n, gn, count if carry else k + 1,
                                   **options)
                    step[n] = u
                    phi[n] = phi[n] - _rate_at(used, n, theta[n], k, rates_late) * u
                directions.append(step)
                losses.append(dict(phi))
            if not carry:
                count = 0
            if lam is not None:
                return phi, directions, None
            if step_weights is not None:
                return phi, directions, sum(w * loss(p, val) for w, p in zip(step_weights,
                                                                             losses))
            return phi, directions, loss(phi, val)

        for i in range(tasks.num_tasks):
            train, val = tasks.task(i)
            phi, directions, value = one(train, val, state)
            if lam is not None:  # gᵢ = ∇L_val(φ) + 2λH∇L_tr(φ) at φ, first order
                point = {k: v.detach().requires_grad_(True) for k, v in phi.items()}
                g_tr = torch.autograd.grad(loss(point, train), list(point.values()),
                                           create_graph=True)
                h = torch.autograd.grad(g_tr, list(point.values()),
                                        grad_outputs=[t.detach() for t in g_tr])
                g_val = torch.autograd.grad(loss(point, val), list(point.values()))
                gi = [a + 2 * lam * b for a, b in zip(g_val, h)]
                out = torch.autograd.grad([phi[k] for k in theta] if rate_list else [],
                                          rate_list, grad_outputs=gi, allow_unused=True) \
                    if rate_list else []
                total_g = [a + b for a, b in zip(total_g, gi)]
                total_r = [a + (torch.zeros_like(r) if b is None else b)
                           for a, b, r in zip(total_r, out, rate_list)]
                continue
            if carry == "differentiated":
                objective = objective + value
                continue
            g_phi = (torch.autograd.grad(value, [phi[n] for n in adapted], retain_graph=True)
                     if rate_first_order and rate_list else None)
            wrt = list(theta.values()) + rate_list
            grads = torch.autograd.grad(value, wrt, allow_unused=True)
            grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)]
            gi, ri = grads[:len(theta)], grads[len(theta):]
            if g_phi is not None:  # −Σₖ uₖ ⊙ ∇L_val(φ), reduced to each rate
                ri = _first_order_rates(rates, theta, adapted, directions, g_phi)
            total_g = [a + b.detach() for a, b in zip(total_g, gi)]
            total_r = [a + b.detach() for a, b in zip(total_r, ri)]
        if carry == "differentiated":
            wrt = list(theta.values()) + rate_list
            grads = torch.autograd.grad(objective, wrt, allow_unused=True)
            grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)]
            total_g, total_r = grads[:len(theta)], grads[len(theta):]
            scale = 1.0
        else:
            scale = 1.0 if reduce == "sum" else 1.0 / tasks.num_tasks
        grad = {k: t.detach() * scale for k, t in zip(theta, total_g)}
        if carry == "differentiated" and reduce != "sum":
            grad = {k: t / tasks.num_tasks for k, t in grad.items()}
            total_r = [t / tasks.num_tasks for t in total_r]
            scale = 1.0
        rate_grad = [t.detach() * scale for t in total_r]
        rate_grad = [_post(r, rate, theta, name, steps_summed, entries_mean)
                     for r, rate, name in zip(rate_grad, rate_list, _rate_keys(rates, theta))]
        rate_grad = [(-r if rate_sign else r) * (1 + perturb_rates) for r in rate_grad]
        if not learned:
            return grad
        hyper = (dict(zip(rates, rate_grad)) if isinstance(rates, dict) else rate_grad[0])
        return grad, {"inner_lr": hyper}

    return target


def _rate_keys(rates, theta):
    return list(rates) if isinstance(rates, dict) else [None]


def _post(r, rate, theta, name, steps_summed, entries_mean):
    """The rate-gradient's bugs applied after the fact (pooled steps, a mean over entries)."""
    per_step = name is not None and rate.dim() == theta[name].dim() + 1
    if steps_summed and per_step:
        r = r.sum(0, keepdim=True).expand_as(r).clone()
    if entries_mean:
        covered = (sum(v.numel() for v in theta.values()) if name is None
                   else theta[name].numel())
        per = rate[0].numel() if per_step else rate.numel()
        r = r * per / covered
    return r


def _first_order_rates(rates, theta, adapted, directions, g_phi):
    """∂F/∂rates with every inner gradient constant: −Σₖ uₖ ⊙ ∇L_val(φ), summed over the
    entries (and steps) each rate covers."""
    g = dict(zip(adapted, g_phi))
    if not directions:  # K = 0: nothing depends on the rates
        return [torch.zeros_like(r) for r in (rates.values() if isinstance(rates, dict)
                                              else [rates])]
    if not isinstance(rates, dict):
        return [-sum(sum((step[n] * g[n]).sum() for n in adapted)
                     for step in directions).detach()]
    out = []
    for name, rate in rates.items():
        per = [-(step[name] * g[name]).detach() for step in directions]
        if rate.dim() == theta[name].dim() + 1:  # per step
            stacked = torch.stack(per)
            out.append(stacked if rate.shape == stacked.shape
                       else stacked.reshape(len(per), -1).sum(1).reshape(rate.shape))
        elif rate.dim() == 0:
            out.append(sum(p.sum() for p in per))
        else:
            out.append(sum(per))
    return out
