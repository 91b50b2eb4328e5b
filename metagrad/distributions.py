"""Task distributions: each ``sample(num_tasks, seed=...)`` returns a :class:`Task`.

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
    """What every task family shares: its sizes are checked at construction to be positive
    integers (``shots=0`` would make an empty batch, whose mean loss is NaN), and
    :meth:`sample` draws a meta-batch from an explicit generator; each family's
    ``_draw(num_tasks, g, dtype, device)`` says how."""

    SIZES = ("dim", "ways", "shots", "query", "image_size")
    DTYPE = torch.float32
    """The dtype of the sampled inputs and targets unless ``sample(dtype=...)`` says."""

    def __post_init__(self) -> None:
        for name in self.SIZES:
            if hasattr(self, name):
                settle(self, name, positive_int)

    def sample(self, num_tasks: int, *, generator: torch.Generator | None = None,
               seed: int | None = None, dtype: torch.dtype | None = None,
               device: str | torch.device = "cpu") -> Task:
        """Draw a meta-batch of ``num_tasks`` tasks.

        All randomness comes from one ``torch.Generator``, so a seed fixes the tasks
        exactly, on every device (the numbers are drawn on the CPU, then moved).

        Parameters
        ----------
        num_tasks : int
            T, the number of tasks (a positive integer).
        generator : torch.Generator, optional
            The generator to draw from (its state advances); takes precedence over
            ``seed``.
        seed : int, optional
            Seed of a fresh generator when ``generator`` is not given (None: 0).
        dtype : torch.dtype, optional
            dtype of the inputs and of real-valued targets; class labels stay ``int64``.
            Default: float64 for :class:`LinearRegression`, float32 for the others.
        device : str or torch.device, optional
            Where the tensors are put.

        Returns
        -------
        Task
            ``Task(train=(x, y), val=(x, y))`` with a leading task dimension T: ``shots``
            support points per task (per class, for classification) in ``train``,
            ``query`` points in ``val``; ``info`` as the family's docstring says.
        """
        g = _generator(generator, seed, num_tasks)
        return self._draw(num_tasks, g, self.DTYPE if dtype is None else dtype, device)

    def _draw(self, num_tasks: int, g: torch.Generator, dtype: torch.dtype,
              device: str | torch.device) -> Task:
        raise NotImplementedError


def _uniform(shape, low: float, high: float, g: torch.Generator, dtype) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=g, dtype=dtype)


@dataclass(frozen=True)
class Sinusoid(_Family):
    """Sinusoid regression (Finn, Abbeel & Levine 2017, §5.1): task i is y = Aᵢ sin(x − φᵢ)
    with Aᵢ ~ U[0.1, 5], φᵢ ~ U[0, π], x ~ U[−5, 5].

    ``sample`` returns inputs and targets of shape ``(T, shots, 1)`` (train) and
    ``(T, query, 1)`` (val); ``info`` carries ``amplitude`` and ``phase`` (shape
    ``(T,)``).

    Parameters
    ----------
    shots : int
        Support points per task, the train split.
    query : int
        Query points per task, the val split.
    amplitude : tuple[float, float]
        Range of the uniform amplitude A.
    phase : tuple[float, float]
        Range of the uniform phase φ.
    x_range : tuple[float, float]
        Range of the uniform inputs x.
    """

    shots: int = 10
    query: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def _draw(self, num_tasks: int, g: torch.Generator, dtype: torch.dtype,
              device: str | torch.device) -> Task:
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
        """The noiseless task function.

        Parameters
        ----------
        x : Tensor
            Inputs.
        amplitude, phase : float
            A and φ of one task (``tasks.info["amplitude"][i]``, ``["phase"][i]``).

        Returns
        -------
        Tensor
            A sin(x − φ), shaped like ``x``.
        """
        return amplitude * torch.sin(x - phase)


@dataclass(frozen=True)
class LinearRegression(_Family):
    """Linear regression: task i is y = x wᵢ + σ ε with wᵢ = w̄ + τ δᵢ, w̄ = 1, x, ε, δᵢ
    standard normal: a quadratic loss per task.

    With the MSE loss, L_tr is quadratic in w and its Hessian (2/n) XᵀX is constant,
    so every method has a closed form (the oracle, ``metagrad_reference``, uses them).
    ``sample`` returns x of shape ``(T, n, dim)`` and y of shape ``(T, n, 1)``, in float64
    by default; ``info`` carries the true ``weights`` (shape ``(T, dim, 1)``).

    Parameters
    ----------
    dim : int
        Number of features.
    shots : int
        Support points per task.
    query : int
        Query points per task.
    task_spread : float
        τ, the spread of the task weights around w̄.
    noise : float
        σ, the standard deviation of the label noise.
    """

    DTYPE = torch.float64

    dim: int = 5
    shots: int = 10
    query: int = 10
    task_spread: float = 1.0
    noise: float = 0.1

    def _draw(self, num_tasks: int, g: torch.Generator, dtype: torch.dtype,
              device: str | torch.device) -> Task:
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
    """N-way k-shot classification: class c of task i is N(μᵢ꜀, σ² I) in ``dim`` dimensions.

    Class means μᵢ꜀ ~ N(0, spread² I) are drawn per task, so labels mean nothing across
    tasks: the few-shot setting of Finn et al. 2017 §5.2 in miniature. ``sample``
    returns inputs of shape ``(T, ways · shots, dim)`` (train) and
    ``(T, ways · query, dim)`` (val) and ``int64`` labels in {0, …, ways − 1}; ``info``
    carries the class ``means`` (shape ``(T, ways, dim)``).

    Parameters
    ----------
    ways : int
        Classes per task, N.
    shots : int
        Support examples per class, k.
    query : int
        Query examples per class.
    dim : int
        Dimension of the inputs.
    spread : float
        Standard deviation of the class means.
    noise : float
        σ, the standard deviation of the examples around their class mean.
    """

    ways: int = 5
    shots: int = 1
    query: int = 5
    dim: int = 8
    spread: float = 2.0
    noise: float = 1.0

    def _draw(self, num_tasks: int, g: torch.Generator, dtype: torch.dtype,
              device: str | torch.device) -> Task:
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

    ``sample`` returns images of shape ``(T, ways · shots, 1, size, size)`` (train) and
    ``(T, ways · query, 1, size, size)`` (val) and ``int64`` labels in
    {0, …, ways − 1}.

    Parameters
    ----------
    ways : int
        Classes per task.
    shots : int
        Support images per class.
    query : int
        Query images per class.
    image_size : int
        Height and width of the images.
    noise : float
        Standard deviation of the pixel noise around the prototype.
    """

    ways: int = 5
    shots: int = 1
    query: int = 5
    image_size: int = 28
    noise: float = 0.5

    def _draw(self, num_tasks: int, g: torch.Generator, dtype: torch.dtype,
              device: str | torch.device) -> Task:
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
