"""Where a result came from: the ``provenance.json`` that every tool producing results
(``metagrad train``, ``metagrad sweep``, the benchmark modules) writes into its output
folder.

It records the commit of the source tree the package was imported from (and whether that
tree had uncommitted changes outside ``bench/results``), the command as typed, the
environment variables that change the numbers or the timings, the package versions, the
machine (CPU model, torch's CPU capability, threads; the GPU where one was used), whether
the computation ran eager or compiled, and the date. A field that cannot be known is
``null`` with a note saying why, never a guess.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

FILE = "provenance.json"
ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
               "ATEN_CPU_CAPABILITY", "MKL_CBWR")
"""Environment variables recorded when set: they change the numbers or the timings."""
PACKAGES = ("torch", "numpy", "pandas", "scipy", "jax", "jaxlib")
SOURCE = Path(__file__).resolve().parents[1]
"""The source tree of the imported package (a git checkout in development)."""


def git_state(root: Path = SOURCE) -> dict[str, Any]:
    """``commit`` (the checked-out commit of ``root``), ``dirty`` and ``changed`` (tracked
    files with uncommitted changes, outside ``bench/results``, where results are written);
    ``commit`` is None with a ``commit_note`` when ``root`` is not a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout.rstrip("\n")

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      ":(exclude)bench/results").splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None,
                "commit_note": f"{root} is not a git checkout (an installed package)"}
    return {"commit": commit, "dirty": bool(changed),
            "changed": [line[3:] for line in changed][:20]}


def packages() -> dict[str, str]:
    """Python, metagrad and the numerical packages that are installed, with versions."""
    out = {"python": platform.python_version()}
    for name in ("metagrad", *PACKAGES):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch
        out["torch"] = torch.__version__
        if torch.version.cuda:
            out["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict[str, Any]:
    """The CPU (model, logical cores, torch's CPU capability: the vector instructions its
    kernels use, which decide float rounding) and, for a CUDA ``device``, the GPU's name."""
    out: dict[str, Any] = {"platform": platform.platform(), "cpu": _cpu_model(),
                           "cpu_count": os.cpu_count()}
    try:
        import torch
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if str(device).startswith("cuda") and torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    except (ImportError, RuntimeError, AttributeError):
        pass
    if hasattr(os, "getloadavg"):
        out["load_avg_1min"] = round(os.getloadavg()[0], 2)
    return out


def command_line(prog: str, argv: list[str] | None = None) -> str:
    """``prog`` followed by the arguments this process was given, as typed in a shell,
    preceded by the recorded environment variables that are set (e.g.
    ``OMP_NUM_THREADS=1 metagrad train --preset study``)."""
    args = sys.argv[1:] if argv is None else argv
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ENVIRONMENT if k in os.environ]
    return " ".join([*env, prog, *map(shlex.quote, args)])


def collect(*, command: str, mode: str, kind: str, what: str = "", device: str = "cpu",
            extra: dict[str, Any] | None = None, git: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """The provenance record (see the module docstring). ``mode``: how the computation ran
    (``"eager"``, ``"compiled"``, or which parts were which); ``kind``: ``"train"``,
    ``"sweep"`` or ``"bench"``; ``git``: :func:`git_state` taken when the work started (a
    long run's tree may have moved on by its end, which is then recorded as
    ``commit_at_end``); None: now."""
    state = git_state()
    if git is not None and (git.get("commit"), git.get("dirty")) != (state.get("commit"),
                                                                      state.get("dirty")):
        state = {**git, "commit_at_end": state.get("commit"), "dirty_at_end": state.get("dirty")}
    return {"what": what, "kind": kind, **state, "command": command,
            "environment": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
            "mode": mode, "packages": packages(), "machine": machine(device),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "source": "written by the command that produced the results",
            **(extra or {})}


def write(folder: str | os.PathLike, *, file: str = FILE, **kwargs: Any) -> Path:
    """Write :func:`collect`'s record to ``folder/provenance.json`` (strict JSON; ``file``:
    another name, for a second tool writing into the same folder)."""
    path = Path(folder) / file
    path.write_text(json.dumps(collect(**kwargs), indent=2, allow_nan=False) + "\n")
    return path


def read(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The record of ``folder``, or None where there is none."""
    path = Path(folder) / FILE
    return json.loads(path.read_text()) if path.is_file() else None


__all__ = ["ENVIRONMENT", "FILE", "collect", "command_line", "git_state", "machine",
           "packages", "read", "write"]
