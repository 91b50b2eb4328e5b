"""Shared test problems: the embedded set of ``metagrad verify`` (one definition, used
by the CLI, the report and the tests) plus small random problems for property tests."""

from __future__ import annotations

import itertools

import torch

import metagrad as mg
from metagrad.problems import DEFAULTS, Problem, linreg
from metagrad.verify.compare import Case, evaluate, flat, get, rel_error

__all__ = ["DEFAULTS", "DIMS", "F32", "F64", "PROBLEMS", "Case", "Perturbed", "Problem",
           "dense_hessian", "evaluate", "flat", "get", "level1_failures", "linreg",
           "perturb_grad", "rel", "rel_error", "settings_for", "table", "tanh_mlp_problem"]

F64 = torch.float64
F32 = torch.float32


def level1_failures(row: dict) -> list[str]:
    """The Level-1 criteria a result row violates (empty list: it passes)."""
    from metagrad.verify.compare import FD_RTOL, REF_RTOL

    bad = []
    for key, tol in (("err_reference", REF_RTOL), ("err_loss", REF_RTOL),
                     ("err_closed_form", REF_RTOL), ("err_fd", FD_RTOL)):
        if row.get(key) is not None and not row[key] <= tol:
            bad.append(f"{key} = {row[key]:.3e} > {tol:.0e}")
    return bad


def perturb_grad(grad: dict[str, torch.Tensor], size: float, seed: int = 1234):
    """g + size·‖g‖·u with u a fixed pseudo-random unit vector: a relative error of ``size``
    in a generic direction (not just a rescaling)."""
    gen = torch.Generator().manual_seed(seed)
    flat = torch.cat([v.reshape(-1) for v in grad.values()])
    u = torch.randn(flat.shape, generator=gen, dtype=torch.float64).to(flat.dtype)
    u = u / u.norm()
    scale = size * flat.norm()
    if scale == 0:  # a zero gradient (e.g. Reptile at K = 0): perturb absolutely
        scale = torch.tensor(size, dtype=flat.dtype)
    out, start = {}, 0
    for k, v in grad.items():
        n = v.numel()
        out[k] = v + scale * u[start:start + n].reshape(v.shape)
        start += n
    return out


class Perturbed:
    """A public method whose meta-gradient (or loss) is off by a relative ``size``."""

    def __init__(self, method, size: float, what: str = "grad"):
        self.method, self.size, self.what = method, size, what

    def __call__(self, loss, params, tasks):
        out = self.method(loss, params, tasks)
        if self.what == "grad":
            out.grad = perturb_grad(out.grad, self.size)
        else:
            setattr(out, self.what, getattr(out, self.what) * (1 + self.size))
        return out


def random_mlp(seed: int, width: int, activation: str = "tanh", meta_batch: int = 2,
               dtype: torch.dtype = F64) -> Problem:
    """A random smooth regression MLP 1-width-1 on ``mg.Sinusoid`` tasks (for property tests)."""
    import metagrad as mg

    act = {"tanh": torch.tanh, "softplus": torch.nn.functional.softplus}[activation]
    g = torch.Generator().manual_seed(seed)
    tasks = mg.Sinusoid(shots=6, query=6).sample(meta_batch, seed=seed, dtype=dtype)

    def loss(params, batch):
        x, y = batch
        h = act(x @ params["W1"] + params["b1"])
        return (((h @ params["W2"] + params["b2"]) - y) ** 2).mean()

    params = {"W1": torch.randn(1, width, generator=g, dtype=F64).to(dtype),
              "b1": 0.3 * torch.randn(width, generator=g, dtype=F64).to(dtype),
              "W2": (torch.randn(width, 1, generator=g, dtype=F64) / width ** 0.5).to(dtype),
              "b2": torch.zeros(1, dtype=dtype)}
    return Problem(f"mlp_{activation}_{width}_{seed}", loss, params, tasks)


def tanh_mlp_problem(seed=0, tasks=3, sizes=(1, 6, 6, 1)):
    """A small smooth sinusoid regression MLP (float64) through ``mg.module_loss``."""
    import metagrad as mg
    from metagrad import _pytree as pt
    from metagrad.models import mlp

    model = mlp(sizes, torch.nn.Tanh, seed=seed, dtype=torch.float64)
    loss = mg.module_loss(model, lambda a, b: ((a - b) ** 2).mean())
    params = pt.detach(mg.params_of(model))
    task = mg.Sinusoid(shots=5, query=5).sample(tasks, seed=seed, dtype=torch.float64)
    return loss, params, task


def dense_hessian(loss, params, batch):
    """∇²loss by torch.autograd.functional.hessian on the flattened parameters."""
    from metagrad import _pytree as pt

    flat = pt.flatten(params)

    def f(vec):
        return loss(pt.unflatten(vec, params), batch)

    return torch.autograd.functional.hessian(f, flat)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------------------------
# the Level-1 case table (tests/test_accuracy.py and tests/test_accuracy_sharpness.py)

PROBLEMS = ("linreg", "softmax", "mlp_softplus", "sinusoid_small")
def settings_for(method: str, problem: str, dim: int) -> list[dict]:
    """The Level-1 settings of ``method`` on ``problem``: the method's own test plan
    (K from 0 to 10; 15 too on the quadratic)."""
    d = DEFAULTS[problem]
    steps = (0, 1, 3, 10, 15) if problem == "linreg" else (0, 1, 3, 10)
    return mg.METHODS[method].test_plan(d.inner_lr, d.lam, dim, steps)


DIMS = {"linreg": 5, "softmax": 15, "mlp_softplus": 51, "sinusoid_small": 141}


def table() -> list[Case]:
    """The Level-1 table: every method on every problem, its settings (``settings_for``),
    each with every value of the method's own code-path options (MAML's backward), every
    code path on one setting, and several meta-batch sizes."""
    cases = []
    for problem in PROBLEMS:
        for method in mg.METHOD_NAMES:
            paths = mg.METHODS[method].code_paths
            extra = {k: v for k, v in paths.items() if k not in ("batching", "hvp")}
            own = [dict(zip(extra, values)) for values in itertools.product(*extra.values())]
            settings = settings_for(method, problem, DIMS[problem])
            for s, options in itertools.product(settings, own):
                cases.append(Case.of(method, problem, **options, **s))
            # every code path on one non-trivial setting (K > 0)
            s = settings[2]
            for values in itertools.product(*paths.values()):
                case = Case.of(method, problem, **dict(zip(paths, values)), **s)
                if case not in cases:
                    cases.append(case)
            cases.append(Case.of(method, problem, hvp="auto", **s))
            # several task counts
            if problem in ("linreg", "mlp_softplus"):
                for tasks in (1, 4):
                    cases.append(Case.of(method, problem, meta_batch=tasks, **settings[1]))
    return cases
