"""The wrong meta-gradients that meta-learning code ships, computed exactly: what a buggy
(or differently defined) implementation returns.

Two families, each one function whose keyword options switch on one deviation from the
textbook method at a time (or several at once), computed densely in float64 from their
own equations, per task, like :mod:`metagrad_reference.methods` (a flat loss ``f``, the
flat θ, one task's ``train`` and ``val`` batches, metagrad's settings ``steps``,
``inner_lr``, ``lam``, ``cg_iters``, ``terms``, ``step``). With no option given each
family is the textbook method it starts from, so that an auditor can combine deviations
(say, a plain inner loop, one pull-back step and a damped system, as one public iMAML
code base does) and name exactly the combination a failing implementation computes.

* :func:`unrolled`: K gradient steps θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − αₖ∇L_tr(θ⁽ᵏ⁾) from θ⁽⁰⁾ = θ
  (per-step sizes αₖ, α by default), then one of three outputs:

  - ``"maml"``: gᵢ = (I − α₀H₀P₀)(I − α₁H₁P₁)⋯(I − α_{K−1}H_{K−1}P_{K−1}) ∇L_val(θ⁽ᴷ⁾),
    Hₖ = ∇²L_tr(θ⁽ᵏ⁾), Pₖ the diagonal 0/1 matrix of the coordinates whose inner step k
    is differentiated (Finn et al. 2017, eq. 1-2, by the chain rule). Pₖ = I for every k is
    MAML, Pₖ = 0 first-order MAML; ``graph="first"`` differentiates step 0 only (code that
    passes ``create_graph=True`` to the first inner step only); ``detached`` zeroes the rows
    of one parameter tensor in every Pₖ (its inner gradient ``.detach()``-ed).
  - ``"displacement"``: gᵢ = s·(θ − θ⁽ᴷ⁻ʳ⁾), Reptile (Nichol et al. 2018, Alg. 1) for
    s = 1, r = 0; r = 1 reads the displacement one step early, s = 1/α divides it by the
    step size.
  - ``"penalty"``: gᵢ = ∇L_val(φ) + c·λH(φ)∇L_tr(φ), φ = θ⁽ᴷ⁾; the penalty method
    (Mehra & Hamm 2021) has c = 2.

* :func:`implicit`: an inner point φ, a linear system A x = b, b = ∇L_val(φ), and a solver.
  Textbook iMAML (Rajeswaran et al. 2019, Alg. 2): φ after K proximal steps
  φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − α(∇L_tr(φ⁽ᵏ⁾) + λ(φ⁽ᵏ⁾ − θ)), A = I + H(φ)/λ, m CG iterations from
  x₀ = 0; the Neumann method (Lorraine et al. 2020) sums η Σ_{j≤J} (I − ηA)ʲ b instead.
  Deviations: a plain inner loop (no proximal term); one extra "pull-back" step
  φ ← φ − αλ(φ − θ) after the inner loop; a damped system (1 + c)I + H/(λ + δ); the
  system H + λI (no factor λ); I − H/λ (the non-alternating series); no solve at all
  (x = b); CG started from x₀ = w·b; CG with the stale residual or on the normal
  equations; CG stopped on a residual tolerance (keeping or dropping its last update);
  the exact solve.

Dense Hessians and gradients are memoised per call in a :class:`Memo`; an auditor that
evaluates many combinations on one problem passes one ``Memo`` to all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import dense
from .flat import FlatLoss


class Memo:
    """Dense gradients and Hessians of one flat loss, each computed once per point and
    batch (keyed by the batch object's identity and the point's bytes)."""

    def __init__(self, f: FlatLoss):
        self.f = f
        self._cache: dict[tuple, Tensor] = {}

    def _get(self, kind: str, x: Tensor, batch: Any) -> Tensor:
        key = (kind, id(batch), x.detach().cpu().numpy().tobytes())
        if key not in self._cache:
            fn = dense.gradient if kind == "g" else dense.hessian
            self._cache[key] = fn(self.f, x, batch)
        return self._cache[key]

    def gradient(self, x: Tensor, batch: Any) -> Tensor:
        return self._get("g", x, batch)

    def remember(self, key: tuple, compute: Any) -> Any:
        """``compute()``, once per ``key`` (e.g. an inner point)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def hessian(self, x: Tensor, batch: Any) -> Tensor:
        return self._get("h", x, batch)


def _memo(f: FlatLoss | Memo) -> Memo:
    return f if isinstance(f, Memo) else Memo(f)


def _eye(theta: Tensor) -> Tensor:
    return torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)


# --------------------------------------------------------------------------------------------
# the unrolled family (MAML, first-order MAML, Reptile, the penalty method)

def trajectory(f: FlatLoss | Memo, theta: Tensor, train: Any, rates: Sequence[float]
               ) -> list[Tensor]:
    """θ⁽⁰⁾ … θ⁽ᴷ⁾ of θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − αₖ∇L_tr(θ⁽ᵏ⁾), K = len(rates)."""
    memo = _memo(f)
    points = [theta]
    for rate in rates:
        points.append(points[-1] - rate * memo.gradient(points[-1], train))
    return points


def unrolled(f: FlatLoss | Memo, theta: Tensor, train: Any, val: Any, *, steps: int,
             inner_lr: float, output: str = "maml", rates: Sequence[float] | None = None,
             graph: str = "all", detached: Tensor | None = None, read_back: int = 0,
             displacement_scale: float = 1.0, penalty_factor: float = 2.0, lam: float = 0.0,
             **_: Any) -> Tensor:
    """gᵢ of the unrolled family (module docstring).

    ``rates``: the step sizes α₀ … α_{K−1} (default α for every step); ``graph``:
    ``"all"``, ``"none"`` or ``"first"`` (which inner steps are differentiated, output
    ``"maml"``); ``detached``: a 0/1 (bool) vector over θ's coordinates whose inner
    gradient is a constant at every step; ``read_back`` and ``displacement_scale``
    (output ``"displacement"``): gᵢ = s·(θ − θ⁽ᴷ⁻ʳ⁾); ``penalty_factor`` (output
    ``"penalty"``): c in ∇L_val(φ) + c·λH(φ)∇L_tr(φ)."""
    memo = _memo(f)
    rates = [inner_lr] * steps if rates is None else list(rates)
    if len(rates) != steps:
        raise ValueError(f"{len(rates)} step sizes for {steps} steps")
    points = trajectory(memo, theta, train, rates)
    if output == "displacement":
        if read_back > steps:
            raise ValueError(f"read_back={read_back} > steps={steps}")
        return displacement_scale * (theta - points[steps - read_back])
    phi = points[-1]
    if output == "penalty":
        return memo.gradient(phi, val) + penalty_factor * lam * (
            memo.hessian(phi, train) @ memo.gradient(phi, train))
    if output != "maml":
        raise ValueError(f"unknown output {output!r}")
    keep = torch.ones_like(theta) if detached is None else 1.0 - detached.to(theta.dtype)
    g = memo.gradient(phi, val)
    for k in reversed(range(steps)):
        differentiated = graph == "all" or (graph == "first" and k == 0)
        if graph not in ("all", "none", "first"):
            raise ValueError(f"unknown graph {graph!r}")
        if differentiated:
            # (I − αₖHₖPₖ) g: Pₖ zeroes the detached coordinates of g before Hₖ acts.
            g = g - rates[k] * (memo.hessian(points[k], train) @ (keep * g))
    return g


# --------------------------------------------------------------------------------------------
# the implicit family (iMAML, the Neumann-series implicit gradient)

def inner_point(f: FlatLoss | Memo, theta: Tensor, train: Any, *, steps: int, inner_lr: float,
                lam: float, inner: str = "proximal", pullback: bool = False) -> Tensor:
    """φ after K proximal (``inner="proximal"``) or plain (``"plain"``) GD steps from θ,
    then, with ``pullback``, one step on λ/2‖φ − θ‖²: φ ← φ − αλ(φ − θ)."""
    memo = _memo(f)
    phi = theta
    for _ in range(steps):
        grad = memo.gradient(phi, train)
        if inner == "proximal":
            grad = grad + lam * (phi - theta)
        elif inner != "plain":
            raise ValueError(f"unknown inner loop {inner!r}")
        phi = phi - inner_lr * grad
    if pullback:
        phi = phi - inner_lr * lam * (phi - theta)
    return phi


def conjugate_gradient(A: Tensor, b: Tensor, iters: int, x0: Tensor | None = None,
                       stale: bool = False, tol: float | None = None,
                       tol_returns_previous: bool = False) -> Tensor:
    """``iters`` CG iterations on A x = b from ``x0`` (default 0): r₀ = p₀ = b − Ax₀;
    αᵢ = rᵢᵀrᵢ/pᵢᵀApᵢ; xᵢ₊₁ = xᵢ + αᵢpᵢ; rᵢ₊₁ = rᵢ − αᵢApᵢ; βᵢ = rᵢ₊₁ᵀrᵢ₊₁/rᵢᵀrᵢ;
    pᵢ₊₁ = rᵢ₊₁ + βᵢpᵢ (Hestenes & Stiefel 1952), or, ``stale``, pᵢ₊₁ = rᵢ + βᵢpᵢ (the
    direction built from the old residual). An exactly zero residual ends the loop; with
    ``tol``, so does ‖rᵢ₊₁‖ < tol, returning xᵢ₊₁, or, ``tol_returns_previous``, xᵢ (the
    update computed but not kept)."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - A @ x
    p = r.clone()
    for _ in range(iters):
        rr = r @ r
        if rr == 0:
            break
        ap = A @ p
        alpha = rr / (p @ ap)
        x_new = x + alpha * p
        r_new = r - alpha * ap
        if tol is not None and float(torch.linalg.vector_norm(r_new)) < tol:
            return x if tol_returns_previous else x_new
        x = x_new
        p = (r if stale else r_new) + ((r_new @ r_new) / rr) * p
        r = r_new
    return x


def implicit_solve(h: Tensor, b: Tensor, *, lam: float, solver: str = "cg",
                   cg_iters: int | None = None, terms: int | None = None, step: float = 1.0,
                   system: str = "standard", damping: float = 0.0, lam_damping: float = 0.0,
                   start: float = 0.0, cg: str = "standard", exact: bool = False,
                   tol: float | None = None, tol_returns_previous: bool = False,
                   **_: Any) -> Tensor:
    """x for the system A x = b built from H = ``h`` (the implicit family, module docstring).

    ``system``: ``"standard"`` A = (1 + c)I + H/(λ + δ) (c = ``damping``, δ =
    ``lam_damping``; 0 and 0 is iMAML's I + H/λ), ``"no_lam"`` A = H + λI (the Neumann
    series then with step η/λ), ``"flipped"`` A = I − H/λ, ``"none"`` no solve (x = b).
    ``solver``: ``"cg"`` (``cg_iters`` iterations from x₀ = ``start``·b; ``cg`` =
    ``"stale"`` or ``"normal"`` for CG with the stale residual or on A²x = Ab; ``tol``: CG
    also stops once ‖r‖ < tol, keeping the last update or, ``tol_returns_previous``, not;
    m ≥ d iterations of plain CG without a tolerance are the exact solve) or ``"neumann"``
    (η Σ_{j≤J} (I − ηA)ʲ b, J = ``terms``, η = ``step``); ``exact``: the dense solve
    instead of either."""
    eye = _eye(b)
    if system == "none":
        return b
    if system == "standard":
        a = (1.0 + damping) * eye + h / (lam + lam_damping)
    elif system == "no_lam":
        a = h + lam * eye
    elif system == "flipped":
        a = eye - h / lam
    else:
        raise ValueError(f"unknown system {system!r}")
    if exact:
        return torch.linalg.solve(a, b)
    if solver == "neumann":
        assert terms is not None
        return dense.neumann_sum(a, b, terms, step / lam if system == "no_lam" else step)
    if solver != "cg":
        raise ValueError(f"unknown solver {solver!r}")
    assert cg_iters is not None
    if cg == "normal":
        return (torch.linalg.solve(a, b) if cg_iters >= b.numel()
                else conjugate_gradient(a @ a, a @ b, cg_iters))
    if cg == "standard" and tol is None and cg_iters >= b.numel():
        return torch.linalg.solve(a, b)  # CG is exact after d iterations (exact arithmetic)
    return conjugate_gradient(a, b, cg_iters, x0=start * b, stale=cg == "stale", tol=tol,
                              tol_returns_previous=tol_returns_previous)


def implicit(f: FlatLoss | Memo, theta: Tensor, train: Any, val: Any, *, steps: int,
             inner_lr: float, lam: float, inner: str = "proximal", pullback: bool = False,
             **options: Any) -> Tensor:
    """gᵢ of the implicit family: :func:`implicit_solve` at φ = :func:`inner_point`, with
    H = ∇²L_tr(φ) and b = ∇L_val(φ)."""
    memo = _memo(f)
    key = ("phi", id(train), theta.detach().cpu().numpy().tobytes(), steps, inner_lr, lam, inner,
           pullback)
    phi = memo.remember(key, lambda: inner_point(memo, theta, train, steps=steps,
                                                 inner_lr=inner_lr, lam=lam, inner=inner,
                                                 pullback=pullback))
    return implicit_solve(memo.hessian(phi, train), memo.gradient(phi, val), lam=lam, **options)


FAMILIES = {"unrolled": unrolled, "implicit": implicit}
"""name → family function, as a method names its family (``metagrad.Method.audit_family``)."""
