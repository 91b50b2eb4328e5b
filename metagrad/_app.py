"""What the command-line applications (report, verify, train, sweep) share: the usage
error that becomes one line on stderr with exit status 2, the device check, the check
that ``--out`` can be written (before any work), and the markdown table. The library
proper never imports this module."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit status 2."""


def check_device(device: str) -> str:
    """``device`` if torch knows it and it is usable here, else a :class:`UsageError`."""
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise UsageError(f"--device {device!r} is not a device torch knows ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device!r}: CUDA is not available on this machine; use cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r}: only cpu and cuda are supported")
    return device


def markdown_table(frame: Any, floatfmt: str = ".4g") -> str:
    """A pandas frame as a markdown table (``tabulate`` is a dependency); missing values
    (NaN: a setting the method does not read, an error not computed) are empty cells."""
    return frame.astype(object).where(frame.notna(), None).to_markdown(
        index=False, floatfmt=floatfmt, missingval="")


def prepare_out(out: str | os.PathLike) -> Path:
    """Create ``out`` (and its parents) and prove it is writable by writing and removing a
    probe file; a :class:`UsageError` naming the folder and the reason otherwise."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".metagrad-probe-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"probe")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as err:
        raise UsageError(f"--out {str(out)!r} cannot be written: {describe_os_error(err)}") \
            from None
    return out


def describe_os_error(err: OSError) -> str:
    """``strerror`` with the file concerned, e.g. ``No space left on device (run/x.csv)``."""
    what = err.strerror or str(err)
    if err.errno in (errno.EEXIST, errno.ENOTDIR) and err.filename:
        what += " (a file is in the way of the folder)"
    where = err.filename or ""
    return f"{what} ({where})" if where else what
