"""The embedded problem set of ``metagrad verify`` and the accuracy tests.

Small (d ≤ ~150), smooth (tanh / softplus, never ReLU: finite differences
break at its kinks), float64 by default, seeds fixed. Losses are written by
hand, e.g. MSE as ``((a − b)**2).mean()``: on torch 2.13 forward-over-reverse
HVPs fail inside ``F.mse_loss``'s backward ("ZeroTensors are immutable"), and a
verification problem should run under every HVP mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

import reference

from .._module import module_loss, params_of
from .._task import Task
from ..distributions import GaussianClusters, LinearRegression, Sinusoid
from ..models import mlp


@dataclass(frozen=True, eq=False)
class Problem:
    name: str
    loss: Callable[[dict[str, Tensor], Any], Tensor]
    params: dict[str, Tensor]
    tasks: Task
    description: str = ""
    closed_form: bool = False
    """True for the linear-regression family: :mod:`reference.closed_form` applies."""
    cache: dict = field(default_factory=dict, repr=False)
    """Oracle results already computed for this problem (they are expensive)."""

    @property
    def dim(self) -> int:
        return sum(v.numel() for v in self.params.values())

    @property
    def num_tasks(self) -> int:
        return self.tasks.num_tasks

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    def flat(self) -> tuple[reference.flat.FlatLoss, Tensor]:
        """The oracle's view: flat loss and flat θ."""
        return reference.flat_loss(self.loss, self.params), reference.flatten(self.params)

    def task_list(self) -> list[tuple[Any, Any]]:
        return [self.tasks.task(i) for i in range(self.num_tasks)]


def mse(prediction: Tensor, target: Tensor) -> Tensor:
    return ((prediction - target) ** 2).mean()


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """−log softmax(z)_y, mean over the batch (log-sum-exp form, stable)."""
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (torch.logsumexp(logits, -1) - picked).mean()


def _randn(shape, g: torch.Generator, scale: float, dtype: torch.dtype) -> Tensor:
    return scale * torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def linreg(num_tasks: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64,
           dim: int = 5) -> Problem:
    """``mg.LinearRegression``: L(w) = mean((x w − y)²), a quadratic with closed forms."""
    tasks = LinearRegression(dim=dim, shots=2 * dim, query=2 * dim).sample(
        num_tasks, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)

    def loss(params, batch):
        x, y = batch
        return mse(x @ params["w"], y)

    return Problem(f"linreg{dim}" if dim != 5 else "linreg", loss,
                   {"w": _randn((dim, 1), g, 0.5, dtype)}, tasks,
                   f"linear regression, d = {dim}, {2 * dim} + {2 * dim} shots", closed_form=True)


def softmax(num_tasks: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64) -> Problem:
    """Softmax regression on ``mg.GaussianClusters`` (3-way, 2 shots, 4 features)."""
    tasks = GaussianClusters(ways=3, shots=2, query=3, dim=4).sample(num_tasks, seed=seed,
                                                                     dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)

    def loss(params, batch):
        x, y = batch
        return cross_entropy(x @ params["W"] + params["b"], y)

    params = {"W": _randn((4, 3), g, 0.3, dtype), "b": _randn((3,), g, 0.1, dtype)}
    return Problem("softmax", loss, params, tasks, "softmax regression, 3-way 2-shot, d = 15")


def mlp_softplus(num_tasks: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64) -> Problem:
    """A 4-6-3 softplus MLP classifier on ``mg.GaussianClusters``, written out by hand."""
    tasks = GaussianClusters(ways=3, shots=2, query=3, dim=4).sample(num_tasks, seed=seed,
                                                                     dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)

    def loss(params, batch):
        x, y = batch
        h = nn.functional.softplus(x @ params["W1"] + params["b1"])
        return cross_entropy(h @ params["W2"] + params["b2"], y)

    params = {"W1": _randn((4, 6), g, 0.5, dtype), "b1": _randn((6,), g, 0.1, dtype),
              "W2": _randn((6, 3), g, 0.4, dtype), "b2": _randn((3,), g, 0.1, dtype)}
    return Problem("mlp_softplus", loss, params, tasks, "softplus MLP 4-6-3, 3-way, d = 51")


def sinusoid(num_tasks: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64) -> Problem:
    """The sinusoid MLP (Finn et al. 2017 §5.1) in miniature: 1-10-10-1 tanh, through
    ``mg.module_loss`` and ``metagrad.models.mlp`` (the path users take)."""
    tasks = Sinusoid(shots=10, query=10).sample(num_tasks, seed=seed, dtype=dtype)
    model = mlp((1, 10, 10, 1), nn.Tanh, seed=seed, dtype=dtype)
    params = {k: v.detach().clone() for k, v in params_of(model).items()}
    return Problem("sinusoid", module_loss(model, mse), params, tasks,
                   "sinusoid regression, MLP 1-10-10-1 tanh, d = 141")


BUILDERS: dict[str, Callable[..., Problem]] = {
    "linreg": linreg,
    "softmax": softmax,
    "mlp_softplus": mlp_softplus,
    "sinusoid": sinusoid,
}


@cache
def get(name: str, num_tasks: int = 2, seed: int = 0,
        dtype: torch.dtype = torch.float64) -> Problem:
    """A cached problem (its oracle results are cached with it)."""
    if name.startswith("linreg") and name != "linreg":
        return linreg(num_tasks, seed, dtype, dim=int(name[len("linreg"):]))
    if name not in BUILDERS:
        raise ValueError(f"unknown problem {name!r}; choose from {sorted(BUILDERS)}")
    return BUILDERS[name](num_tasks, seed, dtype)


@dataclass(frozen=True)
class Defaults:
    """Settings that suit a problem: ``inner_lr`` with α(λ + L) < 2 for the proximal loop,
    ``lam`` above −λ_min(H) so that I + H/λ is positive definite along the way, and
    ``curvature``, bounds on the Hessian spectrum near θ and the adapted points (measured
    densely, seed 0, with a little margin), from which converging settings are derived."""

    inner_lr: float
    lam: float
    curvature: tuple[float, float]

    def converged_lr(self, lam: float) -> float:
        """α = 2/(2λ + lo + hi): the fastest proximal GD step, contraction
        (hi − lo)/(2λ + lo + hi) per step (the spectrum of H + λI lies in [λ + lo, λ + hi])."""
        lo, hi = self.curvature
        return round(2.0 / (2 * lam + lo + hi), 4)

    def neumann_step(self, lam: float) -> float:
        """η = 2/(a_lo + a_hi) for A = I + H/λ with spectrum in [a_lo, a_hi]: the step that
        minimises ρ(I − ηA) = (a_hi − a_lo)/(a_hi + a_lo) (η = 1 diverges once hi > λ)."""
        lo, hi = self.curvature
        return round(2.0 / (2 + (lo + hi) / lam), 4)


DEFAULTS: dict[str, Defaults] = {
    # Hessian spectra at θ and at φ* (seed 0, two tasks): linreg [0.48, 3.5],
    # linreg12 [0.12, 6.6], softmax [0, 4.5], mlp_softplus [-1.9, 16.0] (16 at φ*),
    # sinusoid [-8.1, 9.0].
    "linreg": Defaults(inner_lr=0.1, lam=2.0, curvature=(0.4, 3.6)),
    "linreg12": Defaults(inner_lr=0.1, lam=2.0, curvature=(0.1, 6.7)),
    "softmax": Defaults(inner_lr=0.1, lam=2.0, curvature=(0.0, 4.6)),
    "mlp_softplus": Defaults(inner_lr=0.05, lam=5.0, curvature=(-2.0, 16.5)),
    "sinusoid": Defaults(inner_lr=0.02, lam=12.0, curvature=(-8.5, 9.5)),
}
