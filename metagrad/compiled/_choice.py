"""Eager or compiled, from the number of calls expected: ``mg.compile(method, calls=N)``.

Compiling pays when the time it saves over the remaining calls exceeds the time it takes.
For each input signature the compiled method

1. runs the first two calls eagerly (they are needed anyway: the first validates the
   inputs) and times the second, e (the first carries one-off costs);
2. estimates the compile time C and the compiled call's time c:

   * a signature compiled before with the same cache folder (a later run: torch's
     on-disk caches hold its graphs) has its measured compile and call times in
     ``<cache folder>/metagrad/costs.json``: c is the measured ratio of compiled to eager
     time applied to e, and C the last warm compile, or the cold one × the form's
     :data:`WARM_FRACTION` after a single compile;
   * otherwise C is :func:`cold_estimate` (a cold compile grows with the size of the
     unrolled graph, and the first compile in a cache folder also builds inductor's
     precompiled header) and c = e / :data:`SPEEDUP`;

3. compiles if (N − n)·(e − c) > C, n the calls made so far; else keeps running eagerly,
   and once the calls go beyond N (the estimate was short), compiles as soon as the eager
   time spent beyond N reaches C: the rent-or-buy rule, which never takes more than twice
   the time of the better choice made in hindsight.

Each compile, and the compiled call time (the median of the first calls after it), is
added to the file so that later runs decide on measured numbers.
"""

from __future__ import annotations

import json
import os
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PER_GRADIENT_S = 1.6
"""Cold compile seconds per gradient-equivalent of an unrolled graph (tracing, code
generation, the C++ build), and :data:`BASE_S` for the rest: measured for MAML K = 1, 5,
10 on the sinusoid MLP on one core of a 2-core x86_64 CPU (10, 28 and 57 s;
``python -m metagrad_bench.compile_time``)."""
BASE_S = 4.0
FLAT_S = 22.0
"""Cold compile seconds of the scanned and stepwise forms, whose graphs do not grow with K
(21-23 s there)."""
FIRST_COMPILE_S = 6.0
"""Added when nothing was compiled with the cache folder yet: inductor's precompiled
header and its first C++ builds."""
WARM_FRACTION = {"unrolled": 0.35, "stepwise": 0.4, "scan": 0.65}
"""A compile with warm caches over the cold one before it (measured 0.15-0.35 unrolled,
0.3-0.35 stepwise, 0.6 scan, whose graphs torch does not keep: only tracing is saved by
the unrolled and stepwise forms' caches, code generation by neither for scan)."""
DEVICE_FACTOR = {"cpu": 1.0, "cuda": 2.0}
"""CUDA compiles add kernel tuning and CUDA-graph capture."""
SPEEDUP = 5.0
"""Eager call time over compiled call time assumed until one has been measured (6-8× for
the sinusoid MAML on one CPU core)."""
EAGER_CALLS = 2
"""Calls run eagerly before deciding (the second one is timed)."""
TIMED_CALLS = 5
"""Compiled calls timed after a compile, for the record."""


def cold_estimate(gradient_equivalents: float, form: str, device: str) -> float:
    """The compile time assumed for a signature never compiled with the cache folder."""
    base = FLAT_S if form in ("scan", "stepwise") else BASE_S + PER_GRADIENT_S * max(
        gradient_equivalents, 1.0)
    return base * DEVICE_FACTOR.get(device, max(DEVICE_FACTOR.values()))


@dataclass
class Plan:
    """The decision for one signature of a compiled method with ``calls`` expected;
    ``cold_s``: :func:`cold_estimate` for it."""

    calls: int
    digest: str
    device: str
    cold_s: float
    done: int = 0
    eager_s: float | None = None
    beyond_s: float = 0.0
    """Eager time spent after the expected calls ran out."""
    compile_at: int | None = None
    """The call that compiles (None: not decided yet or not now)."""
    reason: str = "undecided"
    timed: list[float] = field(default_factory=list)

    def eager_call(self, seconds: float, book: CostBook) -> bool:
        """Count an eager call that took ``seconds``; True when the next call compiles."""
        self.done += 1
        if self.done < EAGER_CALLS:
            return False
        if self.eager_s is None:
            self.eager_s = seconds
            return self._decide(book)
        if self.done > self.calls:
            self.beyond_s += seconds
            cost = book.compile_estimate(self.digest, self.device, self.cold_s)
            if self.beyond_s >= cost:
                self.reason = (f"compiled after {self.done} calls: the {self.calls} expected "
                               f"ran out and eager calls since took {self.beyond_s:.1f} s, "
                               f"the estimated compile time")
                return True
        return False

    def _decide(self, book: CostBook) -> bool:
        assert self.eager_s is not None
        cost = book.compile_estimate(self.digest, self.device, self.cold_s)
        call = book.call_estimate(self.digest, self.eager_s)
        remaining = self.calls - self.done
        saved = remaining * (self.eager_s - call)
        known = "measured" if book.known(self.digest) else "estimated"
        compile_now = saved > cost
        self.reason = (f"{'compiled' if compile_now else 'eager'}: {remaining} calls left × "
                       f"({1e3 * self.eager_s:.3g} ms eager − {1e3 * call:.3g} ms compiled) = "
                       f"{saved:.1f} s {'>' if compile_now else '≤'} {cost:.1f} s "
                       f"to compile ({known})")
        return compile_now


class CostBook:
    """Measured compile and call times per signature digest, kept in the inductor cache
    folder so that they describe the caches they come from."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.path = Path(folder) / "metagrad" / "costs.json" if folder is not None else None
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
                if isinstance(loaded, dict):
                    self.entries = loaded
            except (OSError, ValueError):
                self.entries = {}  # unreadable: decide on the defaults

    def known(self, digest: str) -> bool:
        return "compile_s" in self.entries.get(digest, {})

    def compile_estimate(self, digest: str, device: str, cold_s: float) -> float:
        """How long compiling ``digest`` will take: the last measured warm compile; after a
        single (cold) one, that time × :data:`WARM_FRACTION` of its form (torch's caches
        now hold the graphs); else ``cold_s``, plus :data:`FIRST_COMPILE_S` when nothing
        was compiled with this folder yet."""
        entry = self.entries.get(digest, {})
        times = entry.get("compile_s", [])
        if len(times) > 1:
            return float(times[-1])
        if times:
            return float(times[0]) * WARM_FRACTION.get(entry.get("form", ""), 1.0)
        if any(e.get("compile_s") for e in self.entries.values()):
            return cold_s
        return cold_s + FIRST_COMPILE_S

    def call_estimate(self, digest: str, eager_s: float) -> float:
        entry = self.entries.get(digest, {})
        if "call_s" in entry and "eager_s" in entry and entry["eager_s"] > 0:
            # the measured ratio, applied to this process's eager time
            return eager_s * float(entry["call_s"]) / float(entry["eager_s"])
        return eager_s / SPEEDUP

    def add_compile(self, digest: str, device: str, seconds: float, form: str = "") -> None:
        entry = self.entries.setdefault(digest, {"device": device, "form": form})
        entry.setdefault("compile_s", []).append(round(seconds, 3))
        del entry["compile_s"][1:-4]  # the first (cold) one and the last few
        self._save()

    def add_calls(self, digest: str, compiled_s: float, eager_s: float | None) -> None:
        entry = self.entries.setdefault(digest, {})
        entry["call_s"] = compiled_s
        if eager_s is not None:
            entry["eager_s"] = eager_s
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Merged with what other processes wrote meanwhile, written atomically.
            merged = CostBook(self.path.parent.parent).entries
            merged.update(self.entries)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(merged, indent=0, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only cache folder: decide on the defaults next time


def digest(key: tuple, method: Any, form: str, backend: Any, mode: str | None) -> str:
    """A name for a signature that is the same in every process: the method's settings, the
    compiled form, the parameter and task shapes, the loss's code, torch's version."""
    import hashlib

    import torch

    def plain(value: Any) -> Any:
        if isinstance(value, types.CodeType):
            return (value.co_filename, value.co_firstlineno, value.co_name,
                    hashlib.sha256(value.co_code).hexdigest()[:16])
        if isinstance(value, type):
            return f"{value.__module__}.{value.__qualname__}"
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, (torch.Size, torch.dtype, torch.device)):
            return str(value)
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        return type(value).__qualname__

    text = json.dumps([type(method).__qualname__, _fields(method), form, str(backend), mode,
                       plain(key), torch.__version__], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _fields(method: Any) -> list:
    """The method's fields as text, tensors by shape and dtype (learned rates change value
    from call to call, the compiled program does not)."""
    import dataclasses

    import torch

    def text(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return ["tensor", list(value.shape), str(value.dtype)]
        if isinstance(value, dict) or (hasattr(value, "items") and hasattr(value, "keys")):
            return {str(k): text(v) for k, v in value.items()}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return [type(value).__qualname__,
                    [text(getattr(value, f.name)) for f in dataclasses.fields(value)]]
        return repr(value)

    return [text(getattr(method, f.name)) for f in dataclasses.fields(method)]


def cache_folder() -> str:
    """``TORCHINDUCTOR_CACHE_DIR``, or inductor's default ``<tmp>/torchinductor_<user>``,
    found without importing inductor (which imports dynamo: seconds)."""
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if folder is None:
        import getpass
        import re
        import tempfile

        try:
            user = getpass.getuser()
        except (KeyError, ModuleNotFoundError, OSError):
            user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
        folder = os.path.join(tempfile.gettempdir(),
                              "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
    return os.path.abspath(folder)


def timer() -> float:
    return time.perf_counter()
