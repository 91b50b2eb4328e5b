"""asv benchmarks (``asv run``; see bench/README.md), following scipy's conventions.

Grids over method × K (``steps``) × λ × J (``terms``) × ``cg_iters`` × device. A setting
a method does not read (λ for MAML, J for IMAML, ...) must sit at its first value, and
other combinations raise ``NotImplementedError`` in ``setup`` (asv skips them), as do
CUDA rows without a GPU. The default grid is small enough for ``asv run --quick`` on a
2-core CPU; ``METAGRAD_BENCH_FULL=1`` switches to the large grid.

* ``TimeMetaGradient``: ``time_`` (CUDA synchronised), ``peakmem_`` (process RSS, asv),
  ``track_measured_over_predicted`` (time / (gradient-equivalents × one batched gradient)).
* ``GpuMemory.track_peak_memory``: ``torch.cuda.max_memory_allocated`` above baseline.
* ``Accuracy.track_approx_error``: ‖g − g*‖/‖g*‖ against the float64 bilevel-exact
  targets (``metagrad.verify.exact_target``), computed once in ``setup_cache``.
"""

from __future__ import annotations

import os
import warnings

import torch
from metagrad_bench import variants
from metagrad_bench.measure import gradient_time, peak_memory_mb

# Module imports only: asv would collect a bare `time_call` name as a benchmark.
from metagrad import timing
from metagrad.methods import METHOD_NAMES
from metagrad.problems import make_problem
from metagrad.verify.compare import exact_target, rel_error

FULL = os.environ.get("METAGRAD_BENCH_FULL") == "1"
# CUDA rows only where a GPU is (they would all be skipped anyway).
DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
METHODS = [*METHOD_NAMES, "maml-trajectory"]
if FULL:
    METHODS.append("maml-compiled")  # its compile (tens of seconds) is too slow for --quick

STEPS = [1, 5, 10, 20, 50, 100] if FULL else [1, 5]
LAMS = [1.0, 0.1, 10.0, 100.0] if FULL else [1.0]
CG_ITERS = [5, 1, 20] if FULL else [5]
TERMS = [5, 1, 20] if FULL else [5]
PARAM_NAMES = ["method", "steps", "lam", "cg_iters", "terms", "device"]


def _check(method: str, lam: float, cg_iters: int, terms: int, grid: list[list]) -> None:
    """Skip (NotImplementedError) points that differ only in a setting the method ignores."""
    s = variants.settings(method, steps=1, lam=lam, cg_iters=cg_iters, terms=terms)
    for name, value, values in (("lam", lam, grid[2]), ("cg_iters", cg_iters, grid[3]),
                                ("terms", terms, grid[4])):
        if s[name] is None and value != values[0]:
            raise NotImplementedError(f"{method} does not read {name}")


def _check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise NotImplementedError("no CUDA device")


class TimeMetaGradient:
    """Sinusoid MLP 1-40-40-1, meta-batch 25, float32: one meta-gradient."""

    params = [METHODS, STEPS, LAMS, CG_ITERS, TERMS, DEVICES]
    param_names = PARAM_NAMES
    timeout = 600.0

    def setup(self, method, steps, lam, cg_iters, terms, device):
        _check(method, lam, cg_iters, terms, self.params)
        _check_device(device)
        warnings.simplefilter("ignore")
        self.device = device
        self.p = make_problem("sinusoid", device=device)
        self.method, self.fn = variants.make(method, steps=steps, inner_lr=0.01, lam=lam,
                                             cg_iters=cg_iters, terms=terms)
        self.call()  # warm-up (and compilation for compiled variants)

    def call(self):
        out = self.fn(self.p.loss, self.p.params, self.p.tasks)
        timing.synchronize(self.device)
        return out

    def time_meta_gradient(self, *args):
        self.call()

    def peakmem_meta_gradient(self, *args):
        self.call()

    def track_measured_over_predicted(self, *args):
        p = self.p
        unit_s = gradient_time(p.loss, p.params, p.tasks, self.device).median_s
        t = timing.time_call(self.call, self.device, warmup=0, repeats=5).median_s
        return t / (self.method.gradient_equivalents() * unit_s)

    track_measured_over_predicted.unit = "measured/predicted"


class GpuMemory:
    """Peak CUDA memory of one meta-gradient on the conv net (5-way 1-shot, 32 tasks)."""

    params = [["maml", "maml-trajectory", "imaml", "neumann", "penalty"],
              [1, 10, 100] if FULL else [1, 10], ["cuda"]]  # skipped without a GPU
    param_names = ["method", "steps", "device"]
    timeout = 600.0

    def setup(self, method, steps, device):
        _check_device(device)
        warnings.simplefilter("ignore")
        self.p = make_problem("convnet", meta_batch=32, device=device)
        _, self.fn = variants.make(method, steps=steps, inner_lr=0.01, lam=1.0, cg_iters=5,
                                   terms=5)
        self.device = device

    def track_peak_memory(self, method, steps, device):
        p = self.p
        return peak_memory_mb(lambda: self.fn(p.loss, p.params, p.tasks), device)

    track_peak_memory.unit = "MiB"


# Penalty is left out: its λ weights a different objective, so its distance to the MAML
# target at the implicit methods' λ (10-100) says nothing (the sweep has it, at small λ).
ACC_METHODS = [name for name in METHOD_NAMES if name != "penalty"]
ACC_STEPS = [1, 5, 20] if FULL else [5]
ACC_LAMS = [100.0, 10.0, 1.0] if FULL else [100.0]
ACC_ITERS = [5, 0, 1, 20] if FULL else [5]
ACC_INNER_LR = 0.005  # inner_lr·(λ + L) < 2 up to λ = 100 on this problem


class Accuracy:
    """Relative error against the float64 exact target, smooth sinusoid MLP, 5 tasks."""

    params = [ACC_METHODS, ACC_STEPS, ACC_LAMS, ACC_ITERS, ACC_ITERS]
    param_names = ["method", "steps", "lam", "cg_iters", "terms"]
    timeout = 1800.0

    def setup_cache(self):
        p = make_problem("sinusoid_tanh", meta_batch=5, dtype=torch.float64)
        targets = {}
        for lam in ACC_LAMS:
            targets["implicit", lam] = exact_target(p, "imaml", {"lam": lam})
        for k in ACC_STEPS:
            targets["maml", k] = exact_target(p, "maml", {"steps": k, "inner_lr": ACC_INNER_LR})
        return targets

    def setup(self, targets, method, steps, lam, cg_iters, terms):
        _check(method, lam, cg_iters, terms, self.params)
        warnings.simplefilter("ignore")
        self.p = make_problem("sinusoid_tanh", meta_batch=5, dtype=torch.float64)
        implicit = variants.VARIANTS[method].method_class.target == "implicit"
        self.target = targets["implicit", lam] if implicit else targets["maml", steps]
        _, self.fn = variants.make(method, steps=steps, inner_lr=ACC_INNER_LR, lam=lam,
                                   cg_iters=cg_iters, terms=terms)

    def track_approx_error(self, targets, *args):
        p = self.p
        grad = self.fn(p.loss, p.params, p.tasks).grad
        return rel_error(torch.cat([g.reshape(-1) for g in grad.values()]), self.target)

    track_approx_error.unit = "relative error"
