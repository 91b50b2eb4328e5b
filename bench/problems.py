"""The benchmark workloads, built the same way by the sweep, asv, pytest-benchmark and
the peer comparison.

* ``sinusoid``: Finn et al. 2017 §5.1 — MLP 1-40-40-1 ReLU (d = 1761), 10 + 10 shots,
  meta-batch 25, MSE loss. Small enough for dense float64 exact targets (bench.exact).
* ``sinusoid-tanh``: the same with tanh. The implicit (IMAML/Neumann) exact target needs
  the proximal inner problem's minimiser φ* with ∇ = 0, which a ReLU net usually does not
  have (φ* sits on a kink; Newton cycles), so the λ, cg_iters and terms axes use this one.
* ``convnet``: the 4-block conv net of Finn et al. 2017 §5.2 (28×28 inputs, 32 channels,
  d ≈ 28.7k) on synthetic 5-way 1-shot tasks (:func:`synthetic_images`), cross-entropy.
  A model where the inner-loop graphs, not the parameters, decide memory; no exact
  target (a dense Hessian of that size is not worth it), so its error column is NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import metagrad as mg
from metagrad.models import convnet, mlp

PROBLEMS = ("sinusoid", "sinusoid-tanh", "convnet")
DEFAULT_META_BATCH = {"sinusoid": 25, "sinusoid-tanh": 25, "convnet": 8}


@dataclass
class Problem:
    name: str
    loss: Callable[[dict[str, torch.Tensor], Any], torch.Tensor]
    params: dict[str, torch.Tensor]
    tasks: mg.Task
    exact_ok: bool
    """Whether bench.exact can compute the exact target (dense float64 Hessians)."""

    @property
    def dim(self) -> int:
        return sum(v.numel() for v in self.params.values())


def synthetic_images(num_tasks: int, *, ways: int = 5, shots: int = 1, query: int = 5,
                     image_size: int = 28, seed: int = 0, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> mg.Task:
    """N-way k-shot image tasks with Omniglot's shapes: each class of each task is a random
    28×28 prototype image, its examples the prototype plus N(0, 0.5²) pixel noise.

    Labels are int64 in {0, …, ways − 1}. Train split: ``shots`` per class; val: ``query``.
    Only the shapes and the cost matter for benchmarking; the noise keeps the task learnable.
    """
    g = torch.Generator().manual_seed(seed)
    per_class = shots + query
    protos = torch.randn(num_tasks, ways, 1, 1, image_size, image_size, generator=g)
    images = protos + 0.5 * torch.randn(num_tasks, ways, per_class, 1, image_size, image_size,
                                        generator=g)
    labels = torch.arange(ways).view(1, ways, 1).expand(num_tasks, ways, per_class)

    def split(sl: slice):
        x = images[:, :, sl].reshape(num_tasks, -1, 1, image_size, image_size)
        y = labels[:, :, sl].reshape(num_tasks, -1)
        return x.to(dtype=dtype, device=device), y.to(device=device)

    return mg.Task(train=split(slice(0, shots)), val=split(slice(shots, per_class)))


def make_problem(name: str, *, meta_batch: int | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Problem:
    """Model parameters, loss and a fixed meta-batch of tasks for workload ``name``."""
    if name not in PROBLEMS:
        raise ValueError(f"problem must be one of {PROBLEMS}, got {name!r}")
    if meta_batch is None:
        meta_batch = DEFAULT_META_BATCH[name]
    if not isinstance(meta_batch, int) or meta_batch < 1:
        raise ValueError(f"meta_batch must be a positive integer, got {meta_batch!r}")
    if name.startswith("sinusoid"):
        activation = nn.Tanh if name == "sinusoid-tanh" else nn.ReLU
        model = mlp((1, 40, 40, 1), activation, seed=seed, dtype=dtype, device=device)
        loss = mg.module_loss(model, F.mse_loss)
        tasks = mg.Sinusoid().sample(meta_batch, seed=seed, dtype=dtype, device=device)
        return Problem(name, loss, mg.params_of(model), tasks, exact_ok=True)
    model = convnet(ways=5, seed=seed, dtype=dtype, device=device)
    loss = mg.module_loss(model, F.cross_entropy)
    tasks = synthetic_images(meta_batch, seed=seed, dtype=dtype, device=device)
    return Problem(name, loss, mg.params_of(model), tasks, exact_ok=False)
