"""Measurements shared by the sweep, asv and pytest-benchmark: wall time, peak memory
and the cost-model prediction (``Method.gradient_equivalents``).

* Time: :func:`metagrad.timing.time_call` (warm-up, CUDA synchronised, median/IQR).
* Peak memory, as the increase over what was allocated before the call:
  - CUDA: ``torch.cuda.max_memory_allocated`` (the caching allocator's exact count).
  - CPU: there is no allocator counter for CPU tensors, and ``tracemalloc`` does not
    see torch's allocations, so a thread samples the process's resident set size
    (``/proc/self/statm``) every ~0.2 ms during the call and we report the peak
    increase over the RSS just before it. glibc is told (``mallopt``) to serve every
    block ≥ 64 KiB by ``mmap`` and to trim the heap eagerly, so freed tensors leave
    the RSS and a later, smaller peak is not hidden by an earlier one. It is honest
    for the large, short-lived tensors that dominate peaks (activations, inner-loop
    graphs). ``malloc_trim(0)`` before each measurement hands free heap pages back, so
    an earlier, bigger call does not hide a later call's peak. A peak shorter than the
    sampling period can be missed (a lower bound).
* Predicted time = ``method.gradient_equivalents()`` × the measured time of one
  batched gradient ``vmap(grad(loss))`` over the tasks' train batches.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable

import torch
from torch.func import grad, vmap

from metagrad import timing
from metagrad.timing import Timing, synchronize

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MALLOC_TUNED = False


def _tune_malloc() -> None:
    """Make freed memory leave the RSS (glibc only; a no-op elsewhere): large blocks by
    mmap, and free heap pages given back by ``malloc_trim(0)`` before every measurement
    (without it, heap pages freed by an earlier, bigger call are reused silently and a
    later call's peak reads as ~0)."""
    global _MALLOC_TUNED, _LIBC
    if not _MALLOC_TUNED:
        _MALLOC_TUNED = True
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3
            _LIBC.mallopt(m_mmap_threshold, 64 * 1024)  # also ends the dynamic threshold
            _LIBC.mallopt(m_trim_threshold, 128 * 1024)
        except (OSError, AttributeError):
            _LIBC = None
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


_LIBC = None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class _RssSampler(threading.Thread):
    def __init__(self, period_s: float = 2e-4):
        super().__init__(daemon=True)
        self.period_s = period_s
        self.peak = _rss_bytes()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.period_s)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, _rss_bytes())


def peak_memory_mb(fn: Callable[[], object], device: str | torch.device = "cpu") -> float:
    """Peak memory of ``fn()`` above what was in use just before it, in MiB (see module doc)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        fn()
        synchronize(dev)
        return (torch.cuda.max_memory_allocated(dev) - before) / 2**20
    if not os.path.exists("/proc/self/statm"):
        return float("nan")  # no honest CPU measurement on this OS
    _tune_malloc()
    sampler = _RssSampler()
    sampler.start()
    time.sleep(1e-3)  # the thread's own stack pages are not the call's memory
    before = sampler.peak = _rss_bytes()
    try:
        result = fn()
        del result
    finally:
        peak = sampler.stop()
    return max(peak - before, 0) / 2**20


def batched_gradient(loss, params, tasks) -> Callable[[], object]:
    """One gradient-equivalent for the meta-batch: ``vmap(grad(loss))`` on the train batches."""
    g = vmap(grad(loss), in_dims=(None, 0))
    detached = {k: v.detach() for k, v in params.items()}
    return lambda: g(detached, tasks.train)


def gradient_time(loss, params, tasks, device, *, repeats: int = 5) -> Timing:
    """Measured time of one batched gradient, the unit of the cost model."""
    fn = batched_gradient(loss, params, tasks)
    return timing.time_call(fn, device, warmup=2, repeats=repeats)


def device_name(device: str | torch.device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"
