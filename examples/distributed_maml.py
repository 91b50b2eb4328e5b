"""Second-order MAML on the sinusoid problem with the meta-batch spread over processes.

    torchrun --standalone --nproc-per-node 2 examples/distributed_maml.py   # 2 processes here
    torchrun --standalone --nproc-per-node 8 examples/distributed_maml.py   # 8 GPUs, 1 machine

Every process builds the same model (same seed) and samples the same meta-batch (the
meta-step is the seed), keeps its own contiguous shard of the tasks (``shard_tasks``),
and ``mg.distributed`` returns on every process the meta-gradient averaged over the
WHOLE meta-batch, bit-identical on every rank, so the optimiser steps stay in lockstep
without any parameter broadcast. On GPUs each process uses the GPU ``LOCAL_RANK`` and
NCCL; on CPUs gloo.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn import functional as F

import metagrad as mg
from metagrad.distributed import distributed, shard_tasks
from metagrad.models import mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta-steps", type=int, default=100)
    parser.add_argument("--meta-batch", type=int, default=32, help="tasks over ALL processes")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--cpu", action="store_true", help="gloo on CPUs even if GPUs exist")
    parser.add_argument("--save", help="rank 0 writes the final parameters to this file")
    args = parser.parse_args()

    cuda = torch.cuda.is_available() and not args.cpu
    if cuda:  # one GPU per process: torchrun numbers the processes of a machine LOCAL_RANK
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")  # rank, world size, address: torchrun
    rank, world = dist.get_rank(), dist.get_world_size()

    model = mlp((1, 40, 40, 1), seed=0, device=device)  # the same θ on every rank
    loss = mg.module_loss(model, F.mse_loss)
    method = distributed(mg.MAML(steps=5, inner_lr=0.01))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    for step in range(args.meta_steps):
        tasks = mg.Sinusoid().sample(args.meta_batch, seed=step, device=device)
        out = method(loss, mg.params_of(model), shard_tasks(tasks))
        mg.set_grads(model, out.grad)
        optimizer.step()
        if rank == 0 and (step % args.log_every == 0 or step == args.meta_steps - 1):
            print(f"meta-step {step}: {out.num_tasks} tasks on {world} processes, "
                  f"pre-update loss {float(out.pre_update_loss):.4f}, "
                  f"post-update loss {float(out.post_update_loss):.4f}", flush=True)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    for turn in range(world):  # one rank at a time, so the lines do not run together
        dist.barrier()
        if turn == rank:
            print(f"rank {rank}: parameter checksum {flat.sum().item():.17g} "
                  f"{flat.norm().item():.17g}", flush=True)
    if rank == 0 and args.save:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, args.save)
    # Every rank waits here so none closes its connections while another still uses them
    # (a gloo process whose peer hangs up early can abort).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
