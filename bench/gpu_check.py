"""The GPU path checked against the CPU: every method and code path gives the CPU's float64
meta-gradient on CUDA, and the compiled path (CUDA graphs) gives the eager one.

    python -m metagrad_bench.gpu_check --device cuda --out OUT

Part 1 (exactness, float64): each method (and MAML's trajectory and
checkpointed backward modes, the loop batching and both HVP modes) on the
``sinusoid_small`` problem (d = 141) on CUDA and on the CPU; the relative difference
must be ≤ 1e-9 (the Level-1 tolerance: CUDA kernels reorder float64 sums, which moves
the result by ~1e-16 relative). Part 2 (speed, float32): the Finn et al. 2017 sinusoid
workload (25 tasks) with ``mg.compile`` (mode "reduce-overhead", CUDA graphs) against eager,
medians of interleaved calls, with the one-off compile time. Writes ``gpu_check.csv`` and
``gpu_check.md``; exit 1 if any exactness row fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

import metagrad as mg
from metagrad import _provenance as provenance
from metagrad import _pytree as pt
from metagrad._app import markdown_table
from metagrad.problems import DEFAULTS, make_problem
from metagrad.verify.compare import rel_error

EXACT_RTOL = 1e-9


def exactness_cases() -> list[mg.Method]:
    d = DEFAULTS["sinusoid_small"]
    lr, lam = d.inner_lr, d.lam
    base = {"steps": 4, "inner_lr": lr, "diagnose": "off"}
    return [
        mg.MAML(**base), mg.MAML(**base, backward="trajectory"),
        mg.MAML(**base, backward="trajectory", checkpoint=2), mg.MAML(**base, batching="loop"),
        mg.FOMAML(**base), mg.Reptile(**base),
        mg.IMAML(**base, lam=lam, cg_iters=6), mg.IMAML(**base, lam=lam, cg_iters=6, hvp="fwdrev"),
        mg.Neumann(**base, lam=2 * lam, terms=6, step=0.5), mg.Penalty(**base, lam=0.01),
    ]


def _label(method: mg.Method) -> str:
    options = {k: v for k, v in method.config().items()
               if k in ("batching", "hvp", "backward", "checkpoint")
               and v not in ("vmap", "auto", "unrolled", None)}
    return method.name + "".join(f" {k}={v}" for k, v in options.items())


def exactness(device: str) -> list[dict]:
    cpu = make_problem("sinusoid_small", meta_batch=3, dtype=torch.float64)
    gpu = make_problem("sinusoid_small", meta_batch=3, dtype=torch.float64, device=device)
    rows = []
    for method in exactness_cases():
        a = method(cpu.loss, cpu.params, cpu.tasks)
        b = method(gpu.loss, gpu.params, gpu.tasks)
        err = rel_error(pt.flatten(b.grad).cpu(), pt.flatten(a.grad))
        loss_err = rel_error(b.post_update_loss.cpu(), a.post_update_loss)
        rows.append({"part": "exactness float64", "case": _label(method), "device": device,
                     "rel_diff_vs_cpu": err, "loss_rel_diff_vs_cpu": loss_err,
                     "passed": err <= EXACT_RTOL and loss_err <= EXACT_RTOL})
        print(rows[-1], flush=True)
    return rows


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _ms(fn, device: str) -> float:
    """Wall time of one call in ms, the GPU's queue drained before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return 1e3 * (time.perf_counter() - start)


def _speed_row(method: mg.Method, p, device: str, repeats: int) -> dict:
    eager = replace(method, diagnose="off")
    compiled = mg.compile(eager)

    def call_eager():
        return eager(p.loss, p.params, p.tasks)

    def call_compiled():
        return compiled(p.loss, p.params, p.tasks)

    compile_s = 1e-3 * _ms(call_compiled, device)  # the first call compiles
    agree = rel_error(pt.flatten(call_compiled().grad).cpu(), pt.flatten(call_eager().grad).cpu())
    e_times, c_times = [], []
    for _ in range(repeats):  # interleaved, so drifts hit both alike
        e_times.append(_ms(call_eager, device))
        c_times.append(_ms(call_compiled, device))
    e_ms, c_ms = statistics.median(e_times), statistics.median(c_times)
    return {"part": "speed float32", "case": f"{method.name} K={method.steps}", "device": device,
            "eager_ms": e_ms, "compiled_ms": c_ms, "eager_over_compiled": e_ms / c_ms,
            "compile_s": compile_s, "rel_diff_compiled_vs_eager": agree}


def speed(device: str, repeats: int) -> list[dict]:
    p = make_problem("sinusoid", device=device)
    rows = []
    for method in (mg.MAML(steps=1, inner_lr=0.01), mg.MAML(steps=5, inner_lr=0.01),
                   mg.FOMAML(steps=5, inner_lr=0.01),
                   mg.IMAML(steps=5, inner_lr=0.01, lam=1.0, cg_iters=5)):
        rows.append(_speed_row(method, p, device, repeats))
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.gpu_check",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="gpu_check")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = exactness(args.device)
    if not args.no_speed:
        rows += speed(args.device, args.repeats)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "gpu_check.csv", index=False)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    text = (f"# GPU check\n\n{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}\n\n{markdown_table(frame, floatfmt='.3g')}\n")
    (out / "gpu_check.md").write_text(text)
    provenance.write(out, command=provenance.command_line("python -m metagrad_bench.gpu_check"),
                     kind="bench", what="every method on the device against the CPU",
                     mode="eager", device=args.device)
    print(text)
    return 0 if all(r.get("passed", True) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
