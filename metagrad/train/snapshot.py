"""Crash-safe snapshots of meta-training runs (what ``--resume`` continues from).

A snapshot is one file::

    b"metagrad-snapshot 1\\n" + sha256(payload).hexdigest() + b"\\n" + payload

where ``payload`` is ``torch.save`` of a plain dict (method, settings, parameter
shapes, model and optimizer state, every RNG state, meta-step, log so far). The
digest makes a truncated or bit-flipped file fail loudly instead of resuming
from garbage. Writes are atomic (``metagrad._files.atomic_write_bytes``): a run
killed mid-write leaves either the old snapshot or the new one, never a torn file.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .._files import atomic_write_bytes

MAGIC = b"metagrad-snapshot 1\n"


class SnapshotError(ValueError):
    """A snapshot that cannot be used: missing, corrupted, or from another run."""


def save_snapshot(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Serialise ``payload`` (tensors, dicts, lists, numbers, strings) atomically to ``path``."""
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    body = buf.getvalue()
    digest = hashlib.sha256(body).hexdigest().encode("ascii")
    return atomic_write_bytes(path, MAGIC + digest + b"\n" + body)


def load_snapshot(path: str | os.PathLike) -> dict[str, Any]:
    """Read a snapshot written by :func:`save_snapshot`; refuse anything else.

    Tensors are loaded onto the CPU (``weights_only``: no code runs on load).
    """
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"no snapshot at {path}")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise SnapshotError(f"{path} is not a metagrad snapshot (bad header)")
    rest = data[len(MAGIC):]
    digest, sep, body = rest.partition(b"\n")
    if not sep or len(digest) != 64:
        raise SnapshotError(f"{path} is corrupted: truncated header")
    if hashlib.sha256(body).hexdigest().encode("ascii") != digest:
        raise SnapshotError(
            f"{path} is corrupted: its contents do not match the stored sha256 digest "
            f"(truncated or damaged file, {len(data)} bytes)"
        )
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as err:  # digest matched, so this is a format problem, not damage
        raise SnapshotError(f"{path} could not be read: {err}") from None
    if not isinstance(payload, dict):
        raise SnapshotError(f"{path} does not hold a snapshot dict")
    return payload


def check_compatible(path: str | os.PathLike, payload: Mapping[str, Any],
                     expected: Mapping[str, Any], keys: Iterable[str]) -> None:
    """Refuse ``payload`` unless every entry of ``keys`` equals ``expected``'s.

    Dict-valued entries (settings, shapes) are compared key by key so that the
    message names exactly what differs, e.g. ``config.lam: snapshot 1.0, this run 2.0``.
    """
    diffs: list[str] = []
    for key in keys:
        _diff(key, payload.get(key, "<missing>"), expected.get(key, "<missing>"), diffs)
    if diffs:
        raise SnapshotError(
            f"{path} belongs to a different run and cannot be resumed: "
            + "; ".join(diffs)
            + " (use the original settings, or start a new run in another --out)"
        )


def _diff(name: str, have: Any, want: Any, out: list[str]) -> None:
    if isinstance(have, Mapping) and isinstance(want, Mapping):
        for k in sorted(set(have) | set(want), key=str):
            _diff(f"{name}.{k}", have.get(k, "<missing>"), want.get(k, "<missing>"), out)
        return
    if _normal(have) != _normal(want):
        out.append(f"{name}: snapshot {have!r}, this run {want!r}")


def _normal(x: Any) -> Any:
    # Tuples come back from torch.load as tuples or lists depending on nesting; compare values.
    if isinstance(x, (list, tuple)):
        return [_normal(v) for v in x]
    return x
