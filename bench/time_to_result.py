"""``python -m metagrad_bench.time_to_result``: the time from ``python train.py`` to a trained
model, metagrad against plain JAX, each run in a new process.

The experiment is the sinusoid meta-training of Finn et al. 2017 ("Model-Agnostic
Meta-Learning for Fast Adaptation of Deep Networks", §5.1): MLP 1-40-40-1 ReLU, meta-batch
25, 10 + 10 shots, ``inner_lr`` 0.01, Adam (Kingma & Ba 2015) with learning rate 1e-3 on
the mean meta-gradient, ``--steps`` meta-steps (2000 by default), the pre- and post-update
losses read back every step (as a training log does). Cases: MAML at K = 1, 5 and 10,
FOMAML at K = 5 and iMAML (5 proximal steps, λ = 1, 5 CG iterations; Rajeswaran et al.
2019).

Every run is a new Python process pinned to one CPU (``taskset``; one torch thread, XLA's
one-thread flags), started by this command, which rotates the order of the variants from
round to round so that load drifts hit all alike. The process's clock counts the imports
(torch and metagrad, or jax), building the model and the method, the compilation and every
meta-step; the tasks of all steps are sampled beforehand by this command (seeded, the same
for every variant) and loaded with the clock stopped. Variants:

* ``jax``: ``jax.jit`` of one meta-step written in plain JAX here (the meta-gradient of
  ``metagrad_bench.peers.jax_`` with the losses, and a hand-written Adam, the update of
  ``torch.optim.Adam``), fed the step's numpy arrays. JAX keeps no compiled code across
  processes unless configured to, so every JAX run is a cold one.
* ``eager``: ``mg.MAML(...)`` (or FOMAML, IMAML) called as it is, ``mg.set_grads`` and
  ``torch.optim.Adam``.
* ``compiled``: the same with ``mg.compile(method)``; ``unrolled``, ``stepwise``,
  ``scan``: with ``mg.compile(method, loop=...)``.
* ``default``: ``mg.compile(method, calls=steps)``, what the documentation recommends for
  a training loop: it chooses between the eager method and the compiled one from the
  number of calls it is told to expect (see ``docs/howto/compiled.md``).

``cold``/``warm``: the process's ``TORCHINDUCTOR_CACHE_DIR`` is an empty folder (a user's
first run) or the folder left by an earlier run that compiled the same case (one untimed
``compiled`` run first, with the form of the variant: a later run).

``--first`` measures something smaller: a new process to its first meta-gradient,
``mg.compile`` (cold and warm) against ``jax.jit`` of the same job (MAML K = 1, 5, 10),
imports included.

Writes ``time_to_result.csv`` (one row per process) and ``time_to_result.md`` (medians
over the rounds and the ratio to JAX's median) with the machine, load average, torch and
JAX versions, commit and command; ``--first`` writes ``first_gradient.csv`` and ``.md``.
"""

from __future__ import annotations

import time

_START = time.perf_counter()  # a child's clock starts here, before any import

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

CASES = {
    "maml K=5": ("maml", 5),
    "maml K=1": ("maml", 1),
    "maml K=10": ("maml", 10),
    "fomaml K=5": ("fomaml", 5),
    "imaml K=5 λ=1 cg=5": ("imaml", 5),
}
FIRST_CASES = ("maml K=1", "maml K=5", "maml K=10")
RUNS = ("jax", "eager", "compiled cold", "compiled warm", "default cold", "default warm")
"""The variants as run: a variant and, for those that compile, the state of the cache."""
EXTRA_RUNS = ("unrolled cold", "unrolled warm", "stepwise cold", "stepwise warm",
              "scan cold", "scan warm")
"""``mg.compile(method, loop=...)`` with each inner-loop form, on request (``--runs``)."""
FIRST_RUNS = ("jax", "compiled cold", "compiled warm")
SIZES = (1, 40, 40, 1)
META_BATCH, SHOTS, INNER_LR, LAM, CG_ITERS, OUTER_LR = 25, 10, 0.01, 1.0, 5, 1e-3
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false"


# ------------------------------------------------------------------------------ the data
def write_data(path: Path, steps: int, seed: int) -> None:
    """Every meta-step's tasks and the initial parameters, as numpy arrays in one file."""
    import numpy as np
    import torch

    import metagrad as mg
    from metagrad.models import mlp

    family = mg.Sinusoid(shots=SHOTS, query=SHOTS)
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, list] = {"xt": [], "yt": [], "xv": [], "yv": []}
    for _ in range(steps):
        tasks = family.sample(META_BATCH, generator=gen)
        for name, t in zip(parts, (*tasks.train, *tasks.val)):
            parts[name].append(t.numpy())
    arrays = {k: np.stack(v) for k, v in parts.items()}
    for k, v in mlp(SIZES, seed=seed).named_parameters():
        arrays["param:" + k] = v.detach().numpy()
    np.savez(path, **arrays)


def _load(path: str):
    import numpy as np

    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param:")}
    return [arrays[k] for k in ("xt", "yt", "xv", "yv")], params


# ------------------------------------------------------------------------- the children
def _torch_method(family: str, steps: int):
    import metagrad as mg

    if family == "maml":
        return mg.MAML(steps=steps, inner_lr=INNER_LR)
    if family == "fomaml":
        return mg.FOMAML(steps=steps, inner_lr=INNER_LR)
    return mg.IMAML(steps=steps, inner_lr=INNER_LR, lam=LAM, cg_iters=CG_ITERS)


def _torch_model(init: dict):
    """The sinusoid net with the initial parameters ``init`` (numpy arrays by name) and
    its MSE loss through ``mg.module_loss`` (called after the timed imports)."""
    import torch
    import torch.nn.functional as F

    import metagrad as mg
    from metagrad.models import mlp

    model = mlp(SIZES, seed=None)
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(torch.from_numpy(init[k]))
    return model, mg.module_loss(model, F.mse_loss)


def _child_torch(args) -> dict:
    import torch

    import metagrad as mg
    import metagrad.models  # noqa: F401  (imported inside the timed window, as before)

    imported = time.perf_counter() - _START
    torch.set_num_threads(1)
    paused = time.perf_counter()
    data, init = _load(args.data)
    xt, yt, xv, yv = (torch.from_numpy(a) for a in data)
    resumed = time.perf_counter()
    family, steps = CASES[args.case]
    model, loss = _torch_model(init)
    method = _torch_method(family, steps)
    if args.variant == "compiled":
        method = mg.compile(method)
    elif args.variant in ("unrolled", "stepwise", "scan"):
        method = mg.compile(method, loop=args.variant)
    elif args.variant == "default":
        method = mg.compile(method, calls=args.steps)
    opt = torch.optim.Adam(model.parameters(), lr=OUTER_LR)
    log, first = [], 0.0
    for i in range(args.steps):
        tasks = mg.Task(train=(xt[i], yt[i]), val=(xv[i], yv[i]))
        out = method(loss, mg.params_of(model), tasks)
        mg.set_grads(model, out.grad)
        opt.step()
        log.append((float(out.pre_update_loss), float(out.post_update_loss)))
        if i == 0:
            first = time.perf_counter() - resumed
    total = time.perf_counter() - _START - (resumed - paused)
    final = [p.detach().reshape(-1) for p in model.parameters()]
    return {"import_s": imported, "first_s": first, "total_s": total,
            "compile_s": sum(getattr(method, "compile_seconds", {}).values()),
            "final_post_loss": statistics.fmean(p for _, p in log[-100:]),
            "param_norm": float(torch.cat(final).norm()),
            "path": _path(method, args.variant)}


def _path(method, variant: str) -> str:
    """What ran: the variant, or for ``default`` what it chose (eager or compiled)."""
    decisions = list(getattr(method, "decisions", {}).values())
    if variant != "default" or not decisions:
        return variant
    return decisions[-1].split(":", 1)[0].split(" after", 1)[0]


def _jax_step(family: str, steps: int):
    """One meta-step in plain JAX: the mean meta-gradient and losses over the tasks, then
    Adam (the update of ``torch.optim.Adam`` with its defaults)."""
    import jax
    import jax.numpy as jnp

    from .peers import jax_

    def per_task(theta, xt, yt, xv, yv):
        pre = jax_.mse(theta, xt, yt)
        if family == "maml":
            def outer(t):
                return jax_.mse(jax_.gd(t, xt, yt, steps, INNER_LR), xv, yv)

            post, g = jax.value_and_grad(outer)(theta)
            return g, pre, post
        if family == "fomaml":
            phi = jax_.gd(jax.lax.stop_gradient(theta), xt, yt, steps, INNER_LR)
            post, g = jax.value_and_grad(jax_.mse)(phi, xv, yv)
            return g, pre, post
        phi = jax_.proximal_gd(theta, theta, xt, yt, steps, INNER_LR, LAM)
        hv = jax_._hvp_operator(phi, xt, yt, "fwdrev")
        post, b = jax.value_and_grad(jax_.mse)(phi, xv, yv)
        g = jax_.cg(lambda v: jax_._tree_map(lambda a, h: a + h / LAM, v, hv(v)), b,
                    CG_ITERS)
        return g, pre, post

    batched = jax.vmap(per_task, in_axes=(None, 0, 0, 0, 0))
    b1, b2, eps = 0.9, 0.999, 1e-8

    def step(theta, m, v, t, xt, yt, xv, yv):
        g, pre, post = batched(theta, xt, yt, xv, yv)
        g = jax_._tree_map(lambda a: jnp.mean(a, axis=0), g)
        m = jax_._tree_map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
        v = jax_._tree_map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        theta = jax_._tree_map(
            lambda p, a, b: p - (OUTER_LR / c1) * a / (jnp.sqrt(b) / jnp.sqrt(c2) + eps),
            theta, m, v)
        return theta, m, v, jnp.mean(pre), jnp.mean(post)

    return jax.jit(step)


def _child_jax(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    imported = time.perf_counter() - _START
    paused = time.perf_counter()
    data, init = _load(args.data)
    resumed = time.perf_counter()
    names = list(init)
    theta = tuple((jnp.asarray(init[w]), jnp.asarray(init[b]))
                  for w, b in zip(names[::2], names[1::2]))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, theta)
    m, v = zeros, zeros
    family, steps = CASES[args.case]
    step = _jax_step(family, steps)
    xt, yt, xv, yv = data
    log, first = [], 0.0
    for i in range(args.steps):
        theta, m, v, pre, post = step(theta, m, v, np.float32(i + 1), xt[i], yt[i], xv[i],
                                      yv[i])
        log.append((float(pre), float(post)))
        if i == 0:
            first = time.perf_counter() - resumed
    total = time.perf_counter() - _START - (resumed - paused)
    flat = np.concatenate([np.asarray(a).reshape(-1) for a in jax.tree_util.tree_leaves(theta)])
    return {"import_s": imported, "first_s": first, "total_s": total,
            "final_post_loss": statistics.fmean(p for _, p in log[-100:]),
            "param_norm": float(np.linalg.norm(flat.astype(np.float64))), "path": "jax"}


def _child_first(args) -> dict:
    """A new process to its first meta-gradient (no training loop)."""
    family, steps = CASES[args.case]
    if args.variant == "jax":
        import jax
        import numpy as np

        from .peers import jax_

        imported = time.perf_counter() - _START
        paused = time.perf_counter()
        data, init = _load(args.data)
        resumed = time.perf_counter()
        names = list(init)
        theta = tuple((np.asarray(init[w]), np.asarray(init[b]))
                      for w, b in zip(names[::2], names[1::2]))
        fn = jax_.meta_gradient_fn(family, steps, INNER_LR, LAM, CG_ITERS)
        jax.block_until_ready(fn(theta, *(a[0] for a in data)))
    else:
        import torch

        import metagrad as mg
        import metagrad.models  # noqa: F401  (imported inside the timed window, as before)

        imported = time.perf_counter() - _START
        torch.set_num_threads(1)
        paused = time.perf_counter()
        data, init = _load(args.data)
        resumed = time.perf_counter()
        model, loss = _torch_model(init)
        xt, yt, xv, yv = (torch.from_numpy(a[0]) for a in data)
        compiled = mg.compile(_torch_method(family, steps))
        compiled(loss, mg.params_of(model), mg.Task(train=(xt, yt), val=(xv, yv)))
    total = time.perf_counter() - _START - (resumed - paused)
    return {"import_s": imported, "first_s": total - imported, "total_s": total,
            "path": args.variant}


# ------------------------------------------------------------------------------ the parent
def _child_env(cache: str | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + ONE_THREAD_XLA).strip()}
    if cache is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    return env


def _run_child(argv: list[str], cache: str | None, pin: int) -> dict:
    cmd = ["taskset", "-c", str(pin), sys.executable, "-m", "metagrad_bench.time_to_result",
           "--child", *argv]
    start = time.perf_counter()
    out = subprocess.run(cmd, env=_child_env(cache), capture_output=True, text=True,
                         check=False)
    wall = time.perf_counter() - start
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(lines[-1]), "process_wall_s": wall}


def _environment() -> dict[str, str]:
    import importlib.metadata

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    root = Path(__file__).resolve().parents[1]
    git = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty",
                          "--abbrev=12"], capture_output=True, text=True, check=False)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "torch": version("torch"), "jax": version("jax"), "jaxlib": version("jaxlib"),
            "commit": git.stdout.strip() or "unknown"}


def _plan(args) -> list[tuple[str, str, str]]:
    """(case, variant, cache) per process of one round, the order rotated by round later."""
    runs = FIRST_RUNS if args.first else args.runs
    out = []
    for case in args.cases:
        for run in runs:
            variant, _, cache = run.partition(" ")
            out.append((case, variant, cache))
    return out


def _load_avg() -> float:
    return os.getloadavg()[0]


def measure(args) -> list[dict]:
    """Every process of every round; warm caches filled by one untimed run first."""
    work = Path(tempfile.mkdtemp(prefix="mg_time_to_result_"))
    rows: list[dict] = []
    try:
        data = work / "data.npz"
        write_data(data, 1 if args.first else args.steps, args.seed)
        plan = _plan(args)
        warm: dict[tuple[str, str], str] = {}
        base = ["--data", str(data), "--steps", str(args.steps)] + (["--first"] if args.first
                                                                     else [])
        # A process that imports torch and jax once, so that no variant pays for reading
        # the libraries from disk the first time.
        subprocess.run([sys.executable, "-c", "import torch, jax, metagrad"],
                       env=_child_env(None), capture_output=True, check=False)
        for case, variant, cache in plan:
            # a warm folder: left by an untimed run that compiled the case in that form
            form = variant if variant in ("unrolled", "stepwise", "scan") else "compiled"
            if cache == "warm" and (case, form) not in warm:
                folder = str(work / f"warm_{len(warm)}")
                warm[(case, form)] = folder
                _run_child([*base, "--case", case, "--variant", form], folder, args.pin)
        for round_ in range(args.rounds):
            shift = round_ % len(plan)
            for case, variant, cache in plan[shift:] + plan[:shift]:
                form = variant if variant in ("unrolled", "stepwise", "scan") else "compiled"
                folder = (warm[(case, form)] if cache == "warm"
                          else tempfile.mkdtemp(prefix="cold_", dir=work))
                load = _load_avg()
                result = _run_child([*base, "--case", case, "--variant", variant], folder,
                                    args.pin)
                if cache != "warm":
                    shutil.rmtree(folder, ignore_errors=True)
                row = {"round": round_, "case": case,
                       "variant": variant + (f" {cache}" if cache else ""),
                       **result, "load_1min": load}
                rows.append(row)
                print(f"[time_to_result] round {round_} {case} {row['variant']}: "
                      f"{row['total_s']:.2f} s (import {row['import_s']:.2f} s, first step "
                      f"{row['first_s']:.2f} s, path {row['path']}), load {load:.2f}",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def summarise(rows: list[dict], args, env: dict[str, str], load: tuple) -> str:
    import pandas as pd

    from metagrad._app import markdown_table

    frame = pd.DataFrame(rows)
    table = []
    for case in dict.fromkeys(frame["case"]):
        part = frame[frame["case"] == case]
        jax = part[part["variant"] == "jax"]["total_s"].median()
        for variant in dict.fromkeys(part["variant"]):
            sub = part[part["variant"] == variant]
            entry = {"case": case, "variant": variant,
                     "total s": sub["total_s"].median(),
                     "× JAX": sub["total_s"].median() / jax,
                     "import s": sub["import_s"].median(),
                     "first step s": sub["first_s"].median(),
                     "compile s": (sub["compile_s"].median() if "compile_s" in sub
                                   else float("nan")),
                     "min–max s": f"{sub['total_s'].min():.3g}–{sub['total_s'].max():.3g}",
                     "processes": len(sub)}
            if not args.first:
                entry["loss (last 100 steps)"] = sub["final_post_loss"].median()
                entry["path"] = "/".join(sorted(set(sub["path"])))
            entry["load"] = sub["load_1min"].median()
            table.append(entry)
    what = ("a new process to its first meta-gradient (imports, tracing, compilation, one "
            "call)" if args.first else
            f"a new process to a model trained for {args.steps} meta-steps (imports, "
            "compilation, every step; the tasks sampled beforehand)")
    command = "python -m metagrad_bench.time_to_result " + shlex.join(args.argv)
    return (
        f"# Time to result: {what}\n\n"
        f"{env['cpu']}, {env['cores']} cores, every process pinned to CPU {args.pin} with "
        f"one thread; Python {env['python']}, torch {env['torch']}, jax {env['jax']} "
        f"(jaxlib {env['jaxlib']}); commit {env['commit']}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Load average (1/5/15 min) "
        f"{'/'.join(f'{x:.2f}' for x in load[0])} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in load[1])} at the end; `load` is the 1-minute "
        "load when each process started (median over the rounds).\n\n"
        f"Sinusoid MLP 1-40-40-1 ReLU, meta-batch {META_BATCH}, {SHOTS}+{SHOTS} shots, "
        f"inner_lr {INNER_LR}, Adam {OUTER_LR}, float32. Medians over {args.rounds} "
        "round(s), the processes alternating; × JAX = the variant's median over JAX's "
        "median of the same case. `python -m metagrad_bench.time_to_result --help` says "
        "what each variant runs.\n\n"
        + markdown_table(pd.DataFrame(table), floatfmt=".3g") + "\n\n"
        f"Command: `{command}`\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.time_to_result",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000, help="meta-steps per run")
    ap.add_argument("--rounds", type=int, default=3, help="processes per (case, variant)")
    ap.add_argument("--cases", nargs="+", default=None, choices=list(CASES),
                    help="default: all (with --first: MAML K = 1, 5, 10)")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS + EXTRA_RUNS,
                    help="variants (and cache states) to run")
    ap.add_argument("--first", action="store_true",
                    help="time a new process to its first meta-gradient instead")
    ap.add_argument("--pin", type=int, default=None,
                    help="the CPU every process runs on (default: the first allowed one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder for the CSV and the markdown table")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = argv
    if args.child:
        if args.first:
            result = _child_first(args)
        else:
            result = _child_jax(args) if args.variant == "jax" else _child_torch(args)
        print(json.dumps(result))
        return 0
    if args.steps < 1 or args.rounds < 1:
        ap.error("--steps and --rounds must be positive")
    if shutil.which("taskset") is None:
        ap.error("taskset (util-linux) is needed to pin the processes to one CPU")
    args.cases = args.cases or (list(FIRST_CASES) if args.first else list(CASES))
    args.pin = args.pin if args.pin is not None else min(os.sched_getaffinity(0))
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    start = os.getloadavg()
    rows = measure(args)
    md = summarise(rows, args, env, (start, os.getloadavg()))
    print(md)
    if out is not None:
        import pandas as pd

        stem = "first_gradient" if args.first else "time_to_result"
        frame = pd.DataFrame(rows)
        for key, value in env.items():
            frame[key] = value
        frame.to_csv(out / f"{stem}.csv", index=False)
        (out / f"{stem}.md").write_text(md)
        from metagrad import _provenance

        _provenance.write(
            out, file="provenance.json" if stem == "time_to_result" else f"provenance_{stem}.json",
            command=_provenance.command_line("python -m metagrad_bench.time_to_result"),
            mode="each variant as named (eager, compiled, JAX jit), one process per run",
            kind="bench", what="time from a new process to a trained model (or to its first "
                               "meta-gradient), metagrad against plain JAX",
            extra={"third_party": {"jax": env.get("jax", "")}, "trace": None,
                   "reproducibility": "timings: rerun by the command (medians over "
                                      "alternating processes; not bit for bit)"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
