"""asv benchmarks (``asv run``; see bench/README.md): the history of metagrad's speed.

asv runs this file from the working tree against every commit it benchmarks, so it uses
metagrad's public API only (``import metagrad as mg``: the method classes,
``mg.module_loss``, ``mg.params_of``, ``mg.Sinusoid``) and builds its own workload from
``torch.nn``: it runs unchanged against older commits. A method or option a commit does
not have raises ``NotImplementedError`` in ``setup`` (asv skips the point).

Workloads (Finn et al. 2017 sinusoid regression, 25 tasks, 10 + 10 shots, float32, one
torch thread):

* ``TimeMetaGradient``: MLP 1-40-40-1 ReLU, every method at K = 1 and 5 (iMAML and
  Neumann λ = 1 with 5 CG iterations / terms, Penalty λ = 0.1): per-operation overhead
  decides.
* ``TimeLargeModel``: MLP 1-512-512-1 ReLU (264k parameters), MAML and iMAML at K = 5:
  arithmetic on the task-batched weights decides.

Every call runs with ``diagnose="off"`` where the commit has that option, so what is
timed is the computation.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

import metagrad as mg

# Spelled out, not read from mg.METHOD_NAMES: asv imports this file against every commit
# of the history, including those from before the registry existed.
METHODS = ["maml", "fomaml", "reptile", "imaml", "neumann", "penalty"]
CLASS_NAMES = {"maml": "MAML", "fomaml": "FOMAML", "reptile": "Reptile", "imaml": "IMAML",
               "neumann": "Neumann", "penalty": "Penalty"}


def make_method(name: str, steps: int):
    """The method ``name`` with this file's settings, through the public classes only."""
    cls = getattr(mg, CLASS_NAMES[name], None)
    if cls is None:
        raise NotImplementedError(f"this commit has no mg.{CLASS_NAMES[name]}")
    settings = {"steps": steps, "inner_lr": 0.01}
    if name in ("imaml", "neumann"):
        settings["lam"] = 1.0
        settings["cg_iters" if name == "imaml" else "terms"] = 5
    if name == "penalty":
        settings["lam"] = 0.1
    try:
        return cls(**settings, diagnose="off")
    except TypeError:  # commits before the diagnose option
        return cls(**settings)


def sinusoid(hidden: int, meta_batch: int = 25):
    """(loss, params, tasks) of the sinusoid MLP 1-h-h-1 ReLU, built here from torch.nn."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                          nn.ReLU(), nn.Linear(hidden, 1))
    loss = mg.module_loss(model, nn.functional.mse_loss)
    params = {k: v.detach() for k, v in mg.params_of(model).items()}
    return loss, params, mg.Sinusoid().sample(meta_batch, seed=0)


class TimeMetaGradient:
    """One meta-gradient, sinusoid MLP 1-40-40-1, 25 tasks."""

    params = [METHODS, [1, 5]]
    param_names = ["method", "steps"]
    timeout = 300.0

    def setup(self, method, steps):
        warnings.simplefilter("ignore")
        torch.set_num_threads(1)
        self.loss, self.params, self.tasks = sinusoid(40)
        self.method = make_method(method, steps)
        self.method(self.loss, self.params, self.tasks)  # warm-up

    def time_meta_gradient(self, method, steps):
        self.method(self.loss, self.params, self.tasks)


class TimeLargeModel:
    """One meta-gradient, sinusoid MLP 1-512-512-1 (264k parameters), 25 tasks, K = 5."""

    params = [["maml", "imaml"]]
    param_names = ["method"]
    timeout = 600.0
    number = 1
    repeat = (3, 5, 60.0)

    def setup(self, method):
        warnings.simplefilter("ignore")
        torch.set_num_threads(1)
        self.loss, self.params, self.tasks = sinusoid(512)
        self.method = make_method(method, 5)
        self.method(self.loss, self.params, self.tasks)  # warm-up

    def time_meta_gradient(self, method):
        self.method(self.loss, self.params, self.tasks)
