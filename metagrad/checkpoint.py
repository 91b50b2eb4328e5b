"""Crash-safe checkpoints for meta-training runs.

A checkpoint is one file::

    b"metagrad-checkpoint 1\\n" + sha256(payload).hexdigest() + b"\\n" + payload

where ``payload`` is ``torch.save`` of a plain dict (method, settings, parameter
shapes, model and optimizer state, every RNG state, step, log so far). The
digest makes a truncated or bit-flipped file fail loudly instead of resuming
from garbage.

Writes are atomic: the bytes go to a temporary file in the same folder, are
``fsync``-ed, and replace the old checkpoint with ``os.replace`` (atomic on
POSIX and Windows within one file system). A run killed mid-write therefore
leaves either the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

MAGIC = b"metagrad-checkpoint 1\n"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupted, or from another run."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave half-written temp files behind, whatever interrupted us.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # The rename itself is only durable once the directory entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Serialise ``payload`` (tensors, dicts, lists, numbers, strings) atomically to ``path``."""
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    body = buf.getvalue()
    digest = hashlib.sha256(body).hexdigest().encode("ascii")
    return atomic_write_bytes(path, MAGIC + digest + b"\n" + body)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; refuse anything else.

    Tensors are loaded onto the CPU (``weights_only``: no code runs on load).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a metagrad checkpoint (bad header)")
    rest = data[len(MAGIC):]
    digest, sep, body = rest.partition(b"\n")
    if not sep or len(digest) != 64:
        raise CheckpointError(f"{path} is corrupted: truncated header")
    if hashlib.sha256(body).hexdigest().encode("ascii") != digest:
        raise CheckpointError(
            f"{path} is corrupted: its contents do not match the stored sha256 digest "
            f"(truncated or damaged file, {len(data)} bytes)"
        )
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as err:  # digest matched, so this is a format problem, not damage
        raise CheckpointError(f"{path} could not be read: {err}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict")
    return payload


def check_compatible(path: str | os.PathLike, payload: Mapping[str, Any],
                     expected: Mapping[str, Any], keys: Iterable[str]) -> None:
    """Refuse ``payload`` unless every entry of ``keys`` equals ``expected``'s.

    Dict-valued entries (settings, shapes) are compared key by key so that the
    message names exactly what differs, e.g. ``config.lam: checkpoint 1.0, this run 2.0``.
    """
    diffs: list[str] = []
    for key in keys:
        _diff(key, payload.get(key, "<missing>"), expected.get(key, "<missing>"), diffs)
    if diffs:
        raise CheckpointError(
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
        out.append(f"{name}: checkpoint {have!r}, this run {want!r}")


def _normal(x: Any) -> Any:
    # Tuples come back from torch.load as tuples or lists depending on nesting; compare values.
    if isinstance(x, (list, tuple)):
        return [_normal(v) for v in x]
    return x
