"""The oracle's inner-loop variants (``metagrad_reference.inner_loops``) check themselves.

Learned rates (one, per tensor, per entry, per step), partial adaptation, momentum /
Nesterov / Adam inner loops and the multi-step loss, each against something computed another
way: closed forms on quadratics (explicit matrix products), ``torch.optim``'s own SGD and
Adam, reverse mode through a loop written here, central finite differences of the
objective, and the existing plain-GD oracle. Everything is float64.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import metagrad_reference as reference
import pytest
import torch
from metagrad_reference import dense, finite_diff, inner_loops
from metagrad_reference.inner_loops import Rule

F64 = torch.float64
LAYOUT = [("w1", (6, 2)), ("b1", (6,)), ("w2", (1, 6)), ("b2", (1,))]
STEPS = 3
LR = {"gd": 0.3, "momentum": 0.15, "nesterov": 0.1, "adam": 0.02}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# --- problems -----------------------------------------------------------------------------

def _mlp_loss(params: dict[str, torch.Tensor], batch) -> torch.Tensor:
    x, y = batch
    hidden = torch.tanh(x @ params["w1"].T + params["b1"])
    return ((hidden @ params["w2"].T + params["b2"] - y) ** 2).mean()


def mlp(seed: int = 0):
    """A 2-6-1 tanh net (d = 25) and two regression tasks: (f, θ, [(train, val), …])."""
    g = torch.Generator().manual_seed(seed)
    like = {name: torch.zeros(shape, dtype=F64) for name, shape in LAYOUT}
    theta = 0.7 * torch.randn(25, generator=g, dtype=F64)
    tasks = []
    for _ in range(2):
        a, p = 1 + torch.rand(1, generator=g, dtype=F64), 3 * torch.rand(1, generator=g)
        batches = []
        for _ in range(2):
            x = 2 * torch.rand(8, 2, generator=g, dtype=F64) - 1
            batches.append((x, a * torch.sin(2 * x[:, :1] + p) + 0.5 * x[:, 1:]))
        tasks.append(tuple(batches))
    return reference.flat_loss(_mlp_loss, like), theta, tasks


def quadratic(seed: int = 0, d: int = 9):
    """L(φ) = ½(φ − c)ᵀA(φ − c) with batch (A, c); a train and a val (A, c), and θ."""
    g = torch.Generator().manual_seed(seed)

    def spd():
        q = torch.randn(d, d, generator=g, dtype=F64)
        return q @ q.T / d + 0.5 * torch.eye(d, dtype=F64)

    def f(phi, batch):
        A, c = batch
        return 0.5 * (phi - c) @ A @ (phi - c)

    train = (spd(), torch.randn(d, generator=g, dtype=F64))
    val = (spd(), torch.randn(d, generator=g, dtype=F64))
    return f, torch.randn(d, generator=g, dtype=F64), train, val


QLAYOUT = [("w", (2, 3)), ("b", (3,))]


def rate_dicts(steps: int, scale: float, seed: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    """For the MLP: every form of rate tensor, and the ANIL dict (head only)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return scale * (0.5 + torch.rand(*shape, generator=g, dtype=F64))

    return {
        "mixed": {"w1": r(()), "b1": r(6), "w2": r(steps, 1, 6), "b2": r(steps, 1)},
        "per_step_tensor": {"w1": r(steps, 1, 1), "b1": r(steps, 1), "w2": r(steps, 1, 1),
                            "b2": r(steps, 1)},
        "anil": {"w2": r(1, 6), "b2": r(())},
    }


# --- the rules and the rates: values --------------------------------------------------------

def test_rate_vectors_for_every_form():
    """Each form laid out by hand; a rate of the parameter's shape is per entry even when its
    first dimension equals K; a parameter missing from the dict gets rate 0."""
    layout = [("a", (3,)), ("m", (2, 2)), ("s", ())]
    theta = torch.zeros(8, dtype=F64)
    per_entry = torch.tensor([1.0, 2.0, 3.0], dtype=F64)  # shape (3,) == (K,) with K = 3
    per_step = torch.tensor([[[4.0]], [[5.0]], [[6.0]]], dtype=F64)
    out = inner_loops.rate_vectors(layout, theta, 3, {"a": per_entry, "m": per_step})
    for k in range(3):
        want = torch.tensor([1, 2, 3, 4 + k, 4 + k, 4 + k, 4 + k, 0], dtype=F64)
        assert torch.equal(out[k], want)
    step_entry = torch.arange(12, dtype=F64).reshape(3, 2, 2)
    out = inner_loops.rate_vectors(layout, theta, 3, {"m": step_entry, "s": torch.tensor(7.0)})
    for k in range(3):
        assert torch.equal(out[k], torch.cat([torch.zeros(3, dtype=F64),
                                              step_entry[k].reshape(-1),
                                              torch.tensor([7.0], dtype=F64)]))
    assert all(torch.equal(a, torch.full((8,), 0.5, dtype=F64))
               for a in inner_loops.rate_vectors(layout, theta, 2, 0.5))
    assert all(torch.equal(a, torch.full((8,), 0.25, dtype=F64))
               for a in inner_loops.rate_vectors(layout, theta, 2, torch.tensor(0.25)))


def _torch_optim_trajectory(f, theta, batch, layout, rates, make):
    """The same inner loop run by ``torch.optim`` itself (one param group per tensor)."""
    starts = [0]
    for _, shape in layout:
        starts.append(starts[-1] + int(torch.tensor(shape).prod()))
    leaves = [theta[a:b].clone().requires_grad_(True) for a, b in zip(starts, starts[1:])]
    opt = make([{"params": [p], "lr": rates[name]} for p, (name, _) in zip(leaves, layout)])
    points = [theta]
    for _ in range(STEPS):
        opt.zero_grad()
        f(torch.cat(leaves), batch).backward()
        opt.step()
        points.append(torch.cat([p.detach() for p in leaves]))
    return points


OPTIMS = {
    "gd": (Rule(), lambda groups: torch.optim.SGD(groups)),
    "momentum": (Rule("momentum", beta=0.8), lambda gs: torch.optim.SGD(gs, momentum=0.8)),
    "nesterov": (Rule("nesterov", beta=0.7),
                 lambda gs: torch.optim.SGD(gs, momentum=0.7, nesterov=True)),
    "adam": (Rule("adam", beta1=0.8, beta2=0.95, eps=1e-6),
             lambda gs: torch.optim.Adam(gs, betas=(0.8, 0.95), eps=1e-6)),
}


@pytest.mark.parametrize("kind", list(OPTIMS))
def test_trajectory_is_torch_optims(kind):
    """φ⁽ᵏ⁾ from the oracle's rules equal ``torch.optim.SGD`` (momentum, nesterov) and
    ``torch.optim.Adam`` steps with one learning rate per tensor: the PyTorch conventions."""
    f, theta, tasks = mlp()
    rule, make = OPTIMS[kind]
    rates = {name: torch.tensor(LR[kind] * (1 + i / 4), dtype=F64)
             for i, (name, _) in enumerate(LAYOUT)}
    got = inner_loops.trajectory(f, theta, LAYOUT, tasks[0][0], steps=STEPS, rates=rates,
                                 rule=rule)
    want = _torch_optim_trajectory(f, theta, tasks[0][0], LAYOUT,
                                   {k: float(v) for k, v in rates.items()}, make)
    for a, b in zip(got[1:], want[1:]):
        assert rel(a - theta, b - theta) < 1e-12


def test_proximal_trajectory_adds_the_proximal_gradient():
    """With lam, g_k = ∇L_tr(φ⁽ᵏ⁾) + λ(φ⁽ᵏ⁾ − θ): the plain-GD case is dense.proximal_gd."""
    f, theta, tasks = mlp()
    got = inner_loops.trajectory(f, theta, LAYOUT, tasks[0][0], steps=4, rates=0.2, lam=1.5)
    want = dense.proximal_gd(f, theta, tasks[0][0], 4, 0.2, 1.5)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


# --- closed forms on quadratics -----------------------------------------------------------

def test_gd_with_per_entry_and_per_step_rates_is_the_matrix_product():
    """L_tr = ½(φ − c)ᵀA(φ − c), L_val = ½(φ − e)ᵀB(φ − e), D_k = diag(α_k):
    φ⁽ᴷ⁾ − c = M_{K−1}⋯M_0 (θ − c) with M_k = I − D_kA; ∂F/∂θ = (M_{K−1}⋯M_0)ᵀ B(φ⁽ᴷ⁾ − e);
    ∂F/∂α_k = −A(φ⁽ᵏ⁾ − c) ⊙ (M_{K−1}⋯M_{k+1})ᵀ B(φ⁽ᴷ⁾ − e)."""
    f, theta, (A, c), (B, e) = quadratic()
    g = torch.Generator().manual_seed(3)
    K = 4
    rates = {"w": 0.2 + 0.2 * torch.rand(2, 3, generator=g, dtype=F64),       # per entry
             "b": 0.2 + 0.2 * torch.rand(K, 3, generator=g, dtype=F64)}       # per step, entry
    alphas = [torch.cat([rates["w"].reshape(-1), rates["b"][k]]) for k in range(K)]
    eye = torch.eye(9, dtype=F64)
    Ms = [eye - torch.diag(a) @ A for a in alphas]
    points = [theta]
    for M in Ms:
        points.append(c + M @ (points[-1] - c))
    def product(factors):  # M_last ⋯ M_first for factors in loop order
        out = eye
        for M in factors:
            out = M @ out
        return out

    outer = B @ (points[-1] - e)
    per_step = [-(A @ (points[k] - c)) * (product(Ms[k + 1:]).T @ outer) for k in range(K)]
    per_step_t = torch.stack(per_step)

    out = inner_loops.maml(f, theta, QLAYOUT, (A, c), (B, e), steps=K, rates=rates)
    traj = inner_loops.trajectory(f, theta, QLAYOUT, (A, c), steps=K, rates=rates)
    assert all(rel(a, b) < 1e-13 for a, b in zip(traj, points))
    assert rel(out.grad, product(Ms).T @ outer) < 1e-12
    assert rel(out.hyper_grad["inner_lr"]["w"], per_step_t[:, :6].sum(0).reshape(2, 3)) < 1e-12
    assert rel(out.hyper_grad["inner_lr"]["b"], per_step_t[:, 6:]) < 1e-12
    assert float(out.post_update_loss) == pytest.approx(float(f(points[-1], (B, e))), rel=1e-13)


@pytest.mark.parametrize("kind", ["momentum", "nesterov"])
def test_momentum_on_a_quadratic_is_a_linear_recursion(kind):
    """With y = φ − c and g = Ay the state (y, b) evolves linearly, (y', b') = T_k (y, b):
    momentum  b' = βb + Ay,  y' = y − D_k b' = (I − D_kA) y − βD_k b;
    nesterov  b' = βb + Ay,  y' = y − D_k(Ay + βb') = (I − (1 + β)D_kA) y − β²D_k b.
    φ⁽ᴷ⁾ − c is the top block of T_{K−1}⋯T_0 (θ − c, 0), ∂F/∂θ = P_yyᵀ B(φ⁽ᴷ⁾ − e)."""
    f, theta, (A, c), (B, e) = quadratic(seed=5)
    beta, K = 0.6, 4
    g = torch.Generator().manual_seed(4)
    rates = {"w": 0.1 + 0.2 * torch.rand(K, 1, 1, generator=g, dtype=F64),  # per step, tensor
             "b": 0.1 + 0.2 * torch.rand(3, generator=g, dtype=F64)}        # per entry
    eye = torch.eye(9, dtype=F64)
    Ts = []
    for k in range(K):
        D = torch.diag(torch.cat([rates["w"][k].reshape(()).expand(6), rates["b"]]))
        if kind == "momentum":
            top = torch.cat([eye - D @ A, -beta * D], 1)
        else:
            top = torch.cat([eye - (1 + beta) * D @ A, -beta ** 2 * D], 1)
        Ts.append(torch.cat([top, torch.cat([A, beta * eye], 1)]))
    P = torch.linalg.multi_dot(Ts[::-1])
    phi = c + P[:9, :9] @ (theta - c)
    out = inner_loops.maml(f, theta, QLAYOUT, (A, c), (B, e), steps=K, rates=rates,
                           rule=Rule(kind, beta=beta))
    traj = inner_loops.trajectory(f, theta, QLAYOUT, (A, c), steps=K, rates=rates,
                                  rule=Rule(kind, beta=beta))
    assert rel(traj[-1], phi) < 1e-13
    assert rel(out.grad, P[:9, :9].T @ (B @ (phi - e))) < 1e-12


def test_adam_one_step_closed_form_including_an_exactly_zero_gradient():
    """K = 1, separable L_tr = ½Σ a_j (φ_j − c_j)²: u = g/(|g| + ε) (m̂ = g, v̂ = g²), so
    ∂φ_j/∂θ_j = 1 − α a_j ε/(|g_j| + ε)², which is 1 − α a_j/ε where g_j = 0 exactly (the
    limit of the derivative at nearby points); ∂F/∂α_j = −u_j ∂L_val/∂φ_j."""
    g = torch.Generator().manual_seed(7)
    a = 0.5 + torch.rand(9, generator=g, dtype=F64)
    c = torch.randn(9, generator=g, dtype=F64)
    theta = torch.randn(9, generator=g, dtype=F64)
    theta[[1, 4, 8]] = c[[1, 4, 8]]  # exactly zero gradient there
    e = torch.randn(9, generator=g, dtype=F64)

    def f(phi, batch):
        if batch == "train":
            return 0.5 * (a * (phi - c) ** 2).sum()
        return 0.5 * ((phi - e) ** 2).sum()

    eps, alpha = 1e-3, torch.full((2, 3), 0.05, dtype=F64)
    rates = {"w": alpha, "b": torch.tensor(0.07, dtype=F64)}
    al = torch.cat([alpha.reshape(-1), torch.full((3,), 0.07, dtype=F64)])
    grad_tr = a * (theta - c)
    assert int((grad_tr == 0).sum()) == 3
    u = grad_tr / (grad_tr.abs() + eps)
    phi = theta - al * u
    dphi = 1 - al * a * eps / (grad_tr.abs() + eps) ** 2
    out = inner_loops.maml(f, theta, QLAYOUT, "train", "val", steps=1, rates=rates,
                           rule=Rule("adam", eps=eps))
    assert torch.isfinite(out.grad).all()
    assert rel(out.grad, dphi * (phi - e)) < 1e-12
    per_entry = -u * (phi - e)
    assert rel(out.hyper_grad["inner_lr"]["w"], per_entry[:6].reshape(2, 3)) < 1e-12
    assert float(out.hyper_grad["inner_lr"]["b"]) == pytest.approx(float(per_entry[6:].sum()),
                                                                   rel=1e-12)


def test_adam_zero_gradient_convention_is_the_limit_over_several_steps():
    """On a coupled quadratic with g_0 = 0 exactly in one entry (v̂ = 0 there at step 0; the
    coupling makes it nonzero later), the three-step Adam meta-gradient is finite and is the
    limit of the meta-gradients at θ moved by δ in that entry, where the ordinary formula
    applies: their difference shrinks in proportion to δ (a different convention would
    leave a difference that does not vanish)."""
    f, _, (A, _), (B, e) = quadratic(seed=8)
    A = A.clone()
    A[2, :], A[:, 2] = 0.0, 0.0
    A[2, 2], A[2, 0], A[0, 2], A[2, 1], A[1, 2] = 1.0, 0.25, 0.25, -0.25, -0.25
    assert float(torch.linalg.eigvalsh(A).min()) > 0
    c = torch.zeros(9, dtype=F64)
    theta = torch.randn(9, generator=torch.Generator().manual_seed(2), dtype=F64)
    theta[0], theta[1], theta[2] = 0.75, 0.75, 0.0  # g_2 = 0.25·0.75 − 0.25·0.75 + 0 = 0
    assert float(dense.gradient(f, theta, (A, c))[2]) == 0.0
    rule = Rule("adam", eps=1e-3)
    rates = {"w": torch.tensor(0.05, dtype=F64), "b": torch.tensor(0.03, dtype=F64)}
    out = inner_loops.maml(f, theta, QLAYOUT, (A, c), (B, e), steps=3, rates=rates, rule=rule)
    assert torch.isfinite(out.grad).all() and torch.isfinite(out.hyper_grad["inner_lr"]["w"])
    errors = []
    for delta in (1e-14, 1e-15, 1e-16):
        moved = theta.clone()
        moved[2] = delta
        near = inner_loops.maml(f, moved, QLAYOUT, (A, c), (B, e), steps=3, rates=rates,
                                rule=rule)
        assert float(dense.gradient(f, moved, (A, c))[2]) != 0.0
        errors.append(max(rel(out.grad, near.grad),
                          rel(out.hyper_grad["inner_lr"]["w"], near.hyper_grad["inner_lr"]["w"])))
    assert errors[-1] < 1e-9, errors
    assert all(5 < a / b < 20 for a, b in zip(errors, errors[1:])), errors
    # the entry's step-0 derivative (1 − β₁)/(c₁ε) = 1/ε is large: it is not a negligible term
    no_zero = inner_loops.maml(f, theta + 0.1, QLAYOUT, (A, c), (B, e), steps=3, rates=rates,
                               rule=rule)
    assert float(out.grad[2].abs()) > 10 * float(no_zero.grad[2].abs())


# --- MAML's exact derivatives against finite differences ----------------------------------

def _fd_checks(f, theta, train, val, rates, rule, weights=None):
    """Relative errors of MAML's grad and every hyper-gradient against central differences
    of ``maml_objective``."""
    out = inner_loops.maml(f, theta, LAYOUT, train, val, steps=STEPS, rates=rates, rule=rule,
                           weights=weights)
    objective = inner_loops.maml_objective(f, LAYOUT, train, val, steps=STEPS, rule=rule,
                                           weights=weights)
    errors = {"theta": rel(finite_diff.central_difference(lambda t: objective(t, rates), theta),
                           out.grad)}
    if isinstance(rates, torch.Tensor):
        fd = finite_diff.central_difference(lambda x: objective(theta, x.reshape(())),
                                            rates.reshape(1))
        errors["inner_lr"] = rel(fd, out.hyper_grad["inner_lr"].reshape(1))
    elif isinstance(rates, dict):
        for name, value in rates.items():
            def shifted(x, name=name, value=value):
                return objective(theta, {**rates, name: x.reshape(value.shape)})
            fd = finite_diff.central_difference(shifted, value.reshape(-1))
            errors[f"inner_lr[{name}]"] = rel(fd, out.hyper_grad["inner_lr"][name].reshape(-1))
        assert list(out.hyper_grad["inner_lr"]) == list(rates)
        assert all(out.hyper_grad["inner_lr"][k].shape == v.shape for k, v in rates.items())
    else:
        assert "inner_lr" not in out.hyper_grad
    if rule.learns_beta:
        fd = finite_diff.central_difference(lambda x: objective(theta, rates, beta=x.reshape(())),
                                            rule.beta.reshape(1))
        errors["beta"] = rel(fd, out.hyper_grad["beta"].reshape(1))
    else:
        assert "beta" not in out.hyper_grad
    return errors


RULES = {
    "gd": Rule(),
    "momentum": Rule("momentum", beta=torch.tensor(0.8, dtype=F64)),
    "nesterov": Rule("nesterov", beta=torch.tensor(0.7, dtype=F64)),
    "adam": Rule("adam", beta1=0.85, beta2=0.99),
}


@pytest.mark.parametrize("kind", list(RULES))
@pytest.mark.parametrize("form", ["float", "scalar", "mixed", "per_step_tensor", "anil"])
def test_maml_gradients_match_finite_differences(kind, form):
    """∂F/∂θ, ∂F/∂rates (each rate tensor: 0-dim, per entry, per step and entry, per step
    and tensor, the ANIL dict) and ∂F/∂β for every rule, to 1e-7 relative."""
    f, theta, tasks = mlp()
    train, val = tasks[0]
    if form == "float":
        rates = LR[kind]
    elif form == "scalar":
        rates = torch.tensor(LR[kind], dtype=F64)
    else:
        rates = rate_dicts(STEPS, LR[kind])[form]
    errors = _fd_checks(f, theta, train, val, rates, RULES[kind])
    assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("kind", ["gd", "momentum", "adam"])
def test_multi_step_loss_matches_finite_differences(kind):
    """MAML++'s F = Σ_k w_k L_val(φ⁽ᵏ⁾) (Antoniou et al. 2019, §4) with per-step rates."""
    f, theta, tasks = mlp(seed=1)
    errors = _fd_checks(f, theta, *tasks[1], rate_dicts(STEPS, LR[kind])["mixed"], RULES[kind],
                        weights=[0.2, 0.3, 0.5])
    assert max(errors.values()) < 1e-7, errors


def test_multi_step_loss_is_the_weighted_sum_of_shorter_loops():
    """The loop's prefix is the shorter loop: with float rates, the weighted gradient is
    Σ_k w_k times MAML's gradient after k steps; weights e_K are plain MAML."""
    f, theta, tasks = mlp()
    train, val = tasks[0]
    rule = Rule("nesterov", beta=0.5)
    w = [0.5, -0.25, 1.5]
    got = inner_loops.maml(f, theta, LAYOUT, train, val, steps=3, rates=0.1, rule=rule,
                           weights=w)
    want = sum(wk * inner_loops.maml(f, theta, LAYOUT, train, val, steps=k + 1, rates=0.1,
                                     rule=rule).grad for k, wk in enumerate(w))
    assert rel(got.grad, want) < 1e-12
    plain = inner_loops.maml(f, theta, LAYOUT, train, val, steps=3, rates=0.1, rule=rule)
    last = inner_loops.maml(f, theta, LAYOUT, train, val, steps=3, rates=0.1, rule=rule,
                            weights=[0.0, 0.0, 1.0])
    assert rel(last.grad, plain.grad) < 1e-14
    assert float(got.post_update_loss) == float(plain.post_update_loss)


def test_zero_steps_is_the_validation_gradient_at_theta():
    """K = 0: φ = θ, so ∂F/∂θ = ∇L_val(θ) and a rate that is never used has derivative 0."""
    f, theta, tasks = mlp()
    train, val = tasks[0]
    out = inner_loops.maml(f, theta, LAYOUT, train, val, steps=0,
                           rates=torch.tensor(0.1, dtype=F64), rule=RULES["momentum"])
    assert torch.equal(out.grad, dense.gradient(f, theta, val))
    assert float(out.hyper_grad["inner_lr"]) == 0.0 and float(out.hyper_grad["beta"]) == 0.0


# --- MAML's exact derivatives against reverse mode through a loop written here ------------

def _autograd_loop(f, theta, train, steps, alphas, kind, beta, *, detach_gradients=False,
                   beta1=0.9, beta2=0.999, eps=1e-8):
    """The inner loop in plain torch.autograd (the rules written out again, here), from leaves
    θ, α_k and β; with ``detach_gradients`` every g_k is a constant (first order)."""
    phi, b, m, v = theta, 0 * theta, 0 * theta, 0 * theta
    for k in range(steps):
        if detach_gradients:
            g = torch.func.grad(f)(phi.detach(), train)
        else:
            (g,) = torch.autograd.grad(f(phi, train), phi, create_graph=True)
        if kind == "gd":
            step = g
        elif kind in ("momentum", "nesterov"):
            b = beta * b + g
            step = b if kind == "momentum" else g + beta * b
        else:
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            step = (m / (1 - beta1 ** (k + 1))) / ((v / (1 - beta2 ** (k + 1))).sqrt() + eps)
        phi = phi - alphas[k] * step
    return phi


@pytest.mark.parametrize("kind", ["gd", "momentum", "nesterov", "adam"])
def test_maml_matches_reverse_mode_through_the_loop(kind):
    """Forward accumulation of dense Jacobians = reverse mode (create_graph) through the
    unrolled loop, per step and entry rates and β, to 1e-11."""
    f, theta, tasks = mlp(seed=2)
    train, val = tasks[0]
    g = torch.Generator().manual_seed(9)
    step_entry = LR[kind] * (0.5 + torch.rand(STEPS, 25, generator=g, dtype=F64))
    rates = {name: step_entry[:, a:b].reshape(STEPS, *shape) for (name, shape), a, b in
             zip(LAYOUT, [0, 12, 18, 24], [12, 18, 24, 25])}
    rule = RULES[kind]
    out = inner_loops.maml(f, theta, LAYOUT, train, val, steps=STEPS, rates=rates, rule=rule)
    leaves = [theta.clone().requires_grad_(True), step_entry.clone().requires_grad_(True),
              torch.tensor(0.8 if kind == "momentum" else 0.7, dtype=F64, requires_grad=True)]
    phi = _autograd_loop(f, leaves[0], train, STEPS, leaves[1], kind, leaves[2],
                         beta1=rule.beta1, beta2=rule.beta2, eps=rule.eps)
    d_theta, d_rates, d_beta = torch.autograd.grad(f(phi, val), leaves, allow_unused=True)
    assert rel(out.grad, d_theta) < 1e-11
    got = torch.cat([out.hyper_grad["inner_lr"][n].reshape(STEPS, -1) for n, _ in LAYOUT], 1)
    assert rel(got, d_rates) < 1e-11
    if rule.learns_beta:
        assert rel(out.hyper_grad["beta"], d_beta) < 1e-11


# --- the other methods ----------------------------------------------------------------------

SETTINGS = {
    "maml": dict(steps=3, inner_lr=0.2),
    "fomaml": dict(steps=3, inner_lr=0.2),
    "reptile": dict(steps=3, inner_lr=0.2),
    "penalty": dict(steps=2, inner_lr=0.2, lam=0.5),
    "imaml": dict(steps=4, inner_lr=0.2, lam=2.0, cg_iters=3),
    "neumann": dict(steps=4, inner_lr=0.2, lam=2.0, terms=4, step=0.4),
}


@pytest.mark.parametrize("method", list(SETTINGS))
def test_float_rate_gd_is_the_plain_oracle(method):
    """With a float rate and plain GD every method equals ``metagrad_reference.methods``
    (to 1e-12), losses included, and has no hyper-gradient."""
    f, theta, tasks = mlp()
    settings = dict(SETTINGS[method])
    lr = settings.pop("inner_lr")
    for train, val in tasks:
        want = reference.methods.METHODS[method](f, theta, train, val, inner_lr=lr, **settings)
        got = inner_loops.LEARNED_METHODS[method](f, theta, LAYOUT, train, val, rates=lr,
                                                  **settings)
        assert rel(got.grad, want.grad) < 1e-12
        assert float(got.pre_update_loss) == pytest.approx(float(want.pre_update_loss), rel=1e-14)
        assert float(got.post_update_loss) == pytest.approx(float(want.post_update_loss),
                                                             rel=1e-12)
        assert got.hyper_grad == {}


@pytest.mark.parametrize("kind", ["gd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("method", ["fomaml", "penalty"])
def test_first_order_hyper_gradients_match_autograd_with_detached_gradients(method, kind):
    """(∂φ⁽ᴷ⁾/∂(α, β) with every g_k held constant)ᵀ gᵢ, by reverse mode through the loop
    written here with every gradient detached; gᵢ is the method's own gradient."""
    f, theta, tasks = mlp(seed=3)
    train, val = tasks[1]
    g = torch.Generator().manual_seed(11)
    step_entry = LR[kind] * (0.5 + torch.rand(STEPS, 25, generator=g, dtype=F64))
    rates = {name: step_entry[:, a:b].reshape(STEPS, *shape) for (name, shape), a, b in
             zip(LAYOUT, [0, 12, 18, 24], [12, 18, 24, 25])}
    rule = RULES[kind]
    extra = {"lam": 0.3} if method == "penalty" else {}
    out = inner_loops.LEARNED_METHODS[method](f, theta, LAYOUT, train, val, steps=STEPS,
                                              rates=rates, rule=rule, **extra)
    leaves = [step_entry.clone().requires_grad_(True),
              torch.tensor(0.8 if kind == "momentum" else 0.7, dtype=F64, requires_grad=True)]
    phi = _autograd_loop(f, theta, train, STEPS, leaves[0], kind, leaves[1],
                         detach_gradients=True, beta1=rule.beta1, beta2=rule.beta2,
                         eps=rule.eps)
    phi_value = phi.detach()
    gi = torch.func.grad(f)(phi_value, val)
    if method == "penalty":
        hess = torch.autograd.functional.hessian(lambda p: f(p, train), phi_value)
        gi = gi + 2 * 0.3 * hess @ torch.func.grad(f)(phi_value, train)
    assert rel(out.grad, gi) < 1e-12
    d_rates, d_beta = torch.autograd.grad(phi @ gi, leaves, allow_unused=True)
    got = torch.cat([out.hyper_grad["inner_lr"][n].reshape(STEPS, -1) for n, _ in LAYOUT], 1)
    assert rel(got, d_rates) < 1e-12
    if rule.learns_beta:
        assert rel(out.hyper_grad["beta"], d_beta) < 1e-12
    else:
        assert "beta" not in out.hyper_grad


def test_fomaml_one_step_rate_gradient_closed_form():
    """K = 1 plain GD: φ = θ − α ⊙ g₀, so ∂/∂α = −g₀ ⊙ ∇L_val(φ) (per entry), summed to each
    rate tensor."""
    f, theta, tasks = mlp()
    train, val = tasks[0]
    rates = {"w1": torch.full((6, 2), 0.2, dtype=F64), "b2": torch.tensor(0.3, dtype=F64)}
    g0 = dense.gradient(f, theta, train)
    alpha = torch.zeros(25, dtype=F64)
    alpha[:12], alpha[24] = 0.2, 0.3
    phi = theta - alpha * g0
    per_entry = -g0 * dense.gradient(f, phi, val)
    out = inner_loops.fomaml(f, theta, LAYOUT, train, val, steps=1, rates=rates)
    assert rel(out.hyper_grad["inner_lr"]["w1"], per_entry[:12].reshape(6, 2)) < 1e-13
    assert float(out.hyper_grad["inner_lr"]["b2"]) == pytest.approx(float(per_entry[24]),
                                                                    rel=1e-13)
    # at K = 1 MAML's rate gradient is the same (g₀ does not depend on α₀); from K = 2 on
    # MAML's has the second-order terms FOMAML drops
    second = inner_loops.maml(f, theta, LAYOUT, train, val, steps=1, rates=rates)
    assert rel(second.hyper_grad["inner_lr"]["w1"], out.hyper_grad["inner_lr"]["w1"]) < 1e-13
    first2 = inner_loops.fomaml(f, theta, LAYOUT, train, val, steps=2, rates=rates)
    second2 = inner_loops.maml(f, theta, LAYOUT, train, val, steps=2, rates=rates)
    assert rel(first2.hyper_grad["inner_lr"]["w1"], second2.hyper_grad["inner_lr"]["w1"]) > 1e-3


@pytest.mark.parametrize("kind", ["momentum", "adam"])
def test_reptile_and_implicit_methods_use_the_rule(kind):
    """Reptile's θ − φ and the implicit system's φ come from the rule's (proximal) loop;
    they return no hyper-gradient."""
    f, theta, tasks = mlp()
    train, val = tasks[0]
    rule, rates = RULES[kind], rate_dicts(STEPS, LR[kind])["mixed"]
    out = inner_loops.reptile(f, theta, LAYOUT, train, val, steps=STEPS, rates=rates, rule=rule)
    phi = inner_loops.trajectory(f, theta, LAYOUT, train, steps=STEPS, rates=rates, rule=rule)
    assert torch.equal(out.grad, theta - phi[-1]) and out.hyper_grad == {}
    lam = 2.0
    prox = inner_loops.trajectory(f, theta, LAYOUT, train, steps=STEPS, rates=rates, rule=rule,
                                  lam=lam)[-1]
    A = torch.eye(25, dtype=F64) + dense.hessian(f, prox, train) / lam
    b = dense.gradient(f, prox, val)
    imaml = inner_loops.imaml(f, theta, LAYOUT, train, val, steps=STEPS, rates=rates, lam=lam,
                              cg_iters=25, rule=rule)
    assert rel(A @ imaml.grad, b) < 1e-12 and imaml.hyper_grad == {}
    neumann = inner_loops.neumann(f, theta, LAYOUT, train, val, steps=STEPS, rates=rates,
                                  lam=lam, terms=3, step=0.5, rule=rule)
    M = torch.eye(25, dtype=F64) - 0.5 * A
    want = 0.5 * (b + M @ b + M @ M @ b + M @ M @ M @ b)
    assert rel(neumann.grad, want) < 1e-12 and neumann.hyper_grad == {}


def test_meta_batch_means_every_entry():
    f, theta, tasks = mlp()
    rule = Rule("momentum", beta=torch.tensor(0.6, dtype=F64))
    rates = rate_dicts(STEPS, 0.1)["mixed"]
    outs = [inner_loops.maml(f, theta, LAYOUT, tr, val, steps=STEPS, rates=rates, rule=rule)
            for tr, val in tasks]
    mean = inner_loops.meta_batch(inner_loops.maml, f, theta, LAYOUT, tasks, steps=STEPS,
                                  rates=rates, rule=rule)
    by_name = inner_loops.meta_batch("maml", f, theta, LAYOUT, tasks, steps=STEPS, rates=rates,
                                     rule=rule)
    assert rel(mean.grad, (outs[0].grad + outs[1].grad) / 2) < 1e-15
    assert torch.equal(by_name.grad, mean.grad)
    for name in rates:
        want = (outs[0].hyper_grad["inner_lr"][name] + outs[1].hyper_grad["inner_lr"][name]) / 2
        assert rel(mean.hyper_grad["inner_lr"][name], want) < 1e-15
    assert rel(mean.hyper_grad["beta"],
               (outs[0].hyper_grad["beta"] + outs[1].hyper_grad["beta"]) / 2) < 1e-15
    assert rel(mean.post_update_loss,
               (outs[0].post_update_loss + outs[1].post_update_loss) / 2) < 1e-15
    with pytest.raises(ValueError, match="no tasks"):
        inner_loops.meta_batch("maml", f, theta, LAYOUT, [], steps=1, rates=0.1)


def test_unadapted_parameters_stay_at_theta():
    """ANIL: the parameters missing from the dict never move, under every rule."""
    f, theta, tasks = mlp()
    rates = rate_dicts(STEPS, 0.1)["anil"]
    for rule in RULES.values():
        points = inner_loops.trajectory(f, theta, LAYOUT, tasks[0][0], steps=STEPS,
                                        rates=rates, rule=rule)
        assert torch.equal(points[-1][:18], theta[:18])
        assert not torch.equal(points[-1][18:], theta[18:])


# --- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("rates, match", [
    ({"w1": torch.ones(2, 6)}, r"'w1'.*shape \(2, 6\)"),
    ({"b1": torch.ones(STEPS, 1, 1)}, r"'b1'.*shape \(3, 1, 1\)"),
    ({"b1": torch.ones(1)}, r"'b1'.*shape \(1,\)"),
    ({"w3": torch.tensor(0.1)}, r"unknown parameters \['w3'\]"),
    ({}, "empty dict"),
    (torch.ones(3), r"0-dim.*shape \(3,\)"),
    ({"w1": 0.1}, r"'w1' must be a tensor"),
    ("0.1", "float, a 0-dim tensor or a dict"),
])
def test_bad_rates_are_refused(rates, match):
    f, theta, tasks = mlp()
    train, val = tasks[0]
    with pytest.raises(ValueError, match=match):
        inner_loops.maml(f, theta, LAYOUT, train, val, steps=STEPS, rates=rates)
    with pytest.raises(ValueError, match=match):
        inner_loops.trajectory(f, theta, LAYOUT, train, steps=STEPS, rates=rates)


def test_bad_settings_are_refused():
    f, theta, tasks = mlp()
    train, val = tasks[0]
    with pytest.raises(ValueError, match=r"leaves out \['w1', 'b1'\]"):
        inner_loops.imaml(f, theta, LAYOUT, train, val, steps=2, lam=1.0, cg_iters=2,
                          rates={"w2": torch.tensor(0.1), "b2": torch.tensor(0.1)})
    with pytest.raises(ValueError, match="one entry per inner step"):
        inner_loops.maml(f, theta, LAYOUT, train, val, steps=3, rates=0.1, weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="unknown inner rule kind 'rmsprop'"):
        Rule("rmsprop")
    with pytest.raises(ValueError, match="eps > 0"):
        Rule("adam", eps=0.0)
    with pytest.raises(ValueError, match="0-dim"):
        Rule("momentum", beta=torch.ones(2))
    with pytest.raises(ValueError, match="layout has 24 entries, theta 25"):
        inner_loops.maml(f, theta, LAYOUT[:-1], train, val, steps=1,
                         rates=0.1)
    with pytest.raises(ValueError, match="steps must be an integer"):
        inner_loops.trajectory(f, theta, LAYOUT, train, steps=-1, rates=0.1)


def test_new_modules_never_import_metagrad():
    """A fresh interpreter that imports the inner-loop oracle has no metagrad module loaded
    (the static check of every reference/ file is in test_reference.py)."""
    code = ("import sys, metagrad_reference.inner_loops, metagrad_reference.rates; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'metagrad']; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(reference.__file__).parent.parent)
