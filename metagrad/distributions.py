"""Task distributions: each ``sample(num_tasks, generator=...)`` returns a :class:`Task`.

All randomness comes from an explicit ``torch.Generator`` so that a seed fixes
the tasks exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._task import Task
from ._validate import positive_int, settle


def _generator(generator: torch.Generator | None, seed: int | None,
               num_tasks: int) -> torch.Generator:
    positive_int("num_tasks", num_tasks)  # sample(0), sample(2.5): refused by name
    if generator is not None:
        return generator
    g = torch.Generator()
    g.manual_seed(0 if seed is None else seed)
    return g


class _Family:
    """What every task family checks at construction: its sizes are positive integers
    (``shots=0`` would make an empty batch, whose mean loss is NaN)."""

    SIZES = ("dim", "ways", "shots", "query", "image_size")

    def __post_init__(self) -> None:
        for name in self.SIZES:
            if hasattr(self, name):
                settle(self, name, positive_int)


def _uniform(shape, low: float, high: float, g: torch.Generator, dtype) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=g, dtype=dtype)


@dataclass(frozen=True)
class Sinusoid(_Family):
    """y = A sin(x − φ) with A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5] (Finn et al. 2017, §5.1).

    ``shots`` support points form the train split, ``query`` points the val split.
    ``info`` carries ``amplitude`` and ``phase`` (shape ``(T,)``).
    """

    shots: int = 10
    query: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def sample(self, num_tasks: int, *, generator: torch.Generator | None = None,
               seed: int | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> Task:
        g = _generator(generator, seed, num_tasks)
        amp = _uniform((num_tasks, 1, 1), *self.amplitude, g, torch.float64)
        phase = _uniform((num_tasks, 1, 1), *self.phase, g, torch.float64)
        x = _uniform((num_tasks, self.shots + self.query, 1), *self.x_range, g, torch.float64)
        y = amp * torch.sin(x - phase)
        x, y = x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)
        s = self.shots
        return Task(train=(x[:, :s], y[:, :s]), val=(x[:, s:], y[:, s:]),
                    info={"amplitude": amp.view(-1), "phase": phase.view(-1)})

    @staticmethod
    def target(x: torch.Tensor, amplitude: float, phase: float) -> torch.Tensor:
        return amplitude * torch.sin(x - phase)


@dataclass(frozen=True)
class LinearRegression(_Family):
    """y = x wᵢ + σ ε with wᵢ = w̄ + τ δ, x ~ N(0, I): a quadratic loss per task.

    With the MSE loss, L_tr is quadratic in w and its Hessian (2/n) XᵀX is
    constant, so every method has a closed form (see ``reference/``).
    ``info`` carries the true ``weights`` (shape ``(T, dim, 1)``).
    """

    dim: int = 5
    shots: int = 10
    query: int = 10
    task_spread: float = 1.0
    noise: float = 0.1

    def sample(self, num_tasks: int, *, generator: torch.Generator | None = None,
               seed: int | None = None, dtype: torch.dtype = torch.float64,
               device: str | torch.device = "cpu") -> Task:
        g = _generator(generator, seed, num_tasks)
        n = self.shots + self.query
        mean_w = torch.ones(self.dim, 1, dtype=torch.float64)
        w = mean_w + self.task_spread * torch.randn(num_tasks, self.dim, 1, generator=g,
                                                    dtype=torch.float64)
        x = torch.randn(num_tasks, n, self.dim, generator=g, dtype=torch.float64)
        y = x @ w + self.noise * torch.randn(num_tasks, n, 1, generator=g, dtype=torch.float64)
        x, y = x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)
        s = self.shots
        return Task(train=(x[:, :s], y[:, :s]), val=(x[:, s:], y[:, s:]), info={"weights": w})


@dataclass(frozen=True)
class GaussianClusters(_Family):
    """N-way k-shot classification: class c of task i is N(μᵢ_c, σ² I) in ``dim`` dimensions.

    Class means μᵢ_c ~ N(0, spread² I) are drawn per task, so labels mean nothing
    across tasks: the few-shot setting of Finn et al. 2017 §5.2 in miniature.
    Labels are ``int64`` in {0, …, ways − 1}.
    """

    ways: int = 5
    shots: int = 1
    query: int = 5
    dim: int = 8
    spread: float = 2.0
    noise: float = 1.0

    def sample(self, num_tasks: int, *, generator: torch.Generator | None = None,
               seed: int | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> Task:
        g = _generator(generator, seed, num_tasks)
        per_class = self.shots + self.query
        means = self.spread * torch.randn(num_tasks, self.ways, 1, self.dim, generator=g,
                                          dtype=torch.float64)
        pts = means + self.noise * torch.randn(num_tasks, self.ways, per_class, self.dim,
                                               generator=g, dtype=torch.float64)
        labels = torch.arange(self.ways).view(1, self.ways, 1).expand(num_tasks, self.ways,
                                                                       per_class)
        def split(sl: slice):
            x = pts[:, :, sl].reshape(num_tasks, -1, self.dim).to(dtype=dtype, device=device)
            y = labels[:, :, sl].reshape(num_tasks, -1).to(device=device)
            return x, y

        return Task(train=split(slice(0, self.shots)), val=split(slice(self.shots, per_class)),
                    info={"means": means.view(num_tasks, self.ways, self.dim)})


@dataclass(frozen=True)
class SyntheticImages(_Family):
    """N-way k-shot image tasks with Omniglot's shapes (1×28×28 by default): each class of
    each task is a random prototype image, its examples the prototype plus N(0, noise²)
    pixel noise. Only the shapes and the cost matter (benchmarks of the 4-block conv net
    of Finn et al. 2017 §5.2); the noise keeps the tasks learnable.

    Labels are ``int64`` in {0, …, ways − 1}. Train split: ``shots`` per class; val:
    ``query`` per class.
    """

    ways: int = 5
    shots: int = 1
    query: int = 5
    image_size: int = 28
    noise: float = 0.5

    def sample(self, num_tasks: int, *, generator: torch.Generator | None = None,
               seed: int | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> Task:
        g = _generator(generator, seed, num_tasks)
        per_class, size = self.shots + self.query, self.image_size
        protos = torch.randn(num_tasks, self.ways, 1, 1, size, size, generator=g)
        images = protos + self.noise * torch.randn(num_tasks, self.ways, per_class, 1, size, size,
                                                   generator=g)
        labels = torch.arange(self.ways).view(1, self.ways, 1).expand(num_tasks, self.ways,
                                                                       per_class)

        def split(sl: slice):
            x = images[:, :, sl].reshape(num_tasks, -1, 1, size, size)
            y = labels[:, :, sl].reshape(num_tasks, -1)
            return x.to(dtype=dtype, device=device), y.to(device=device)

        return Task(train=split(slice(0, self.shots)), val=split(slice(self.shots, per_class)))
