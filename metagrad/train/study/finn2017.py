"""The sinusoid protocol of Finn, Abbeel & Levine 2017 (ICML, §5.1 and Appendix C.1) as
its released code runs it (``github.com/cbfinn/maml`` at ``a7f45f1``): the settings of
``metagrad train --preset finn2017``, the reference test tasks, and the published numbers
to compare with. ``docs/finn2017.md`` gives every setting's source and the places where
paper and code disagree.

The test tasks (``main.py:163-201``): ``numpy.random.seed(1)``, then 600 tasks, each
drawn by ``data_generator.generate_sinusoid_batch`` with a meta-batch of one, in this
order: the amplitude A ~ U[0.1, 5.0], the phase φ ~ U[0, π], then 2K inputs
x ~ U[−5, 5]; y = A sin(x − φ); the first K points are the support set, the last K the
query set. Replaying that order with NumPy's legacy generator (whose stream NumPy keeps
frozen) gives the reference's own 600 test tasks without TensorFlow.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..._task import Task

AMPLITUDE = (0.1, 5.0)   # data_generator.py:29
PHASE = (0.0, math.pi)   # data_generator.py:30
INPUT = (-5.0, 5.0)      # data_generator.py:31

PRESET: dict[str, Any] = dict(
    method="maml",            # second-order MAML (stop_grad defaults to False, main.py:60)
    meta_steps=70_000,        # main.py:4 --metatrain_iterations=70000 (paper silent)
    meta_batch=25,            # main.py:49 default (paper silent for sinusoids)
    shots=10,                 # paper §5.1 "K = 10"; main.py:4 --update_batch_size=10
    query=10,                 # 2K points drawn and split: main.py:238, main.py:101-104
    steps=1,                  # one inner step in meta-training: paper §5.1; main.py:53
    inner_lr=0.001,           # the released command's update_lr (main.py:52, not set by the
                              # command main.py:4), which reproduces Table 2; the paper's text
                              # says 0.01 (§5.1): --inner-lr 0.01 (docs/finn2017.md)
    meta_lr=1e-3,             # Adam, main.py:50, maml.py:145
    hidden=(40, 40),          # 1-40-40-1 ReLU, no normalisation (--norm=None)
    init="finn2017",          # truncated normal std 0.01, zero biases (maml.py:168-177)
    eval_steps=tuple(range(1, 11)),  # test_num_updates = 10 (main.py:221-222)
    eval_shots=(5, 10, 20),   # one K = 10 model tested at K = 5, 10, 20 (paper App. B)
    heldout_source="numpy-legacy",   # the reference's own test tasks (main.py:168)
    heldout_tasks=600,        # NUM_TEST_POINTS (main.py:163)
    heldout_seed=1,           # np.random.seed(1) (main.py:168)
    baseline_data="support",  # pretraining fits the support points only (maml.py:142)
    baseline_eval_lrs=(0.001, 0.01, 0.02, 0.05),  # the paper tunes the baseline's step
                              # size (§5.1) without giving a grid; chosen on validation tasks
    snapshot_every=5000,
    compile=True,             # measured: the compiled meta-step is several times faster
)
"""``metagrad train --preset finn2017``: :class:`~metagrad.train.TrainConfig` settings."""

PUBLISHED: dict[str, dict[str, Any]] = {
    # Finn, Abbeel & Levine 2017, Appendix C.1, Table 2: the meta-trained model (K = 10,
    # one inner step) and the "pretrain on all tasks" baseline, tested with K = 5 on the
    # 600 reference test tasks (docs/finn2017.md §3).
    "meta": {"shots": 5, "post_update_mse": {"1": 0.67, "5": 0.38, "10": 0.35}},
    "baseline": {"shots": 5, "post_update_mse": {"1": 2.41, "5": 2.23, "10": 2.19}},
}
"""The numbers published on exactly this protocol (no intervals were published): for the
meta-trained model (``PRESET["method"]``) and the joint-training baseline."""


def reference_test_tasks(num_tasks: int, shots: int, seed: int = 1,
                         device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32) -> Task:
    """The first ``num_tasks`` test tasks of the reference code for support size ``shots``
    (K support and K query points each), replayed with ``numpy.random.RandomState(seed)``
    in the reference's draw order (see the module docstring). ``info`` holds ``amplitude``
    and ``phase``."""
    rs = np.random.RandomState(seed)
    amps, phases, xs = [], [], []
    for _ in range(num_tasks):
        amps.append(rs.uniform(*AMPLITUDE, [1])[0])
        phases.append(rs.uniform(*PHASE, [1])[0])
        xs.append(rs.uniform(*INPUT, [2 * shots, 1]))
    amp = torch.tensor(np.array(amps), dtype=torch.float64).view(-1, 1, 1)
    phase = torch.tensor(np.array(phases), dtype=torch.float64).view(-1, 1, 1)
    x = torch.tensor(np.stack(xs), dtype=torch.float64)
    y = amp * torch.sin(x - phase)
    x, y = x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)
    return Task(train=(x[:, :shots], y[:, :shots]), val=(x[:, shots:], y[:, shots:]),
                info={"amplitude": amp.view(-1), "phase": phase.view(-1)})


__all__ = ["PRESET", "PUBLISHED", "reference_test_tasks"]
