"""``python -m metagrad_bench.gpu_speed --device cuda --out OUT``: metagrad against JAX on a
GPU at matched precision, with CUDA graphs and launch counts, side by side in one run.

Workload: the sinusoid meta-gradients of Finn et al. 2017 (MLP 1-40-40-1 ReLU, 25 tasks,
10 + 10 shots, inner_lr 0.01): MAML K = 1, 5, 10, FOMAML K = 5, iMAML K = 5 (λ = 1, 5 CG
iterations), and MAML K = 5 on a 1-512-512-1 net, where the matrix products' precision
matters for speed. Implementations, each timed on the same inputs, the order rotating
from round to round (medians; CUDA synchronised around every call):

* ``metagrad eager``: the method as it is called;
* ``mg.compile graphs``: ``mg.compile(method)``, on CUDA ``mode="reduce-overhead"`` (CUDA
  graphs: one graph replay per call instead of a launch per kernel);
* ``mg.compile``: ``mg.compile(method, mode="default")`` (inductor's kernels, launched one
  by one), to show what the graphs save;

(the compiled ones for the ``--compile-cases`` only, MAML K = 5 by default: each compile
takes tens of seconds)
* ``JAX``: ``jax.jit(jax.vmap(...))`` written in plain JAX (``metagrad_bench.peers.jax_``).

Precision, the two compared at the same setting (``--precisions``):

* ``full``: float32 matrix products in full float32: torch with TF32 off
  (``torch.backends.cuda.matmul.allow_tf32 = False``, cuDNN too), JAX with
  ``jax_default_matmul_precision="highest"`` (JAX's GPU default is a reduced precision);
* ``tf32``: both with TF32 products (torch ``allow_tf32 = True``, JAX
  ``"tensorfloat32"``).

Columns: ms per call, × JAX (at the same precision), the first call's seconds (compile),
launches per call (CUDA kernel launches and graph launches counted by the profiler;
on a CPU the ATen operations dispatched instead), and ‖g − g64‖/‖g64‖ against metagrad's
float64 meta-gradient on the same device. On a CPU the TF32 rows and the CUDA-graph
column are skipped (there is no TF32 and no CUDA graph there), so the script can be tried
anywhere. Writes ``gpu_speed.csv``, ``gpu_speed.md``, ``gpu_speed.png`` (time) and
``gpu_launches.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

CASES = [("maml K=1", "maml", 1, 40), ("maml K=5", "maml", 5, 40),
         ("maml K=10", "maml", 10, 40), ("fomaml K=5", "fomaml", 5, 40),
         ("imaml K=5 λ=1 cg=5", "imaml", 5, 40), ("maml K=5, 1-512-512-1", "maml", 5, 512)]
PRECISIONS = ("full", "tf32")
JAX_PRECISION = {"full": "highest", "tf32": "tensorfloat32"}


@dataclass
class Impl:
    label: str
    call: Callable[[], object]
    grads: Callable[[], list]
    first_s: float
    launches: float = float("nan")
    times: list[float] = field(default_factory=list)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def torch_precision(precision: str):
    """TF32 on or off for torch's float32 products (cuBLAS and cuDNN), restored after."""
    import torch

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = (
        precision == "tf32")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _problem(hidden: int, device: str, dtype):
    import torch.nn.functional as F

    import metagrad as mg
    from metagrad.models import mlp

    model = mlp((1, hidden, hidden, 1), seed=0, dtype=dtype, device=device)
    return SimpleNamespace(module=model, loss=mg.module_loss(model, F.mse_loss),
                           params=mg.params_of(model),
                           tasks=mg.Sinusoid().sample(25, seed=0, dtype=dtype, device=device))


def _method(family: str, steps: int):
    import metagrad as mg

    if family == "maml":
        return mg.MAML(steps=steps, inner_lr=0.01, diagnose="off")
    if family == "fomaml":
        return mg.FOMAML(steps=steps, inner_lr=0.01, diagnose="off")
    return mg.IMAML(steps=steps, inner_lr=0.01, lam=1.0, cg_iters=5, diagnose="off")


def _launches(fn: Callable[[], object], device: str) -> float:
    """Kernel and graph launches of one call (CUDA), or ATen operations dispatched (CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    names = [e.name for e in prof.events()]
    if device.startswith("cuda"):
        return float(sum(n.startswith(("cudaLaunchKernel", "cuLaunchKernel",
                                       "cudaGraphLaunch", "cuGraphLaunch")) for n in names))
    return float(sum(n.startswith("aten::") for n in names))


def _torch_impl(label: str, fn, p, device: str, precision: str) -> Impl:
    last: list = []

    def call():
        with torch_precision(precision):
            last[:] = [fn(p.loss, p.params, p.tasks)]
        _sync(device)

    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    call()
    impl = Impl(label, call, lambda: [g.detach() for g in last[0].grad.values()], first)
    impl.launches = _launches(call, device)
    return impl


def _jax_impl(p, family: str, steps: int, precision: str) -> Impl | str:
    from .peers import jax_

    reason = jax_.available()
    if reason is not None:
        return reason
    import jax

    case = SimpleNamespace(family=family, steps=steps, inner_lr=0.01, lam=1.0, cg_iters=5)
    with jax.default_matmul_precision(JAX_PRECISION[precision]):
        run = jax_.build(p, case)

    def call():
        with jax.default_matmul_precision(JAX_PRECISION[precision]):
            run.call()

    return Impl("JAX", call, run.grads, run.compile_seconds)


def _rel(a: list, b: list) -> float:
    import torch

    x = torch.cat([t.reshape(-1).double().cpu() for t in a])
    y = torch.cat([t.reshape(-1).double().cpu() for t in b])
    return float((x - y).norm() / y.norm())


def run(args) -> list[dict]:
    import torch

    import metagrad as mg

    device = args.device
    cuda = device.startswith("cuda")
    precisions = [q for q in args.precisions if cuda or q == "full"]
    rows = []
    for name, family, steps, hidden in CASES:
        if args.cases and name not in args.cases:
            continue
        p = _problem(hidden, device, torch.float32)
        p64 = _problem(hidden, device, torch.float64)
        method = _method(family, steps)
        ref = [g for g in method(p64.loss, p64.params, p64.tasks).grad.values()]
        for precision in precisions:
            impls: list[Impl] = [_torch_impl("metagrad eager", method, p, device, precision)]
            if name in args.compile_cases:
                if cuda:
                    impls.append(_torch_impl("mg.compile graphs", mg.compile(method), p,
                                             device, precision))
                impls.append(_torch_impl("mg.compile", mg.compile(method, mode="default"), p,
                                         device, precision))
            jx = _jax_impl(p, family, steps, precision) if not args.no_jax else "--no-jax"
            if isinstance(jx, Impl):
                impls.append(jx)
            for round_ in range(args.repeats):
                shift = round_ % len(impls)
                for impl in impls[shift:] + impls[:shift]:
                    _sync(device)
                    start = time.perf_counter()
                    impl.call()
                    _sync(device)
                    impl.times.append(time.perf_counter() - start)
            jax_ms = (1e3 * statistics.median(jx.times) if isinstance(jx, Impl) else None)
            for impl in impls:
                ms = 1e3 * statistics.median(impl.times)
                rows.append({"case": name, "precision": precision, "implementation": impl.label,
                             "ms": ms, "x_jax": ms / jax_ms if jax_ms else float("nan"),
                             "first_s": impl.first_s, "launches": impl.launches,
                             "rel_err_vs_float64": _rel(impl.grads(), ref),
                             "device": device, "repeats": args.repeats})
                print({k: (f"{v:.4g}" if isinstance(v, float) else v)
                       for k, v in rows[-1].items()}, flush=True)
            if not isinstance(jx, Impl):
                print(f"[gpu_speed] {name} {precision}: JAX skipped ({jx})", flush=True)
    return rows


def figure(frame, out: Path) -> None:
    from metagrad import plotting

    plotting.setup()
    precisions = list(dict.fromkeys(frame["precision"]))
    fig, axes = plotting.plt.subplots(1, len(precisions), squeeze=False,
                                      figsize=(7.5 * len(precisions), 4.8))
    for ax, precision in zip(axes[0], precisions):
        part = frame[frame["precision"] == precision]
        plotting.sns.barplot(part, x="case", y="ms", hue="implementation", ax=ax)
        ax.set_yscale("log")
        ax.set_ylabel("ms per meta-gradient (median)")
        ax.set_xlabel("")
        ax.set_title(f"float32 products: {precision}")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"metagrad vs JAX on {frame['device_name'].iloc[0]}")
    plotting.save(fig, out / "gpu_speed.png")
    counted = frame[frame["launches"].notna() & (frame["precision"] == precisions[0])]
    if not counted.empty:
        fig, ax = plotting.plt.subplots(figsize=(8, 4.8))
        plotting.sns.barplot(counted, x="case", y="launches", hue="implementation", ax=ax)
        ax.set_yscale("log")
        cuda = str(counted["device"].iloc[0]).startswith("cuda")
        ax.set_ylabel("kernel + graph launches per call" if cuda
                      else "ATen operations per call")
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=30)
        plotting.save(fig, out / "gpu_launches.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.gpu_speed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="gpu_speed")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--cases", nargs="*", default=None, choices=[c[0] for c in CASES])
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--compile-cases", nargs="*", default=["maml K=5"],
                    choices=[c[0] for c in CASES],
                    help="cases timed with mg.compile too (each compile takes tens of "
                         "seconds; default: MAML K=5)")
    ap.add_argument("--no-jax", action="store_true", help="skip JAX")
    args = ap.parse_args(argv)
    if args.repeats < 3:
        ap.error(f"--repeats must be at least 3, got {args.repeats}")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # mg.compile's first calls are compiles: a folder of their own, not a warm user cache
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="gpu_speed_"))
    import pandas as pd
    import torch

    from metagrad._app import markdown_table

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_speed: CUDA is not available here", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    frame = pd.DataFrame(rows)
    name = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
            else f"CPU ({platform.machine()})")
    frame["device_name"] = name
    frame["torch"] = torch.__version__
    frame["cuda"] = torch.version.cuda
    frame.to_csv(out / "gpu_speed.csv", index=False)
    if not frame.empty:
        figure(frame, out)
    try:
        import jax

        jax_version = jax.__version__
    except ImportError:
        jax_version = "not installed"
    text = (f"# metagrad vs JAX at matched precision\n\n{name}, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, jax {jax_version}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}; medians of {args.repeats} interleaved "
            "calls. `python -m metagrad_bench.gpu_speed --help` says what each column is.\n\n"
            + (markdown_table(frame.drop(columns=["device", "device_name", "torch", "cuda",
                                                  "repeats"]), floatfmt=".3g")
               if not frame.empty else "(no rows)") + "\n\nCommand: `python -m "
            "metagrad_bench.gpu_speed " + " ".join(argv if argv is not None else sys.argv[1:])
            + "`\n")
    (out / "gpu_speed.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
