"""The one wording of a finished run's status in every table: what, if anything, is wrong
with its numbers."""

from __future__ import annotations

import math
from typing import Any


def _bad(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def status(summary: dict[str, Any]) -> str:
    """``"ok"``; or the held-out numbers that are not finite (NaN or infinite MSE after
    adaptation: the evaluation's GD diverged on the trained model), which decide the
    status first; or the numerical findings of training, counted by kind."""
    for split in ("heldout", "validation"):
        evaluation = summary.get(split)
        if not evaluation:
            continue
        bad = [k for k, v in evaluation.get("post_update_mse", {}).items() if _bad(v)]
        if _bad(evaluation.get("pre_update_mse")):
            bad.insert(0, "0")
        if bad:
            # A method adapts with its inner_lr; the baseline with the step size chosen
            # per number of steps.
            lr = evaluation.get("inner_lr")
            if lr is None:
                lr = (evaluation.get("eval_lr_by_steps") or {}).get(bad[-1])
            what = f"eval_lr {lr:g}" if isinstance(lr, (int, float)) else "the step size"
            return (f"{split} MSE not finite after {', '.join(bad)} step(s): the adaptation "
                    f"diverged on the trained model ({what} too large for its curvature?)")
    kinds = summary.get("finding_steps") or {}
    n = summary.get("warning_steps", 0)
    if not n:
        return "ok"
    detail = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    checked = summary.get("checked_steps")
    of = f" of {checked} checked" if checked is not None and checked != summary.get(
        "meta_steps") else ""
    return f"ok, numerical warnings at {n}{of} steps" + (f" ({detail})" if detail else "")


__all__ = ["status"]
