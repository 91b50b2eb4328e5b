"""``python -m metagrad_bench.startup``: what starting metagrad costs, against starting torch.

Each measurement is a new Python process (``--repeats`` of each, the kinds alternating so
that load drifts hit all alike) timing, from its first line:

* ``import torch``;
* ``import metagrad`` (torch included);
* ``metagrad --help`` (the command-line parser; ``metagrad.cli``);
* ``import metagrad`` and a first eager meta-gradient, MAML K = 5 on the sinusoid MLP
  1-40-40-1, 25 tasks: what a script waits for before its first number. torch.func's
  ``grad`` imports ``torch._dynamo`` on its first call (seconds); metagrad's eager path
  does not use it.

``--tree PATH`` imports metagrad from another checkout (to compare commits); the table
gives medians and the ratio to ``import torch``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROGRAMS = {
    "import torch": "import torch",
    "import metagrad": "import metagrad",
    "metagrad --help": ("import contextlib, io\nfrom metagrad.cli import main\n"
                        "with contextlib.redirect_stdout(io.StringIO()):\n"
                        "    try:\n        main(['--help'])\n"
                        "    except SystemExit:\n        pass"),
    "import + first MAML K=5": (
        "import torch, torch.nn.functional as F\nimport metagrad as mg\n"
        "from metagrad.models import mlp\ntorch.set_num_threads(1)\n"
        "model = mlp((1, 40, 40, 1), seed=0)\n"
        "mg.MAML(steps=5, inner_lr=0.01)(mg.module_loss(model, F.mse_loss), "
        "mg.params_of(model), mg.Sinusoid().sample(25, seed=0))"),
}


def _child(program: str, tree: str | None) -> float:
    prefix = f"import sys\nsys.path.insert(0, {tree!r})\n" if tree else ""
    code = ("import time\n_t = time.perf_counter()\n" + prefix + program
            + "\nimport json\nprint(json.dumps(time.perf_counter() - _t))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{program!r} failed:\n{out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metagrad_bench.startup", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tree", default=None, help="import metagrad from this checkout")
    ap.add_argument("--kinds", nargs="+", default=list(PROGRAMS), choices=list(PROGRAMS))
    ap.add_argument("--out", default=None, help="write startup.md into this folder")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be positive")
    tree = str(Path(args.tree).resolve()) if args.tree else None
    _child("import torch, metagrad", tree)  # the files read from disk once, for all kinds
    load = os.getloadavg()
    times: dict[str, list[float]] = {k: [] for k in args.kinds}
    for round_ in range(args.repeats):
        kinds = args.kinds[round_ % len(args.kinds):] + args.kinds[:round_ % len(args.kinds)]
        for kind in kinds:
            times[kind].append(_child(PROGRAMS[kind], tree))
    load_end = os.getloadavg()
    base = statistics.median(times["import torch"]) if "import torch" in times else None
    lines = ["| what | median s | × import torch | min–max s |", "| --- | --- | --- | --- |"]
    for kind, values in times.items():
        med = statistics.median(values)
        ratio = f"{med / base:.2f}" if base else ""
        lines.append(f"| {kind} | {med:.3f} | {ratio} | {min(values):.3f}–{max(values):.3f} |")
    import torch

    commit = subprocess.run(["git", "-C", tree or str(Path(__file__).resolve().parents[1]),
                             "describe", "--always", "--dirty", "--abbrev=12"],
                            capture_output=True, text=True, check=False).stdout.strip()
    md = ("# Start-up: new processes, medians\n\n"
          f"{platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
          f"torch {torch.__version__}; metagrad from {tree or 'this checkout'} (commit "
          f"{commit or 'unknown'}); {time.strftime('%Y-%m-%d %H:%M')}; load average "
          f"(1/5/15 min) {'/'.join(f'{x:.2f}' for x in load)} at the start, "
          f"{'/'.join(f'{x:.2f}' for x in load_end)} at the end; {args.repeats} processes "
          "of each kind, alternating.\n\n" + "\n".join(lines) + "\n\n"
          "Command: `python -m metagrad_bench.startup "
          + " ".join(a for a in (argv if argv is not None else sys.argv[1:])) + "`\n")
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / ("startup.md" if tree is None else "startup_tree.md")).write_text(md)
        from metagrad import _provenance

        _provenance.write(
            out, file="provenance.json" if tree is None else "provenance_tree.json",
            command=_provenance.command_line("python -m metagrad_bench.startup", argv),
            mode="new processes (imports; eager for the first meta-gradient)", kind="bench",
            what="what starting metagrad costs against starting torch",
            extra={"tree": tree, "tree_commit": commit if tree else None, "trace": None,
                   "reproducibility": "timings: rerun by the command (medians over "
                                      "alternating processes)"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
