"""Peer-library adapters: the same meta-gradient workload in higher, learn2learn, torchopt
(and betty, see below), timed side by side with metagrad in one run, plus a plain
per-task ``torch.autograd`` loop (``create_graph=True``) — the loop the peers are built
on and the baseline that metagrad's speed-ups are measured against.

Workload (Finn et al. 2017 sinusoid): MLP 1-40-40-1 ReLU, meta-batch 25, 10 + 10 shots,
inner_lr 0.01, float32. Cases: second-order MAML at K = 1, 5, 10; first-order MAML at
K = 5; iMAML with 5 proximal inner steps, λ = 1 and 5 CG iterations from x = 0 on
(I + H/λ) x = ∇L_val(φ) (Rajeswaran et al. 2019).

Each adapter module has ``NAME``, ``available() -> str | None`` (None when importable,
else why not) and ``CASES: dict[case, fn(problem, spec) -> list[Tensor]]`` returning the
mean meta-gradient in ``problem.params`` order.
Run ``python -m metagrad_bench.peers --out DIR``.
Peers are optional: ``scripts/install_peers.sh`` installs them.

For auditing, the modules of higher, learn2learn, torchopt and betty also have
``AUDIT_TARGETS: dict[method, factory]``: ``factory(**settings)`` (metagrad's vocabulary:
``steps``, ``inner_lr``, ``lam``, ``cg_iters``, ``terms``, ``step``) gives a target
``target(loss, params, tasks) -> dict[str, Tensor]``, the library's own mean meta-gradient
for any functional loss and parameter dict (see ``_audit.py``); ``AUDIT_VARIANTS`` holds
library-native alternatives (torchopt's normal-equation CG, betty's ``darts``). Each
module's docstring maps the settings and cites the library source for what it computes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PeerCase:
    name: str
    family: str  # maml | fomaml | imaml
    steps: int
    inner_lr: float = 0.01
    lam: float = 1.0
    cg_iters: int = 5


CASES = [
    PeerCase("maml K=1", "maml", 1),
    PeerCase("maml K=5", "maml", 5),
    PeerCase("maml K=10", "maml", 10),
    PeerCase("fomaml K=5", "fomaml", 5),
    PeerCase("imaml K=5 λ=1 cg=5", "imaml", 5),
]

ADAPTERS = [f"metagrad_bench.peers.{name}"
            for name in ("loop", "higher_", "learn2learn_", "torchopt_", "betty_", "jax_")]
