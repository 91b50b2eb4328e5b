"""The output folder of ``metagrad train``: checked before any work, locked while a run
writes into it, marked with what it holds, and written only with valid JSON.

* :func:`prepare` creates the folder and writes and removes a probe file, so that a
  folder that cannot be written (``--out`` is a file, a read-only folder) is refused
  with one line before minutes of training, not with a traceback after them.
* :func:`hold` takes an exclusive ``fcntl.flock`` on ``<out>/.metagrad.lock`` for the
  whole run. The kernel releases it when the process exits or crashes, so a lock file
  left behind by a killed run never blocks the next one; a second run into the same
  folder while the first is alive is refused, naming the folder and the holder's pid.
  Nested holds of the same folder by one process are allowed (the command holds the
  top folder and :func:`metagrad.train.train` its run folder, which can be the same).
* :func:`check_kind` refuses to write one kind of result (a single-method run, a
  ``--method all`` comparison, a multi-seed study) into a folder holding another kind
  unless ``--overwrite`` is given; the kind is recorded in ``metagrad_run.json``.
* :func:`write_json` writes strict JSON: NaN and ±Infinity (which ``json.dumps`` emits
  by default but JSON does not have) become ``null``, and a ``non_finite`` field lists
  each such value and what it was.

When meta-training runs on several processes (``torchrun``), only the process that
writes the outputs calls these functions.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._app import UsageError, describe_os_error
from .._app import prepare_out as prepare
from .._files import atomic_write_bytes

LOCK = ".metagrad.lock"
MARKER = "metagrad_run.json"
KINDS = {
    "single": "a single-method run (train_log.csv, snapshot.pt, summary.json at the top)",
    "all": "a --method all comparison (comparison.csv, figures, one subfolder per method)",
    "study": "a multi-seed study (study.json, comparison tables, figures, runs/, baselines/)",
    "rates": "a learned-rates study (rates.json, rates.md, one study per support size in "
             "shots<K>/)",
}

_HELD: dict[Path, tuple[int, int]] = {}
"""Folders this process holds: resolved path -> (file descriptor, nesting depth)."""


class FolderBusy(UsageError):
    """Another live process holds the output folder."""


@contextmanager
def hold(out: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``out`` for the block (see the module docstring)."""
    out = Path(out)
    key = out.resolve()
    if key in _HELD:  # this process already holds it (nested call)
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield out
        finally:
            _HELD[key] = (fd, _HELD[key][1] - 1)
        return
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise FolderBusy(f"--out {str(out)!r} is in use by another metagrad train run "
                         f"({holder}); wait for it to finish or choose another --out") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                 f"{' '.join(sys.argv)}\n".encode())
    _HELD[key] = (fd, 1)
    try:
        yield out
    finally:
        del _HELD[key]
        os.close(fd)  # closing the descriptor releases the lock


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text.split(":")[0] if text else "holder's pid not recorded yet"


def folder_kind(out: Path) -> str | None:
    """What ``out`` holds: ``"single"``, ``"all"``, ``"study"``, or None (nothing of ours).
    Read from ``metagrad_run.json``, else from the files (folders written before the marker)."""
    marker = out / MARKER
    if marker.is_file():
        try:
            return json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError):
            pass
    if (out / "study.json").is_file():
        return "study"
    if (out / "snapshot.pt").is_file() or (out / "summary.json").is_file():
        return "single"
    if (out / "comparison.csv").is_file():
        return "all"
    return None


def check_kind(out: Path, kind: str, *, overwrite: bool, what: str) -> None:
    """Refuse to write ``kind`` into a folder holding another kind, unless ``overwrite``;
    then record ``kind`` in the marker. ``what`` describes the new run for the message."""
    have = folder_kind(out)
    if have is not None and have != kind and not overwrite:
        raise UsageError(
            f"--out {str(out)!r} holds {KINDS.get(have, have)}; {what} would overwrite its "
            f"tables and figures: pass --overwrite to replace it, or choose another --out")
    write_json(out / MARKER, {"kind": kind, "what": KINDS[kind],
                              "command": " ".join(sys.argv)})


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as strict JSON (atomically); non-finite numbers become null and are
    listed, with their value, under ``non_finite`` (a dict ``data`` only)."""
    found: dict[str, str] = {}
    clean = _finite(data, "", found)
    if found and isinstance(clean, dict):
        clean["non_finite"] = {
            "note": "JSON has no NaN or Infinity: these values were not finite and are "
                    "written as null",
            "values": found}
    text = json.dumps(clean, indent=2, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode())


def _finite(x: Any, where: str, found: dict[str, str]) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        found[where or "<top>"] = repr(x)
        return None
    if isinstance(x, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), found) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", found) for i, v in enumerate(x)]
    return x


def read_json(path: str | os.PathLike) -> Any:
    """Read a file written by :func:`write_json` (null where a value was not finite)."""
    return json.loads(Path(path).read_text())


def as_json_value(data: Any) -> Any:
    """``data`` as it reads back from JSON (tuples become lists), for comparing settings
    with those stored in a file."""
    return json.loads(json.dumps(data))


__all__ = ["KINDS", "LOCK", "MARKER", "FolderBusy", "as_json_value", "check_kind",
           "describe_os_error",
           "folder_kind", "hold", "prepare", "read_json", "write_json"]
