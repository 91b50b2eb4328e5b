"""The audit battery: small float64 problems built to expose the meta-gradient bugs that
meta-learning code has shipped.

Each problem is a loss, parameters θ and a meta-batch of tasks (a
:class:`metagrad.problems.Problem`), chosen for one or more bug classes:

=====================  =====================================================================
``scalar+matrix``      a matrix, a vector and a 0-dim scalar parameter (keys with dots, as
                       ``named_parameters`` gives them): a gradient that never reaches one
                       tensor, a 0-dim parameter mishandled (wrong shape, zero gradient),
                       tensors of different shapes flattened in the wrong order.
                       Loss: mean((s·tanh(xW + b) − y)²), W 4×3, b 3, s scalar; d = 16;
                       y from a teacher near θ plus noise (nonconvex, moderately).
                       Run with T = 3 tasks (an odd count: a sum instead of the mean is 3×
                       off) and T = 1 (the single-task path).
``softmax``            softmax regression (W 5×4, b 4; d = 24, cross-entropy, 8 shots):
                       a convex problem with a spread Hessian spectrum, so that CG and the
                       Neumann series stopped after a few iterations are far from their
                       limits: m − 1, m and m + 1 iterations (J − 1, J, J + 1 terms) and the
                       exact solve all differ, and only exact-iteration semantics passes.
``one scalar``         a single 0-dim parameter, loss mean((tanh(s·x) − y)²): code that
                       ravels a scalar to shape (1,) or (1, 1), or special-cases d = 1.
=====================  =====================================================================

Curvature is set from the settings, so that the bug classes are far apart whatever
``inner_lr`` and ``lam`` the target was built with: every loss is multiplied by c = s/L₀,
L₀ the largest |eigenvalue| of the unscaled train-loss Hessian at θ over the tasks, with

* s = 0.5/α for the gradient-descent methods: α·‖H‖ ≈ 0.5, so each (I − αH) factor moves
  the gradient by up to half and first- and second-order answers differ by tens of percent;
* s = min(2λ, 1/α − λ) for IMAML: I + H/λ has condition number about 3, far from the
  identity, and the proximal loop α(λ + ‖H‖) ≤ 1 converges;
* s = λ·min(2, (2/η − 1)/2) for Neumann (capped the same way): the series converges with
  spectral radius about 1/2 (η = 1), so J − 1, J and J + 1 terms differ clearly.

For the implicit methods c is also capped so that c·N₀ ≤ λ/2, N₀ the size of the most
negative Hessian eigenvalue at θ: I + H/λ stays positive definite (eigenvalues above
about 1/2), where CG and the series are well defined.

A factory target (one that takes the settings) is also run at other step counts on
``scalar+matrix``: K = 0, 1 and several inner steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import metagrad_reference as oracle
import torch
from metagrad_reference import dense

from .._task import Task
from ..methods import is_implicit
from ..problems import Problem


@dataclass(frozen=True)
class BatteryCase:
    """One row of the audit: a problem, a task count and the settings the target runs at."""

    label: str
    """Problem family (``scalar+matrix``, ``softmax``, ``one scalar``)."""
    tasks: int
    settings: tuple[tuple[str, Any], ...]

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.settings)

    @property
    def name(self) -> str:
        return f"{self.label}, T={self.tasks}, K={self.config['steps']}"


# --------------------------------------------------------------------------------------------
# problem builders (float64 data; the loss is scaled by c)

def _scalar_matrix(tasks: int, g: torch.Generator):
    params = {"layer.weight": 0.6 * torch.randn(4, 3, generator=g, dtype=torch.float64),
              "layer.bias": 0.2 * torch.randn(3, generator=g, dtype=torch.float64),
              "scale": torch.tensor(1.3, dtype=torch.float64)}

    # Targets from a teacher near θ, so that the residuals, and with them the indefinite
    # part of the Hessian, stay moderate: the implicit methods' I + H/λ is then positive
    # definite without the Gauss-Newton part being small.
    teacher = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64)
               for k, v in params.items()}

    def predict(p, x):
        return p["scale"] * torch.tanh(x @ p["layer.weight"] + p["layer.bias"])

    def batch():
        x = torch.randn(tasks, 6, 4, generator=g, dtype=torch.float64)
        return x, predict(teacher, x) + 0.2 * torch.randn(tasks, 6, 3, generator=g,
                                                           dtype=torch.float64)

    def loss(p, b):
        x, y = b
        return ((predict(p, x) - y) ** 2).mean()

    return params, Task(train=batch(), val=batch()), loss


def _softmax(tasks: int, g: torch.Generator):
    params = {"weight": 0.3 * torch.randn(5, 4, generator=g, dtype=torch.float64),
              "bias": 0.1 * torch.randn(4, generator=g, dtype=torch.float64)}

    def batch():
        return (torch.randn(tasks, 8, 5, generator=g, dtype=torch.float64),
                torch.randint(0, 4, (tasks, 8), generator=g))

    def loss(p, b):
        x, y = b
        logits = x @ p["weight"] + p["bias"]
        picked = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return (torch.logsumexp(logits, -1) - picked).mean()

    return params, Task(train=batch(), val=batch()), loss


def _one_scalar(tasks: int, g: torch.Generator):
    params = {"scale": torch.tensor(0.8, dtype=torch.float64)}

    def batch():
        x = torch.randn(tasks, 8, generator=g, dtype=torch.float64)
        return x, torch.tanh(1.5 * x) + 0.1 * torch.randn(tasks, 8, generator=g,
                                                            dtype=torch.float64)

    def loss(p, b):
        x, y = b
        return ((torch.tanh(p["scale"] * x) - y) ** 2).mean()

    return params, Task(train=batch(), val=batch()), loss


BUILDERS = {"scalar+matrix": (_scalar_matrix, 11), "softmax": (_softmax, 12),
            "one scalar": (_one_scalar, 13)}
"""label → (builder(tasks, generator) -> (params, tasks, unscaled loss), seed)."""


def scaled(loss, c: float):
    """``c · loss``: the battery's curvature scaling (see the module docstring)."""

    def out(params, batch):
        return c * loss(params, batch)

    return out


def curvature_target(method: str, settings: dict[str, Any]) -> float:
    """s, the spectral radius the scaled train-loss Hessian gets at θ (module docstring)."""
    lr = settings["inner_lr"]
    if is_implicit(method):
        lam = settings["lam"]
        if method == "imaml":
            s = 2 * lam
        else:
            eta = settings.get("step", 1.0)
            s = lam * min(2.0, 0.5 * (2 / eta - 1)) if eta < 2 else 0.5 * lam
        return max(min(s, 1 / lr - lam), 0.25 * lam)
    return 0.5 / lr


_SPECTRUM: dict[tuple[str, int], tuple[float, float]] = {}
_PROBLEMS: dict[tuple, tuple[Problem, Problem]] = {}


def _base(label: str, tasks: int):
    builder, seed = BUILDERS[label]
    return builder(tasks, torch.Generator().manual_seed(seed))


def _spectrum(label: str, tasks: int) -> tuple[float, float]:
    """(L₀, N₀): the largest |eigenvalue| and the most negative eigenvalue's size (0 if
    none) of the unscaled ∇²L_tr(θ), each the worst over the tasks."""
    if (label, tasks) not in _SPECTRUM:
        params, task, loss = _base(label, tasks)
        f, theta = oracle.flat_loss(loss, params), oracle.flatten(params)
        eig = [torch.linalg.eigvalsh(dense.hessian(f, theta, task.task(i)[0]))
               for i in range(tasks)]
        _SPECTRUM[label, tasks] = (max(float(e.abs().max()) for e in eig),
                                   max(max(-float(e.min()), 0.0) for e in eig))
    return _SPECTRUM[label, tasks]


def scale_for(label: str, tasks: int, method: str, settings: dict[str, Any]) -> float:
    """c = s/L₀; for the implicit methods also c·N₀ ≤ λ/2, so that I + H/λ keeps its
    eigenvalues above about 1/2 (positive definite: CG and the series are well defined)."""
    radius, negative = _spectrum(label, tasks)
    c = curvature_target(method, settings) / radius
    if is_implicit(method) and negative > 0:
        c = min(c, 0.5 * settings["lam"] / negative)
    return c


def problems(label: str, tasks: int, method: str, settings: dict[str, Any],
             float32: bool = False) -> tuple[Problem, Problem]:
    """``(given, exact)``: the problem the target is given and its float64 twin for the
    oracle. In float64 they are the same problem; with ``float32`` the target gets float32
    data and parameters, and the twin holds the same numbers promoted exactly to float64,
    so that the error measured is the target's float32 arithmetic alone."""
    c = scale_for(label, tasks, method, settings)
    key = (label, tasks, c, float32)
    if key not in _PROBLEMS:
        params, task, loss = _base(label, tasks)
        description = f"{label}, {tasks} task(s), loss scaled by {c:.4g}"
        name = f"audit:{label}:c={c!r}"
        if float32:
            p32 = {k: v.float() for k, v in params.items()}
            t32 = task.to(torch.float32)
            given = Problem(name, scaled(loss, c), p32, t32, description=description)
            exact = Problem(name + ":exact", scaled(loss, c),
                            {k: v.double() for k, v in p32.items()}, t32.to(torch.float64),
                            description=description)
        else:
            given = exact = Problem(name, scaled(loss, c), params, task, description=description)
        _PROBLEMS[key] = (given, exact)
    return _PROBLEMS[key]


def cases(method: str, settings: dict[str, Any], vary_steps: bool) -> list[BatteryCase]:
    """The battery for ``method`` at ``settings``: every problem at the given settings, and,
    when the target can be rebuilt at other settings (a factory), ``scalar+matrix`` at
    other inner step counts so that K = 0, 1 and several steps are all run."""
    base = tuple(sorted(settings.items()))
    out = [BatteryCase("scalar+matrix", 3, base), BatteryCase("scalar+matrix", 1, base),
           BatteryCase("softmax", 3, base), BatteryCase("one scalar", 3, base)]
    if vary_steps:
        k = settings["steps"]
        for other in [s for s in (0, 1, 3) if s != k][:2]:
            out.append(BatteryCase("scalar+matrix", 3,
                                   tuple(sorted({**settings, "steps": other}.items()))))
    return out

