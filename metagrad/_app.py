"""What the command-line applications (report, verify, train, sweep) share: the usage
error that becomes one line on stderr with exit status 2, the device check, and the
markdown table. The library proper never imports this module."""

from __future__ import annotations

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
    """A pandas frame as a markdown table (``tabulate`` is a dependency)."""
    return frame.to_markdown(index=False, floatfmt=floatfmt)
