"""The processes of a distributed ``metagrad train`` (``torchrun``), and what they exchange
besides the meta-gradient.

Under ``torchrun --nproc-per-node N`` (``WORLD_SIZE`` > 1 in the environment) every
process runs the same command. :func:`launched` initialises the process group from
torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``): gloo for ``--device cpu``, NCCL for ``--device cuda`` with process
``LOCAL_RANK`` on GPU ``LOCAL_RANK``; it destroys the group at the end.

The division of work (see :mod:`metagrad.train.loop`):

* every rank draws the same meta-batch from the seed and computes the meta-gradient of
  its own contiguous slice (``metagrad.shard_tasks``); ``metagrad.distributed`` returns
  the mean over the whole meta-batch on every rank, so every rank takes the same
  optimizer step and the parameters stay identical (checked at every snapshot,
  :meth:`Ranks.check_identical`);
* everything else (the joint-training baseline, the held-out evaluation, the probes) is
  computed by every rank identically: it is cheap next to meta-training, and no rank
  ever waits long for another (a long wait would run into the process group's timeout);
* rank 0, the *writer*, alone touches the output folder: it checks, locks and marks it,
  reads the snapshot and sends it to the others (:meth:`Ranks.from_writer`), writes the
  log, snapshots, summary, tables and figures. The other ranks write nothing.

Errors are collective: whatever the writer does to the folder runs through
:meth:`Ranks.from_writer`, which sends its outcome to every rank, so a locked or
unwritable folder or a refused snapshot ends every rank with the same one-line message
instead of leaving the others waiting. A rank that dies outside an exchange (killed,
out of memory) is noticed by the others' next exchange: gloo fails within seconds when
the connection closes, NCCL at the process group's timeout.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from .._app import UsageError
from .._task import Task
from ..distributed import shard_tasks
from .snapshot import SnapshotError

T = TypeVar("T")
_HASH_MASK = (1 << 62) - 1
"""62-bit digests: both h and −h fit in int64 (one MAX all-reduce compares them)."""


class RanksDiverged(RuntimeError):
    """The ranks' parameters (or optimizer state) are no longer identical."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` (1: a single process)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    """Where the backend exchanges tensors: ``"cpu"`` (gloo) or this rank's GPU (NCCL)."""

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Rank 0 alone writes the outputs."""
        return self.rank == 0

    # -- the writer's work, with its outcome sent to every rank -------------------------
    def from_writer(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the writer and return its value on every rank (a picklable value:
        a path, a flag, a snapshot's dict of CPU tensors).

        If ``fn`` raises, the writer re-raises its exception and every other rank raises
        the same kind with the same message (:func:`_rebuild`), so every process reports
        the same one-line error. In a single process this is ``fn()``.
        """
        if not self.distributed:
            return fn()
        box: list[Any] = [None]
        error: BaseException | None = None
        if self.writer:
            try:
                box[0] = ("ok", fn())
            except Exception as err:  # noqa: BLE001  (re-raised below, after the exchange)
                error, box[0] = err, ("error", _describe(err))
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        status, value = box[0]
        if status == "error":
            raise _rebuild(value, 0)
        return value

    # -- checks and exchanges of the training loop ----------------------------------------
    def check_identical(self, tensors: Mapping[str, Any], meta_step: int) -> None:
        """Raise :class:`RanksDiverged` on every rank unless ``tensors`` (the parameters
        and the optimizer state) are bit-identical on all ranks.

        Each rank hashes the bytes of its tensors (a 62-bit blake2b digest h); one MAX
        all-reduce of (h, −h) gives (max h, −min h), equal up to sign exactly when every
        rank has the same h. Only on a mismatch are the digests gathered, to name them.
        """
        if not self.distributed:
            return
        digest = _digest(tensors)
        both = torch.tensor([digest, -digest], dtype=torch.int64, device=self.device)
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        if int(both[0]) == -int(both[1]):
            return
        digests: list[Any] = [None] * self.world
        dist.all_gather_object(digests, f"{digest:016x}")
        raise RanksDiverged(
            f"the processes' parameters differ after meta-step {meta_step} (digests: "
            + ", ".join(f"rank {r} {d}" for r, d in enumerate(digests))
            + "): their meta-gradients or optimizer steps were not the same. This state "
            "was not saved; the snapshot written before (if any) is intact, and --resume "
            "restarts every process from it")

    def gather_tasks(self, local: Mapping[str, Tensor], tasks: Task) -> dict[str, Tensor]:
        """Per-task tensors of the whole meta-batch ``tasks`` from every rank's shard.

        ``local`` holds this rank's rows (leading dimension = its shard of ``tasks`` under
        ``metagrad.shard_tasks``); the result has the rows of all ranks in task order, the
        same tensors one process computing every task would hold. One all-gather of a
        float64 matrix (rows padded to the largest shard; float32 and integer values up to
        2⁵³ convert exactly both ways).
        """
        if not self.distributed:
            return dict(local)
        counts = [shard_tasks(tasks, r, self.world).num_tasks for r in range(self.world)]
        keys = sorted(local)
        shapes = {k: tuple(local[k].shape[1:]) for k in keys}
        widths = [max(1, _numel(shapes[k])) for k in keys]
        rows = torch.cat([local[k].detach().reshape(counts[self.rank], -1).double()
                          .to(self.device) for k in keys], dim=1)
        padded = rows.new_zeros(max(counts), rows.shape[1])
        padded[:counts[self.rank]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        full = torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])
        out: dict[str, Tensor] = {}
        for k, block in zip(keys, full.split(widths, dim=1), strict=True):
            ref = local[k]
            out[k] = block.reshape(-1, *shapes[k]).to(dtype=ref.dtype, device=ref.device)
        return out


SINGLE = Ranks()


def current() -> Ranks:
    """This process's :class:`Ranks`: from the initialised default process group, or a
    single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return SINGLE
    backend = str(dist.get_backend()).lower()
    device = f"cuda:{torch.cuda.current_device()}" if "nccl" in backend else "cpu"
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


def world_size() -> int:
    """``WORLD_SIZE`` from torchrun's environment (1 when not started by torchrun)."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(text)
    except ValueError:
        raise UsageError(f"WORLD_SIZE={text!r} in the environment is not an integer") from None
    if world < 1:
        raise UsageError(f"WORLD_SIZE={text!r} in the environment must be at least 1")
    return world


@contextmanager
def launched(device: str | None) -> Iterator[Ranks]:
    """The process group of a torchrun launch for the block (initialised here, destroyed
    after), or a single process when ``WORLD_SIZE`` is unset or 1. A group the caller
    initialised already is used as it is and left alone."""
    if world_size() == 1:
        yield SINGLE
        return
    if dist.is_initialized():
        yield current()
        return
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise UsageError(f"WORLD_SIZE is {world_size()} but {', '.join(missing)} is not set: "
                         "start the processes with torchrun (e.g. torchrun --standalone "
                         "--nproc-per-node 2 -m metagrad train ...)")
    local = int(os.environ["LOCAL_RANK"])
    dev = torch.device(device or "cpu")
    options: dict[str, Any] = {}
    if dev.type == "cuda":
        if dev.index is not None:
            raise UsageError(f"--device {device!r}: under torchrun every process uses the GPU "
                             "of its LOCAL_RANK; pass --device cuda")
        count = torch.cuda.device_count()
        if local >= count:
            raise UsageError(f"LOCAL_RANK {local} but this machine shows {count} GPU(s): start "
                             "at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local)
        options["device_id"] = torch.device("cuda", local)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", **options)
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _digest(tensors: Mapping[str, Any]) -> int:
    """62-bit blake2b of the names and bytes of every tensor in ``tensors`` (nested dicts
    and lists of tensors and numbers, e.g. an optimizer's state dict), in a fixed order."""
    h = hashlib.blake2b(digest_size=8)

    def feed(name: str, value: Any) -> None:
        if isinstance(value, Tensor):
            h.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, Mapping):
            for k in sorted(value, key=str):
                feed(f"{name}.{k}", value[k])
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                feed(f"{name}[{i}]", v)
        else:
            h.update(f"{name}={value!r}".encode())

    feed("", tensors)
    return int.from_bytes(h.digest(), "little") & _HASH_MASK


def _describe(err: BaseException) -> tuple[str, Any]:
    """A picklable description of ``err`` that :func:`_rebuild` turns back into the same
    kind of error with the same message."""
    if isinstance(err, OSError):
        return "OSError", (err.errno, err.strerror or str(err), err.filename)
    for kind in (UsageError, SnapshotError, ValueError, RanksDiverged):
        if isinstance(err, kind):
            return kind.__name__, str(err)
    return "other", f"{type(err).__name__}: {err}"


def _rebuild(described: tuple[str, Any], rank: int) -> BaseException:
    """The error that rank ``rank`` described: the same kind and message where the command
    reports it as one line, else a RuntimeError naming the rank."""
    kind, value = described
    if kind == "OSError":
        code, message, filename = value
        return OSError(code or errno.EIO, message, filename)
    known = {"UsageError": UsageError, "SnapshotError": SnapshotError,
             "ValueError": ValueError, "RanksDiverged": RanksDiverged}
    if kind in known:
        return known[kind](value)
    return RuntimeError(f"rank {rank} failed: {value}")


__all__ = ["SINGLE", "Ranks", "RanksDiverged", "current", "launched", "world_size"]
