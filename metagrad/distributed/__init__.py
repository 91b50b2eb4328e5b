"""Meta-batches across processes: each rank computes its own tasks' meta-gradients in
full, then one all-reduce of the flattened result combines them.

    import torch.distributed as dist
    dist.init_process_group("gloo")            # or "nccl"; processes started by torchrun
    method = mg.distributed(mg.MAML(steps=5, inner_lr=0.01))
    out = method(loss, params, local_tasks)     # each rank: its own shard of the meta-batch
    out.grad                                    # every rank: the mean over all tasks of all ranks

With R ranks, rank r holding T_r tasks with meta-gradients g_{r,1} … g_{r,T_r} (inner
loops, second-order terms and linear solves never leave the rank), every rank gets the
global mean g = (Σ_r Σ_{i ≤ T_r} g_{r,i}) / (Σ_r T_r), the number one process computes on
the concatenated meta-batch up to float rounding; the losses are global means too.
Shards may be uneven and a rank may hold no task (``tasks=None``); :func:`shard_tasks`
cuts contiguous shards. DDP is not used: it does not synchronise gradients of gradients.

One call exchanges (all ranks of the group must call in the same order):

1. a status all-reduce: a fingerprint of what must agree (the method and its settings,
   the parameters' names, shapes, dtypes and a checksum of their values, the loss's
   code; :mod:`._exchange`), whether the local computation failed, T_r and the number of
   numerical findings;
2. the gradient all-reduce of [T_r · mean g_{r,i}, Σ L_tr(θ), Σ L_val(φ)] in at least
   float32 (sums of half-precision gradients overflow where their mean does not);
3. only when something is wrong: the failure messages, what differs, or the findings.

Errors are collective, never a hang: a local exception is re-raised on its rank and
turned into ``RuntimeError: rank r failed: ...`` on the others; ranks that disagree get a
``ValueError`` on every rank naming what differs; ``timeout`` bounds each wait. Findings
are renumbered to global task indices and acted on with the method's own ``diagnose``
mode on every rank. The how-to page "Run on several processes or machines" has more.
"""

from ._method import DistributedMetaGradient, DistributedMethod, distributed
from ._shard import shard_tasks

__all__ = ["DistributedMetaGradient", "DistributedMethod", "distributed", "shard_tasks"]
