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
``dead input``         ``scalar+matrix`` with the first input zero in every train batch, so
                       the first row of W has an exactly zero inner gradient (dead ReLU units
                       and unused parameters do this): run for Adam inner loops, whose
                       v̂ = 0 there makes a naive √v̂ backward 0·∞ = NaN (functional targets).
=====================  =====================================================================

Curvature is set from the settings, so that the bug classes are far apart whatever
``inner_lr`` and ``lam`` the target was built with: every loss is multiplied by c = s/L₀,
L₀ the largest |eigenvalue| of the unscaled train-loss Hessian at θ over the tasks, and s
the method's own choice (``mg.METHODS[name](**settings).audit_curvature()``):

* s = 0.5/α for the gradient-descent methods: α·‖H‖ ≈ 0.5, so each (I − αH) factor moves
  the gradient by up to half and first- and second-order answers differ by tens of percent;
* s = min(2λ, 1/α − λ) for CG (IMAML): I + H/λ has condition number about 3, far from the
  identity, and the proximal loop α(λ + ‖H‖) ≤ 1 converges;
* s = λ·min(2, (2/η − 1)/2) for the Neumann series (capped the same way): the series
  converges with spectral radius about 1/2 (η = 1), so J − 1, J and J + 1 terms differ.

For the implicit methods c is also capped so that c·N₀ ≤ λ/2, N₀ the size of the most
negative Hessian eigenvalue at θ: I + H/λ stays positive definite (eigenvalues above
about 1/2), where CG and the series are well defined.

A factory target (one that takes the settings) is also run at other step counts on
``scalar+matrix``: K = 0, 1 and several inner steps.

**Module form** (for :class:`metagrad.testing.ModuleTarget`, code written against an
``nn.Module``): the same three problems as models, ``ScaledTanh(4, 3)`` (``layer.weight``
3×4, ``layer.bias``, ``scale``), ``nn.Linear(5, 4)`` and ``ScalarTanh()``, with the loss
``F.cross_entropy(model(x), y)`` (labels balanced and sorted by class: 3 × 2, 4 × 2 and
2 × 4 shots) or ``F.mse_loss(model(x), y)`` (targets from a teacher near θ plus noise), as
the code computes it: the loss is not multiplied by c. The curvature is set instead through
the data: inputs multiplied by a and the first layer's weights (the 0-dim scale of
``ScalarTanh``) divided by a, which leaves the outputs at θ unchanged and scales that
layer's Hessian by a², and, for squared error with ``ScaledTanh``, the scale and the
targets multiplied by a. a is chosen by a few steps of a ← a·√(s/L(a)) (and the cap above
for the implicit methods).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import metagrad_reference as oracle
import torch
from metagrad_reference import dense
from torch import Tensor, nn

from .._module import module_loss, params_of
from .._task import Task
from ..methods import is_implicit, method_class
from ..problems import Problem
from .modules import CRITERIA, ScalarTanh, ScaledTanh


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


def _dead_input(tasks: int, g: torch.Generator):
    params, task, loss = _scalar_matrix(tasks, g)
    x, y = task.train
    x = x.clone()
    x[..., 0] = 0.0  # the first row of W gets no gradient from the train loss
    return params, Task(train=(x, y), val=task.val), loss


NON_FINITE_HINTS = {
    "dead input": "here the first row of W has an exactly zero inner gradient, so Adam's v̂ is "
                  "exactly 0 there and the backward of √v̂ is 0·∞ = NaN, which then spreads to "
                  "every entry; the exact derivative there is finite (m̂ = 0 too): take the "
                  "square root's derivative as 0 where v̂ = 0 (torch.where), as metagrad does",
}
"""Why a problem can make a result non-finite, by label (added to that diagnosis)."""

BUILDERS = {"scalar+matrix": (_scalar_matrix, 11), "softmax": (_softmax, 12),
            "one scalar": (_one_scalar, 13), "dead input": (_dead_input, 11)}
"""label → (builder(tasks, generator) -> (params, tasks, unscaled loss), seed)."""


def scaled(loss, c: float):
    """``c · loss``: the battery's curvature scaling (see the module docstring)."""

    def out(params, batch):
        return c * loss(params, batch)

    return out


def curvature_target(method: str, settings: dict[str, Any]) -> float:
    """s, the spectral radius the scaled train-loss Hessian gets at θ (module docstring)."""
    return method_class(method)(**settings).audit_curvature()


_SPECTRUM: dict[tuple[str, int], tuple[float, float]] = {}
_PROBLEMS: dict[tuple, tuple[Problem, Problem]] = {}


def _base(label: str, tasks: int):
    builder, seed = BUILDERS[label]
    return builder(tasks, torch.Generator().manual_seed(seed))


def base_params(label: str) -> dict[str, Tensor]:
    """The float64 parameters θ of problem ``label`` (names and shapes as the target sees
    them in the functional form)."""
    return _base(label, 1)[0]


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
             float32: bool = False, criterion: str | None = None) -> tuple[Problem, Problem]:
    """``(given, exact)``: the problem the target is given and its float64 twin for the
    oracle. In float64 they are the same problem; with ``float32`` the target gets float32
    data and parameters, and the twin holds the same numbers promoted exactly to float64,
    so that the error measured is the target's float32 arithmetic alone. With a
    ``criterion`` (``"cross_entropy"`` or ``"mse"``), the module form: the problems carry
    ``module`` and ``criterion``, and the loss is ``criterion(module(x), y)``."""
    if criterion is not None:
        return _module_problems(label, tasks, method, settings, float32, criterion)
    c = scale_for(label, tasks, method, settings)
    key = (label, tasks, c, float32)
    if key not in _PROBLEMS:
        params, task, loss = _base(label, tasks)
        description = f"{label}, {tasks} task(s), loss scaled by {c:.4g}"
        name = f"audit:{label}:c={c!r}"
        _PROBLEMS[key] = _pair(name, description, scaled(loss, c), params, task, float32)
    return _PROBLEMS[key]


def _pair(name: str, description: str, loss, params: dict[str, Tensor], task: Task,
          float32: bool, module: nn.Module | None = None,
          criterion: Callable[[Tensor, Tensor], Tensor] | None = None) -> tuple[Problem, Problem]:
    if not float32:
        problem = Problem(name, loss, params, task, description=description, module=module,
                          criterion=criterion)
        return problem, problem
    p32 = {k: v.float() for k, v in params.items()}
    t32 = task.to(torch.float32)
    given = Problem(name, loss, p32, t32, description=description,
                    module=None if module is None else copy.deepcopy(module).float(),
                    criterion=criterion)
    exact = Problem(name + ":exact", loss, {k: v.double() for k, v in p32.items()},
                    t32.to(torch.float64), description=description, module=module,
                    criterion=criterion)
    return given, exact


# --------------------------------------------------------------------------------------------
# the module form

def _module_base(label: str, tasks: int, criterion: str, a: float
                 ) -> tuple[nn.Module, Task]:
    """The model (float64, parameters θ) and tasks of problem ``label`` at knob ``a``."""
    g = torch.Generator().manual_seed(BUILDERS[label][1] + 100)
    classes = criterion == "cross_entropy"

    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    def labels(n_classes: int, shots: int) -> Tensor:
        return torch.arange(n_classes).repeat_interleave(shots).expand(tasks, -1).clone()

    model: nn.Module
    if label == "scalar+matrix":
        model = ScaledTanh(4, 3).double()
        weight, bias, scale = randn(3, 4, scale=0.6), randn(3, scale=0.2), 1.3
        teacher = ScaledTanh(4, 3).double()
        with torch.no_grad():
            teacher.layer.weight.copy_(weight + randn(3, 4, scale=0.3))
            teacher.layer.bias.copy_(bias + randn(3, scale=0.3))
            teacher.scale.fill_(scale + 0.3 * float(randn(1)))

        def batch():
            x = randn(tasks, 6, 4)
            if classes:
                return a * x, labels(3, 2)
            with torch.no_grad():
                y = teacher(x) + randn(tasks, 6, 3, scale=0.2)
            return x, a * y

        with torch.no_grad():
            model.layer.weight.copy_(weight / a if classes else weight)
            model.layer.bias.copy_(bias)
            model.scale.fill_(scale if classes else a * scale)
    elif label == "softmax":
        model = nn.Linear(5, 4).double()
        weight, bias = randn(4, 5, scale=0.3), randn(4, scale=0.1)
        teacher_w, teacher_b = weight + randn(4, 5, scale=0.3), bias + randn(4, scale=0.3)

        def batch():
            x = randn(tasks, 8, 5)
            if classes:
                return a * x, labels(4, 2)
            return a * x, x @ teacher_w.T + teacher_b + randn(tasks, 8, 4, scale=0.2)

        with torch.no_grad():
            model.weight.copy_(weight / a)
            model.bias.copy_(bias)
    else:  # one scalar
        model = ScalarTanh().double()
        features = 2 if classes else 1

        def batch():
            x = randn(tasks, 8, features)
            if classes:
                return a * x, labels(2, 4)
            return a * x, torch.tanh(1.5 * x) + randn(tasks, 8, 1, scale=0.1)

        with torch.no_grad():
            model.scale.fill_(0.8 / a)
    return model, Task(train=batch(), val=batch())


def _module_spectrum(model: nn.Module, task: Task, criterion: str) -> tuple[float, float]:
    loss = module_loss(model, CRITERIA[criterion])
    params = params_of(model)
    f, theta = oracle.flat_loss(loss, params), oracle.flatten(params)
    eig = [torch.linalg.eigvalsh(dense.hessian(f, theta, task.task(i)[0]))
           for i in range(task.num_tasks)]
    return (max(float(e.abs().max()) for e in eig), max(max(-float(e.min()), 0.0) for e in eig))


_KNOBS: dict[tuple, float] = {}


def _knob(label: str, tasks: int, criterion: str, radius: float, cap: float | None) -> float:
    """a with L(a) ≈ ``radius`` (and N(a) ≤ ``cap``): a ← a·√(target/L(a)), the Hessian of
    the scaled layer growing like a²."""
    key = (label, tasks, criterion, radius, cap)
    if key not in _KNOBS:
        a = 1.0
        for _ in range(8):
            largest, negative = _module_spectrum(*_module_base(label, tasks, criterion, a),
                                                 criterion)
            ratio = radius / largest
            if cap is not None and negative > 0:
                ratio = min(ratio, cap / negative)
            if abs(ratio - 1) < 0.02:
                break
            a *= math.sqrt(ratio)
        _KNOBS[key] = a
    return _KNOBS[key]


def _module_problems(label: str, tasks: int, method: str, settings: dict[str, Any],
                     float32: bool, criterion: str) -> tuple[Problem, Problem]:
    cap = 0.5 * settings["lam"] if is_implicit(method) else None
    a = _knob(label, tasks, criterion, curvature_target(method, settings), cap)
    key = ("module", label, tasks, criterion, a, float32)
    if key not in _PROBLEMS:
        model, task = _module_base(label, tasks, criterion, a)
        name = f"audit-module:{label}:{criterion}:a={a!r}"
        description = f"{label} ({type(model).__name__}, {criterion}), {tasks} task(s), data " \
                      f"scaled by {a:.4g}"
        loss = module_loss(model, CRITERIA[criterion])
        params = {k: v.detach().clone() for k, v in params_of(model).items()}
        _PROBLEMS[key] = _pair(name, description, loss, params, task, float32, model,
                               CRITERIA[criterion])
    return _PROBLEMS[key]


def cases(method: str, settings: dict[str, Any], vary_steps: bool,
          vary_on: str = "scalar+matrix", dead_input: bool = False) -> list[BatteryCase]:
    """The battery for ``method`` at ``settings``: every problem at the given settings
    (``dead input`` too when asked for: Adam inner loops), and, when the target can be
    rebuilt at other settings (a factory), problem ``vary_on`` at other inner step counts so
    that K = 0, 1 and several steps are all run."""
    base = tuple(sorted(settings.items()))
    out = [BatteryCase("scalar+matrix", 3, base), BatteryCase("scalar+matrix", 1, base),
           BatteryCase("softmax", 3, base), BatteryCase("one scalar", 3, base)]
    if dead_input:
        out.append(BatteryCase("dead input", 3, base))
    if vary_steps:
        out += step_cases(settings, vary_on)
    return out


def step_cases(settings: dict[str, Any], label: str = "scalar+matrix") -> list[BatteryCase]:
    """Problem ``label`` (3 tasks) at two other inner step counts among K = 0, 1, 3."""
    k = settings["steps"]
    return [BatteryCase(label, 3, tuple(sorted({**settings, "steps": other}.items())))
            for other in [s for s in (0, 1, 3) if s != k][:2]]
