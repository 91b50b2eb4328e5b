"""What the ranks exchange to agree before averaging: a fingerprint of everything that
must be equal on every rank (the method and its settings, the parameters' names, shapes,
dtypes and values, the loss's code), and a readable account of what differs when the
fingerprints do not match."""

from __future__ import annotations

import functools
import hashlib
import types
from typing import Any

import torch
from torch import Tensor, nn

from .._pytree import Params

HASH_MASK = (1 << 62) - 1
"""Fingerprints are 62-bit, so that both h and −h fit in int64 with room for a neutral value."""


def fingerprint(description: dict) -> int:
    """A 62-bit hash of a description (see :func:`describe`)."""
    digest = hashlib.blake2b(repr(description).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & HASH_MASK


def describe(method: Any, compiled: Any, theta: Params, loss: Any, checksum: str) -> dict:
    """Everything that must agree across ranks, as plain values."""
    return {
        "method": method.name,
        "settings": method.config(),
        "compiled": None if compiled is None else
        {"backend": compiled.backend, "mode": compiled.mode},
        "params": [(k, tuple(v.shape), str(v.dtype)) for k, v in theta.items()],
        "loss": describe_loss(loss),
        "parameter values": checksum,
    }


def checksum(theta: Params, weights: dict[str, Tensor]) -> str:
    """A checksum of the parameters' values, computed where they live (one pass over them,
    no copy to the host): Σ wᵢθᵢ in float64 with fixed pseudo-random weights, so that ranks
    whose parameters drifted apart (an unseeded initialisation, an optimiser stepped with
    another gradient) are told so at the next call rather than averaged silently."""
    total = sum((weights[k] * v.detach().to(torch.float64)).sum() for k, v in theta.items())
    return float(total).hex()


def checksum_weights(theta: Params) -> dict[str, Tensor]:
    """The fixed weights of :func:`checksum` (the same on every rank: a seeded generator)."""
    gen = torch.Generator().manual_seed(20261203)
    return {k: torch.rand(v.shape, generator=gen, dtype=torch.float64).add_(0.5).to(v.device)
            for k, v in theta.items()}


def describe_loss(loss: Any, depth: int = 2) -> str:
    """The loss's code, as far as it can be named: a function's qualified name and a digest
    of its bytecode and constants, and, one level down, what its closure holds (a module's
    architecture, another function). Two ranks passing different losses differ here."""
    if isinstance(loss, functools.partial):
        return f"partial({describe_loss(loss.func, depth)})"
    if isinstance(loss, types.MethodType):
        return f"{type(loss.__self__).__qualname__}.{describe_loss(loss.__func__, depth)}"
    if isinstance(loss, types.FunctionType):
        inner = []
        if depth > 0:
            for cell in loss.__closure__ or ():
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                if callable(value) and not isinstance(value, type):
                    inner.append(describe_loss(value, depth - 1))
        name = f"{loss.__qualname__}#{_code_digest(loss.__code__)}"
        return f"{name}({', '.join(inner)})" if inner else name
    if isinstance(loss, nn.Module):
        digest = hashlib.blake2b(repr(loss).encode(), digest_size=4).hexdigest()
        return f"{type(loss).__qualname__}#{digest}"
    return type(loss).__qualname__


def _code_digest(code: types.CodeType) -> str:
    """A digest of a code object's bytecode and constants, nested code objects included by
    their own digest (their repr holds a memory address, different in every process)."""
    consts = [_code_digest(c) if isinstance(c, types.CodeType) else repr(c)
              for c in code.co_consts]
    return hashlib.blake2b(code.co_code + repr(consts).encode(), digest_size=4).hexdigest()


def differences(descriptions: list[dict]) -> str:
    """What differs between the ranks' fingerprint descriptions, rank by rank."""

    def per_rank(values: list[Any]) -> str:
        return ", ".join(f"rank {r} has {v}" for r, v in enumerate(values))

    lines = []
    for key in ("method", "compiled"):
        values = [d[key] for d in descriptions]
        if len({repr(v) for v in values}) > 1:
            lines.append(f"{key}: {per_rank([repr(v) for v in values])}")
    names = list(dict.fromkeys(k for d in descriptions for k in d["settings"]))
    for name in names:
        values = [d["settings"].get(name, "<absent>") for d in descriptions]
        if len({repr(v) for v in values}) > 1:
            lines.append(f"setting {name}: {per_rank([repr(v) for v in values])}")
    params = [{k: (shape, dtype) for k, shape, dtype in d["params"]} for d in descriptions]
    for name in dict.fromkeys(k for p in params for k in p):
        values = [p.get(name) for p in params]
        if len(set(values)) > 1:
            shown = ["no such parameter" if v is None else f"shape {v[0]} {v[1]}" for v in values]
            lines.append(f"params[{name!r}]: {per_rank(shown)}")
    if not lines and [list(p) for p in params].count(list(params[0])) != len(params):
        lines.append("parameter order: "
                     + per_rank([repr(list(p)) for p in params]))
    values = [d.get("loss") for d in descriptions]
    if len({repr(v) for v in values}) > 1:
        lines.append(f"loss: {per_rank(values)}; every rank must pass the same loss "
                     "function")
    values = [d.get("parameter values") for d in descriptions]
    if not lines and len(set(values)) > 1:
        lines.append("parameter values (checksums: "
                     f"{per_rank(values)}): initialise every rank's model from the same "
                     "seed, or broadcast rank 0's parameters (torch.distributed.broadcast), "
                     "and step every rank's optimiser with the same gradient")
    if not lines:  # cannot happen unless the ranks disagree on which call is the first
        lines.append("the fingerprints differ, but the descriptions agree: every rank must "
                     "make the same sequence of calls")
    return ("mg.distributed: the ranks disagree, so their meta-gradients cannot be averaged: "
            + "; ".join(lines) + ". Every rank must call the same method with the same "
            "settings on parameters of the same names, shapes and dtypes.")
