"""float32: every method against the float64 oracle, with tolerances derived from ε₃₂.

The float64 reference is evaluated on the *same* float32 inputs (data and θ
promoted exactly to float64), so the error measured is float32 arithmetic alone.

Tolerance derivation (not tuned). With unit roundoff u = ε₃₂/2 ≈ 6.0e-8, a
length-n reduction (matrix product, sum over a batch, inner product of two
parameter vectors) has relative error ≲ √n·u with high probability
(Higham & Mary 2019, "A new approach to probabilistic rounding error
analysis"; the worst case is n·u, Higham 2002 §3.1). A meta-gradient is a
chain of G such passes, G = ``method.gradient_equivalents()`` (the cost model:
one forward+backward per gradient, two per HVP), whose first-order
errors add. Inner-loop steps are contractions or near-contractions for these
step sizes (α·|λ(H)| < 1), so they do not amplify the error; the implicit
methods' linear solve does, by κ(A) for CG, and for the truncated Neumann
series by η Σ_{j≤J} ρʲ (ρ = ρ(I − ηA)), the norm of the series operator. Hence

    tol = amplification · G · √n · u,  n = the longest reduction (d, batch size, width),

evaluated with dense float64 linear algebra. Observed errors are 1e-7 … 7e-7,
2–30× below; every tol stays below 1e-4, so a float32 path that silently lost
precision (a half-precision cast, a dropped term) fails.
"""

from __future__ import annotations

import math

import metagrad_reference as reference
import pytest
import torch
from helpers import DEFAULTS, get, rel_error

import metagrad as mg
from metagrad.methods import METHOD_NAMES
from metagrad.testing.tolerance import U32, float32_tolerance

PROBLEMS = ("linreg", "softmax", "mlp_softplus", "sinusoid_small")


def _settings(method: str, problem: str) -> dict:
    """Settings where the float32 tolerance stays meaningful (below 1e-4): five inner steps,
    a solver that contracts well; a method registered later runs at the first setting of
    its own verify plan."""
    d = DEFAULTS[problem]
    lr, lam = d.inner_lr, d.lam
    chosen = {"maml": dict(steps=5, inner_lr=lr), "fomaml": dict(steps=5, inner_lr=lr),
              "reptile": dict(steps=5, inner_lr=lr),
              "imaml": dict(steps=5, inner_lr=lr, lam=lam, cg_iters=5),
              "neumann": dict(steps=5, inner_lr=lr, lam=2 * lam, terms=5, step=0.5),
              "penalty": dict(steps=3, inner_lr=lr, lam=0.1)}
    return chosen.get(method) or mg.METHODS[method].verify_plan(lr, lam)[0]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_float32_within_epsilon_derived_tolerance(method: str, problem: str):
    p32 = get(problem, 2, 0, torch.float32)
    s = _settings(method, problem)
    m = mg.METHODS[method](**s)
    out = m(p32.loss, p32.params, p32.tasks)
    assert all(v.dtype == torch.float32 for v in out.grad.values())

    params64 = {k: v.double() for k, v in p32.params.items()}
    tasks64 = p32.tasks.to(torch.float64)
    f = reference.flat_loss(p32.loss, params64)
    theta = reference.flatten(params64)
    task_list = [tasks64.task(i) for i in range(tasks64.num_tasks)]
    ref = reference.meta_batch(method, f, theta, task_list, **s)

    batch = max(x.shape[1] for x in (p32.tasks.train[0], p32.tasks.val[0]))
    widest = max(max(v.shape) for v in p32.params.values())
    n = max(p32.dim, batch, widest)
    tol = float32_tolerance(method, s, f, theta, task_list, n)
    assert tol < 1e-4, "tolerance too loose to mean anything"
    assert rel_error(reference.flatten(out.grad), ref.grad) <= tol
    # losses: one forward pass after the inner loop (G = gradient passes before it)
    loss_tol = m.gradient_equivalents() * math.sqrt(n) * U32
    assert rel_error(out.post_update_loss, ref.post_update_loss) <= loss_tol
    # L_tr(θ): one forward pass, two chained reductions (layer products, batch mean)
    assert rel_error(out.pre_update_loss, ref.pre_update_loss) <= 2 * math.sqrt(n) * U32
