"""asv benchmarks (``asv run``; see bench/README.md): the history of metagrad's speed, memory
and accuracy, so that a commit that makes a method slower, heavier or less accurate shows
as a step.

asv runs this file from the working tree against every commit it benchmarks, so the
workloads use metagrad's public API only (``import metagrad as mg``: the method classes,
``mg.module_loss``, ``mg.params_of``, ``mg.Sinusoid``, ``mg.INNER_FORMS``) and build their
nets from ``torch.nn``: the file runs unchanged against older commits. A method, option or
inner-loop form a commit does not have raises ``NotImplementedError`` in ``setup`` (asv
skips the point); so do CUDA points without a GPU.

Workloads (Finn et al. 2017 sinusoid regression, 10 + 10 shots, one torch thread):

* ``MetaGradient`` (MLP 1-40-40-1 ReLU, 25 tasks, float32): every method at K = 1 and 5
  (iMAML and Neumann λ = 1 with 5 CG iterations / terms, Penalty λ = 0.1):
  ``time_`` (per-operation overhead decides) and ``peakmem_`` (the process's peak
  resident memory, asv).
* ``LargeModel`` (MLP 1-512-512-1, 264k parameters, 25 tasks, K = 5): MAML and iMAML,
  ``time_`` and ``peakmem_``: arithmetic and memory on the task-batched weights decide.
* ``InnerForms``: MAML and FOMAML at K = 5 with every inner-loop form of
  ``mg.INNER_FORMS`` (learned rates, ANIL, momentum, Adam, the multi-step loss): ``time_``.
* ``Compiled``: ``mg.compile`` of MAML, FOMAML and iMAML at K = 5: ``time_`` per call and
  ``track_compile_seconds`` (the first call, in a fresh cache folder).
* ``Accuracy``: ``track_rel_error`` = ‖g − g*‖/‖g*‖ against the float64 bilevel-exact
  target g* (the oracle ``metagrad_reference``, through ``metagrad.verify.exact_target``;
  computed once in ``setup_cache``): every method and every inner-loop form, K = 5, on the
  smooth sinusoid MLP 1-10-10-1 tanh (``metagrad.problems``' ``sinusoid_small``, its own
  step size and λ), 5 tasks, in float32 (what a user gets) and float64 (the approximation
  alone).
* ``CudaMemory``: ``track_peak_mib`` = ``torch.cuda.max_memory_allocated`` above the
  baseline for one meta-gradient, every method at K = 1 and 5 on the 1-512-512-1 net.

Every call runs with ``diagnose="off"`` where the commit has that option, so what is
measured is the computation.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings

import torch
from torch import nn

import metagrad as mg

# Spelled out, not read from mg.METHOD_NAMES: asv imports this file against every commit
# of the history, including those from before the registry existed.
METHODS = ["maml", "fomaml", "reptile", "imaml", "neumann", "penalty"]
CLASS_NAMES = {"maml": "MAML", "fomaml": "FOMAML", "reptile": "Reptile", "imaml": "IMAML",
               "neumann": "Neumann", "penalty": "Penalty"}
FORMS = ["per_entry", "per_step", "anil", "momentum", "nesterov", "adam", "multistep"]
ACC_PROBLEM = "sinusoid_small"  # 1-10-10-1 tanh (d = 141): the oracle's targets take seconds


def make_method(name: str, steps: int, rate: float = 0.01, lam: float | None = None,
                **extra):
    """The method ``name`` with this file's settings, through the public classes only
    (``extra``: an inner-loop form's options, which may replace the step size ``rate``)."""
    cls = getattr(mg, CLASS_NAMES[name], None)
    if cls is None:
        raise NotImplementedError(f"this commit has no mg.{CLASS_NAMES[name]}")
    settings = {"steps": steps, "inner_lr": rate, **extra}
    if name in ("imaml", "neumann"):
        settings["lam"] = lam or 1.0
        settings["cg_iters" if name == "imaml" else "terms"] = 5
    if name == "penalty":
        settings["lam"] = 0.1
    try:
        return cls(**settings, diagnose="off")
    except TypeError as err:
        if extra:  # an inner-loop option this commit does not have
            raise NotImplementedError(str(err)) from None
        return cls(**settings)  # commits before the diagnose option


def form_options(name: str, form: str, params, steps: int, inner_lr: float) -> dict:
    """The keyword arguments of inner-loop form ``form`` (``mg.INNER_FORMS``) for method
    ``name``; NotImplementedError where the commit or the method has none."""
    forms = getattr(mg, "INNER_FORMS", None)
    if forms is None or form not in forms:
        raise NotImplementedError(f"this commit has no inner-loop form {form!r}")
    recipe = forms[form]
    cls = getattr(mg, CLASS_NAMES[name])
    if recipe.applies_to(cls):
        raise NotImplementedError(f"{name} does not run {form}")
    learn = getattr(cls, "hyper_gradient", None) is not None
    return recipe.kwargs(params, steps, inner_lr, learn=learn, jitter=1)


def sinusoid(hidden: int, meta_batch: int = 25, activation=nn.ReLU,
             dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(loss, params, tasks) of the sinusoid MLP 1-h-h-1, built here from torch.nn."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, hidden), activation(), nn.Linear(hidden, hidden),
                          activation(), nn.Linear(hidden, 1)).to(dtype=dtype, device=device)
    loss = mg.module_loss(model, nn.functional.mse_loss)
    params = {k: v.detach() for k, v in mg.params_of(model).items()}
    tasks = mg.Sinusoid().sample(meta_batch, seed=0)
    if device != "cpu" or dtype != torch.float32:
        if not hasattr(tasks, "to"):
            raise NotImplementedError("this commit's tasks cannot move (no Task.to)")
        tasks = tasks.to(device=device, dtype=dtype)
    return loss, params, tasks


def _flat(grad) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grad.values()]).double().cpu()


class MetaGradient:
    """One meta-gradient, sinusoid MLP 1-40-40-1, 25 tasks, float32."""

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

    def peakmem_meta_gradient(self, method, steps):
        self.method(self.loss, self.params, self.tasks)


class LargeModel:
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

    def peakmem_meta_gradient(self, method):
        self.method(self.loss, self.params, self.tasks)


class InnerForms:
    """One meta-gradient with an inner-loop form, sinusoid MLP 1-40-40-1, 25 tasks, K = 5."""

    params = [["maml", "fomaml"], FORMS]
    param_names = ["method", "form"]
    timeout = 300.0

    def setup(self, method, form):
        warnings.simplefilter("ignore")
        torch.set_num_threads(1)
        self.loss, self.params, self.tasks = sinusoid(40)
        options = form_options(method, form, self.params, 5, 0.01)
        self.method = make_method(method, 5, **options)
        self.method(self.loss, self.params, self.tasks)  # warm-up

    def time_meta_gradient(self, method, form):
        self.method(self.loss, self.params, self.tasks)


class Compiled:
    """``mg.compile``: one call once compiled, and the compile (a fresh cache folder)."""

    params = [["maml", "fomaml", "imaml"]]
    param_names = ["method"]
    timeout = 900.0

    def setup(self, method):
        warnings.simplefilter("ignore")
        torch.set_num_threads(1)
        if not hasattr(mg, "compile"):
            raise NotImplementedError("this commit has no mg.compile")
        self.loss, self.params, self.tasks = sinusoid(40)
        self.folder = tempfile.mkdtemp(prefix="asv_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.folder
        self.compiled = mg.compile(make_method(method, 5))
        start = time.perf_counter()
        self.compiled(self.loss, self.params, self.tasks)
        self.compile_s = time.perf_counter() - start

    def time_call(self, method):
        self.compiled(self.loss, self.params, self.tasks)

    def track_compile_seconds(self, method):
        return self.compile_s

    track_compile_seconds.unit = "seconds"


class Accuracy:
    """‖g − g*‖/‖g*‖ against the float64 exact target, sinusoid MLP 1-10-10-1 tanh, 5 tasks,
    K = 5: every method with every inner-loop form it runs."""

    params = [METHODS, ["plain", *FORMS], ["float32", "float64"]]
    param_names = ["method", "form", "dtype"]
    timeout = 1800.0

    def setup_cache(self):
        try:
            from metagrad.problems import make_problem
            from metagrad.verify.compare import exact_target
        except ImportError:
            return None
        warnings.simplefilter("ignore")
        try:
            problem = make_problem(ACC_PROBLEM, meta_batch=5, dtype=torch.float64)
        except ValueError:
            return None
        targets = {}
        for name in METHODS:
            for form in ["plain", *FORMS]:
                try:
                    method = self._method(name, form, problem.params)
                    targets[name, form] = exact_target(problem, method).double()
                except (NotImplementedError, ValueError, TypeError):
                    continue
        return targets

    @staticmethod
    def _method(name, form, params):
        from metagrad.problems import DEFAULTS

        rate, lam = DEFAULTS[ACC_PROBLEM].inner_lr, DEFAULTS[ACC_PROBLEM].lam
        options = {} if form == "plain" else form_options(name, form, params, 5, rate)
        return make_method(name, 5, rate, lam, **options)

    def setup(self, targets, method, form, dtype):
        if not targets or (method, form) not in targets:
            raise NotImplementedError("no exact target for this point on this commit")
        from metagrad.problems import make_problem

        warnings.simplefilter("ignore")
        torch.set_num_threads(1)
        p = make_problem(ACC_PROBLEM, meta_batch=5, dtype=getattr(torch, dtype))
        self.loss, self.params, self.tasks = p.loss, p.params, p.tasks
        self.method = self._method(method, form, self.params)
        self.target = targets[method, form]

    def track_rel_error(self, targets, method, form, dtype):
        grad = _flat(self.method(self.loss, self.params, self.tasks).grad)
        return float((grad - self.target).norm() / self.target.norm())

    track_rel_error.unit = "relative error"


class CudaMemory:
    """Peak CUDA memory of one meta-gradient above the baseline, MLP 1-512-512-1, 25 tasks."""

    params = [METHODS, [1, 5]]
    param_names = ["method", "steps"]
    timeout = 300.0

    def setup(self, method, steps):
        if not torch.cuda.is_available():
            raise NotImplementedError("no CUDA device")
        warnings.simplefilter("ignore")
        self.loss, self.params, self.tasks = sinusoid(512, device="cuda")
        self.method = make_method(method, steps)
        self.method(self.loss, self.params, self.tasks)  # warm-up

    def track_peak_mib(self, method, steps):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        self.method(self.loss, self.params, self.tasks)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    track_peak_mib.unit = "MiB"
