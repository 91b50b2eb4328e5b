"""What ``mg.compile`` says when torch.compile fails."""

from __future__ import annotations

import torch

VERIFIED_TORCH = ("2.8", "2.10", "2.13", "2.14")
"""torch releases on which the compiled path was run against the eager one (tox matrix)."""


def failure(err: Exception, name: str, hvp: str) -> str:
    """What went wrong for method ``name``, for the RuntimeError or the fallback warning."""
    text = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
    if "recompile" in text.lower() or "cache_size_limit" in text:
        return (f"torch.compile recompiled {name}'s meta-gradient for one input signature "
                f"more than torch._dynamo.config.recompile_limit = "
                f"{torch._dynamo.config.recompile_limit} times ({text}). Something the "
                "loss reads changes between calls in a way that needs a new graph each "
                "time (e.g. an int it closes over); give it as a tensor, build the loss "
                "once, or use fallback=True.")
    if hvp == "fwdrev":
        return (f"torch.compile could not trace {name}'s batched meta-gradient with "
                f"forward-over-reverse Hessian-vector products ({text}); torch "
                f"{torch.__version__}'s dynamo does not trace torch.func.jvp through every "
                "operation. Use hvp='revrev' (the same numbers) or the eager method.")
    if not torch.__version__.startswith(VERIFIED_TORCH):
        return (f"torch.compile could not trace {name}'s batched meta-gradient on torch "
                f"{torch.__version__} ({text}); mg.compile is verified on torch "
                f"{', '.join(VERIFIED_TORCH)}. The eager method gives the same numbers.")
    return (f"torch.compile could not trace {name}'s batched meta-gradient ({text}). "
            "A loss must be traceable as one graph: no data-dependent Python control "
            "flow (if on a tensor's value), no .item() or .tolist(), no printing; if the "
            "loss has none of these, the failure is torch.compile's own. The eager "
            "method gives the same numbers (fallback=True runs it for such signatures).")


def cpp_build_failed(err: BaseException | None) -> bool:
    """Whether a C++ build of inductor's (``CppCompileError``) is in ``err``'s chain."""
    while err is not None:
        if type(err).__name__ == "CppCompileError" or "CppCompileError" in str(err)[:200]:
            return True
        err = err.__cause__ or err.__context__
    return False
