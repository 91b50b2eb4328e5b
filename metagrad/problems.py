"""Named meta-learning problems: one :class:`Problem` type and one registry of workloads,
used by the verification suite, the audit, the benchmarks, the peer comparison and the tests.

Two families:

* **verification problems** (float64 by default, 2 tasks, smooth, d ≤ ~150): small
  enough for dense Hessians and finite differences. ``linreg`` (and ``linreg<d>``, e.g.
  ``linreg12``): a quadratic with closed forms; ``softmax``: softmax regression;
  ``mlp_softplus``: a 4-6-3 softplus MLP classifier; ``sinusoid_small``: the sinusoid
  MLP in miniature (1-10-10-1 tanh, built with ``mg.module_loss`` as users do).
  Losses are written by hand (MSE as ``((a − b)**2).mean()``) so that both HVP modes
  run: forward-over-reverse fails inside ``F.mse_loss``'s backward on every torch
  release tried ("ZeroTensors are immutable").
* **benchmark workloads** (float32 by default): ``sinusoid``, the Finn et al. 2017 §5.1
  MLP 1-40-40-1 ReLU with ``F.mse_loss`` (d = 1761, 25 tasks, 10 + 10 shots);
  ``sinusoid_tanh``, the same net with tanh, which has a smooth proximal minimiser for
  the implicit methods' exact target (with ReLU, φ* sits on a kink and Newton cycles);
  ``convnet``, the 4-block conv net of Finn et al. §5.2 (28×28, 32 channels,
  d ≈ 28.7k) on synthetic 5-way 1-shot tasks, 8 tasks.

``make_problem(name, meta_batch=None, seed=0, dtype=None, device="cpu")`` builds
one; ``None`` takes the problem's default meta-batch and dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._hvp import Loss
from ._module import module_loss, params_of
from ._pytree import Params
from ._task import Task
from .distributions import GaussianClusters, LinearRegression, Sinusoid, SyntheticImages
from .models import convnet, mlp


@dataclass(frozen=True, eq=False)
class Problem:
    """A loss, parameters θ and a meta-batch of tasks, with what is known about them.

    Built by :func:`make_problem`; ``method(problem.loss, problem.params, problem.tasks)``
    runs any method on it.

    Parameters
    ----------
    name : str
        The registry name (``"sinusoid"``, ``"linreg12"``, ...).
    loss : Loss
        ``loss(params, batch)``, a 0-dim loss of one task's batch.
    params : Params
        θ, the meta-parameters by name.
    tasks : Task
        The meta-batch.
    seed : int
        The seed the tasks and parameters were drawn with.
    description : str
        One line for tables and reports.
    closed_form : bool
        True for the linear-regression family, whose methods have closed forms.
    smooth : bool
        False for ReLU nets: finite differences and Newton's proximal minimiser are not
        meaningful there, so no implicit target or finite-difference check is computed.
    module : torch.nn.Module or None
        The ``nn.Module`` behind ``loss`` (for peer libraries that need one), if any.
    criterion : Callable[[Tensor, Tensor], Tensor] or None
        ``criterion(prediction, target)`` of ``module``, if any.
    """

    name: str
    loss: Loss
    params: Params
    tasks: Task
    seed: int = 0
    description: str = ""
    closed_form: bool = False
    smooth: bool = True
    module: nn.Module | None = None
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None

    @property
    def dim(self) -> int:
        """d, the number of scalar parameters."""
        return sum(v.numel() for v in self.params.values())

    @property
    def meta_batch(self) -> int:
        """T, the number of tasks."""
        return self.tasks.num_tasks

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype."""
        return next(iter(self.params.values())).dtype

    @property
    def device(self) -> torch.device:
        """The parameters' device."""
        return next(iter(self.params.values())).device

    @property
    def key(self) -> tuple[Any, ...]:
        """What determines the problem's numbers (for caching results computed on it)."""
        return (self.name, self.meta_batch, self.seed, str(self.dtype), str(self.device))

    def task_list(self) -> list[tuple[Any, Any]]:
        """The tasks one by one.

        Returns
        -------
        list[tuple[Any, Any]]
            ``(train, val)`` pairs without the task dimension, as the oracle takes them.
        """
        return [self.tasks.task(i) for i in range(self.meta_batch)]


def mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error written out, so that forward-over-reverse HVPs run through it
    (they fail inside ``F.mse_loss``'s backward on every torch release tried).

    Parameters
    ----------
    prediction, target : Tensor
        Tensors of the same shape.

    Returns
    -------
    Tensor
        mean((prediction − target)²), 0-dim.
    """
    return ((prediction - target) ** 2).mean()


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy −log softmax(z)ᵧ, mean over the batch (log-sum-exp form, stable).

    Parameters
    ----------
    logits : Tensor
        z, shape ``(batch, classes)``.
    labels : Tensor
        y, ``int64`` class indices of shape ``(batch,)``.

    Returns
    -------
    Tensor
        The mean loss, 0-dim.
    """
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (torch.logsumexp(logits, -1) - picked).mean()


def _randn(shape, g: torch.Generator, scale: float, dtype: torch.dtype) -> Tensor:
    return scale * torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def linreg(meta_batch: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64,
           device: str | torch.device = "cpu", dim: int = 5) -> Problem:
    """``mg.LinearRegression``: L(w) = mean((x w − y)²), a quadratic with closed forms.

    Parameters
    ----------
    meta_batch, seed, dtype, device
        As for :func:`make_problem`; the defaults here are the problem's own.
    dim : int
        d, the number of features and of parameters (``make_problem("linreg12")`` is
        ``dim=12``); 2d + 2d shots per task.

    Returns
    -------
    Problem
    """
    tasks = LinearRegression(dim=dim, shots=2 * dim, query=2 * dim).sample(
        meta_batch, seed=seed, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(seed + 1)

    def loss(params, batch):
        x, y = batch
        return mse(x @ params["w"], y)

    return Problem(f"linreg{dim}" if dim != 5 else "linreg", loss,
                   {"w": _randn((dim, 1), g, 0.5, dtype).to(device)}, tasks, seed,
                   f"linear regression, d = {dim}, {2 * dim} + {2 * dim} shots", closed_form=True)


def _clusters(meta_batch: int, seed: int, dtype: torch.dtype,
              device: str | torch.device) -> tuple[Task, torch.Generator]:
    """3-way 2-shot ``mg.GaussianClusters`` tasks in 4 dimensions, and the generator that
    draws the parameters (seeded apart from the tasks)."""
    tasks = GaussianClusters(ways=3, shots=2, query=3, dim=4).sample(
        meta_batch, seed=seed, dtype=dtype, device=device)
    return tasks, torch.Generator().manual_seed(seed + 1)


def softmax(meta_batch: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64,
            device: str | torch.device = "cpu") -> Problem:
    """Softmax regression on ``mg.GaussianClusters`` (3-way, 2 shots, 4 features).

    Parameters
    ----------
    meta_batch, seed, dtype, device
        As for :func:`make_problem`; the defaults here are the problem's own.

    Returns
    -------
    Problem
    """
    tasks, g = _clusters(meta_batch, seed, dtype, device)

    def loss(params, batch):
        x, y = batch
        return cross_entropy(x @ params["W"] + params["b"], y)

    params = {"W": _randn((4, 3), g, 0.3, dtype), "b": _randn((3,), g, 0.1, dtype)}
    return Problem("softmax", loss, {k: v.to(device) for k, v in params.items()}, tasks, seed,
                   "softmax regression, 3-way 2-shot, d = 15")


def mlp_softplus(meta_batch: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu") -> Problem:
    """A 4-6-3 softplus MLP classifier on ``mg.GaussianClusters``, written out by hand.

    Parameters
    ----------
    meta_batch, seed, dtype, device
        As for :func:`make_problem`; the defaults here are the problem's own.

    Returns
    -------
    Problem
    """
    tasks, g = _clusters(meta_batch, seed, dtype, device)

    def loss(params, batch):
        x, y = batch
        h = F.softplus(x @ params["W1"] + params["b1"])
        return cross_entropy(h @ params["W2"] + params["b2"], y)

    params = {"W1": _randn((4, 6), g, 0.5, dtype), "b1": _randn((6,), g, 0.1, dtype),
              "W2": _randn((6, 3), g, 0.4, dtype), "b2": _randn((3,), g, 0.1, dtype)}
    return Problem("mlp_softplus", loss, {k: v.to(device) for k, v in params.items()}, tasks,
                   seed, "softplus MLP 4-6-3, 3-way, d = 51")


def _sinusoid_net(name: str, sizes: tuple[int, ...], activation: type[nn.Module],
                  criterion: Callable[[Tensor, Tensor], Tensor], meta_batch: int, seed: int,
                  dtype: torch.dtype, device: str | torch.device, description: str) -> Problem:
    tasks = Sinusoid(shots=10, query=10).sample(meta_batch, seed=seed, dtype=dtype, device=device)
    model = mlp(sizes, activation, seed=seed, dtype=dtype, device=device)
    return Problem(name, module_loss(model, criterion), params_of(model), tasks, seed,
                   description, smooth=activation is not nn.ReLU, module=model,
                   criterion=criterion)


def sinusoid_small(meta_batch: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64,
                   device: str | torch.device = "cpu") -> Problem:
    """The sinusoid MLP (Finn et al. 2017 §5.1) in miniature: 1-10-10-1 tanh, through
    ``mg.module_loss`` and ``metagrad.models.mlp`` (the path users take).

    Parameters
    ----------
    meta_batch, seed, dtype, device
        As for :func:`make_problem`; the defaults here are the problem's own.

    Returns
    -------
    Problem
    """
    return _sinusoid_net("sinusoid_small", (1, 10, 10, 1), nn.Tanh, mse, meta_batch, seed, dtype,
                         device, "sinusoid regression, MLP 1-10-10-1 tanh, d = 141")


def sinusoid(meta_batch: int = 25, seed: int = 0, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu") -> Problem:
    """Finn et al. 2017 §5.1: MLP 1-40-40-1 ReLU, ``F.mse_loss``, 10 + 10 shots.

    Parameters
    ----------
    meta_batch, seed, dtype, device
        As for :func:`make_problem`; the defaults here are the problem's own.

    Returns
    -------
    Problem
    """
    return _sinusoid_net("sinusoid", (1, 40, 40, 1), nn.ReLU, F.mse_loss, meta_batch, seed, dtype,
                         device, "sinusoid regression, MLP 1-40-40-1 ReLU, d = 1761")


def sinusoid_tanh(meta_batch: int = 25, seed: int = 0, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> Problem:
    """The ``sinusoid`` workload with tanh: a smooth net, whose proximal inner problem has
    a minimiser with zero gradient (the implicit methods' exact target is defined).

    Parameters
    ----------
    meta_batch, seed, dtype, device
        As for :func:`make_problem`; the defaults here are the problem's own.

    Returns
    -------
    Problem
    """
    return _sinusoid_net("sinusoid_tanh", (1, 40, 40, 1), nn.Tanh, F.mse_loss, meta_batch, seed,
                         dtype, device, "sinusoid regression, MLP 1-40-40-1 tanh, d = 1761")


def convnet_problem(meta_batch: int = 8, seed: int = 0, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> Problem:
    """The 4-block conv net of Finn et al. 2017 §5.2 on ``mg.SyntheticImages`` 5-way 1-shot
    tasks (Omniglot's shapes), cross-entropy: a model whose inner-loop graphs, not its
    parameters, decide memory.

    Parameters
    ----------
    meta_batch, seed, dtype, device
        As for :func:`make_problem`; the defaults here are the problem's own.

    Returns
    -------
    Problem
    """
    model = convnet(ways=5, seed=seed, dtype=dtype, device=device)
    tasks = SyntheticImages(ways=5, shots=1, query=5).sample(meta_batch, seed=seed, dtype=dtype,
                                                            device=device)
    return Problem("convnet", module_loss(model, F.cross_entropy), params_of(model), tasks, seed,
                   "4-block conv net, 28×28, 5-way 1-shot synthetic tasks, d ≈ 28.7k",
                   smooth=False, module=model, criterion=F.cross_entropy)


PROBLEMS: dict[str, Callable[..., Problem]] = {
    "linreg": linreg,
    "softmax": softmax,
    "mlp_softplus": mlp_softplus,
    "sinusoid_small": sinusoid_small,
    "sinusoid": sinusoid,
    "sinusoid_tanh": sinusoid_tanh,
    "convnet": convnet_problem,
}
"""name → builder ``(meta_batch, seed, dtype, device) -> Problem``; ``linreg<d>`` too."""


def problem_names() -> list[str]:
    """The registered names.

    Returns
    -------
    list[str]
        The keys of :data:`PROBLEMS`, in order (``linreg<d>`` is accepted besides them).
    """
    return list(PROBLEMS)


def make_problem(name: str, meta_batch: int | None = None, seed: int = 0,
                 dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu") -> Problem:
    """Build a named problem: a loss, parameters and a meta-batch of tasks.

    Parameters
    ----------
    name : str
        One of the verification problems (float64, 2 tasks, smooth, small enough for
        dense Hessians): ``"linreg"`` (linear regression, d = 5, closed forms; also
        ``"linreg<d>"``, e.g. ``"linreg12"``), ``"softmax"`` (softmax regression,
        d = 15), ``"mlp_softplus"`` (a 4-6-3 softplus MLP classifier, d = 51),
        ``"sinusoid_small"`` (MLP 1-10-10-1 tanh, d = 141); or one of the benchmark
        workloads (float32): ``"sinusoid"`` (Finn et al. 2017 §5.1, MLP 1-40-40-1 ReLU,
        d = 1761, 25 tasks), ``"sinusoid_tanh"`` (the same net with tanh), ``"convnet"``
        (the 4-block conv net of Finn et al. §5.2, d ≈ 28.7k, 8 tasks). An unknown name
        raises ``ValueError`` listing these.
    meta_batch : int, optional
        Number of tasks T; None takes the problem's default (above).
    seed : int
        Seed of the tasks and of the initial parameters (default 0).
    dtype : torch.dtype, optional
        dtype of the parameters and data; None takes the problem's default (above).
    device : str or torch.device
        Where the parameters and data are put (default ``"cpu"``).

    Returns
    -------
    Problem
        The loss, θ and the tasks, with what is known about them (``smooth``,
        ``closed_form``, ``dim``, ...).
    """
    kwargs: dict[str, Any] = {"seed": seed, "device": device}
    if meta_batch is not None:
        if isinstance(meta_batch, bool) or not isinstance(meta_batch, int) or meta_batch < 1:
            raise ValueError(f"meta_batch must be a positive integer, got {meta_batch!r}")
        kwargs["meta_batch"] = meta_batch
    if dtype is not None:
        kwargs["dtype"] = dtype
    if name.startswith("linreg") and name[len("linreg"):].isdigit():
        return linreg(dim=int(name[len("linreg"):]), **kwargs)
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose from {', '.join(PROBLEMS)} "
                         "(or linreg<d>)")
    return PROBLEMS[name](**kwargs)


@dataclass(frozen=True)
class Defaults:
    """Settings that suit a verification problem, from which converging settings are
    derived.

    Parameters
    ----------
    inner_lr : float
        α with α(λ + L) < 2, so that the proximal inner loop converges.
    lam : float
        λ above −λ_min(H), so that I + H/λ is positive definite along the way.
    curvature : tuple[float, float]
        Bounds (lo, hi) on the Hessian spectrum near θ and the adapted points (measured
        densely, seed 0, with a little margin).
    """

    inner_lr: float
    lam: float
    curvature: tuple[float, float]

    def converged_lr(self, lam: float) -> float:
        """The fastest proximal gradient-descent step, α = 2/(2λ + lo + hi).

        The spectrum of H + λI lies in [λ + lo, λ + hi], so each step contracts the
        error by (hi − lo)/(2λ + lo + hi).

        Parameters
        ----------
        lam : float
            λ of the proximal inner problem.

        Returns
        -------
        float
            α, rounded to 4 decimals.
        """
        lo, hi = self.curvature
        return round(2.0 / (2 * lam + lo + hi), 4)

    def neumann_step(self, lam: float) -> float:
        """The Neumann step that minimises ρ(I − ηA) for A = I + H/λ.

        With the spectrum of A in [a_lo, a_hi], η = 2/(a_lo + a_hi) gives
        ρ = (a_hi − a_lo)/(a_hi + a_lo) (η = 1 diverges once hi > λ).

        Parameters
        ----------
        lam : float
            λ of the implicit system.

        Returns
        -------
        float
            η, rounded to 4 decimals.
        """
        lo, hi = self.curvature
        return round(2.0 / (2 + (lo + hi) / lam), 4)


DEFAULTS: dict[str, Defaults] = {
    # Hessian spectra at θ and at φ* (seed 0, two tasks): linreg [0.48, 3.5],
    # linreg12 [0.12, 6.6], softmax [0, 4.5], mlp_softplus [-1.9, 16.0] (16 at φ*),
    # sinusoid_small [-8.1, 9.0].
    "linreg": Defaults(inner_lr=0.1, lam=2.0, curvature=(0.4, 3.6)),
    "linreg12": Defaults(inner_lr=0.1, lam=2.0, curvature=(0.1, 6.7)),
    "softmax": Defaults(inner_lr=0.1, lam=2.0, curvature=(0.0, 4.6)),
    "mlp_softplus": Defaults(inner_lr=0.05, lam=5.0, curvature=(-2.0, 16.5)),
    "sinusoid_small": Defaults(inner_lr=0.02, lam=12.0, curvature=(-8.5, 9.5)),
}
"""Known-good settings of the verification problems (seed 0)."""
