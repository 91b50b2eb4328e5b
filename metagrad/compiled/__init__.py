"""Opt-in compiled meta-gradients: ``torch.compile`` of a method's batched computation.

``mg.compile(method)`` returns a :class:`CompiledMethod`, called like the method,
``compiled(loss, params, tasks) -> MetaGradient``, with the eager method's numbers up to
float rounding (kernels are fused and reordered).

* **Signatures** (:mod:`._signature`): one compiled program per call signature
  (parameter and task shapes, dtypes and devices, the loss's code), in a cache of the
  ``cache_size`` most recently used ones. The first call of a signature validates
  everything the eager method validates; later calls check only what can change, the
  values (non-finite task data raise the eager method's ``ValueError``). The numerical
  diagnostics run after the call as in eager mode.
* **Programs** (:mod:`._programs`): the inner loop ``"unrolled"`` (K traced copies of the
  step) or ``"scan"`` (one torch ``scan`` over the steps, whose body is the inner loop
  object's step, traced once; MAML's backward pass is then the reverse Hessian-vector
  sweep of ``backward="trajectory"``). ``loop="auto"`` scans from :data:`SCAN_FROM` steps
  on, where the method's inner loop can be scanned (:attr:`metagrad.Method.scannable`).
* **Caches across processes**: inductor's FX-graph and AOTAutograd caches in
  ``TORCHINDUCTOR_CACHE_DIR`` (:func:`cache_dir`).
* **Fallback** (:mod:`._messages`): ``fallback=True`` runs the eager method, with one
  :class:`CompileFallbackWarning`, for a signature that torch.compile cannot trace;
  without it such a call raises ``RuntimeError`` saying what failed.

On CPU the generated C++ is built with inductor's C++ wrapper (one compiler run per
graph); on CUDA the default mode is ``"reduce-overhead"`` (CUDA graphs). The how-to page
"The compiled path" gives the measured compile and call times.
"""

from ._messages import VERIFIED_TORCH
from ._method import (
    DEFAULT_CACHE_SIZE,
    LOOPS,
    SCAN_FROM,
    CompiledMethod,
    CompileFallbackWarning,
    compile,
)
from ._signature import signature


def cache_dir() -> str:
    """The folder where inductor keeps compiled graphs across processes
    (``TORCHINDUCTOR_CACHE_DIR``, default ``<tmp>/torchinductor_<user>``)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir

    return inductor_cache_dir()


__all__ = ["DEFAULT_CACHE_SIZE", "LOOPS", "SCAN_FROM", "VERIFIED_TORCH", "CompileFallbackWarning",
           "CompiledMethod", "cache_dir", "compile", "signature"]
