"""Which Hessian-vector-product mode is faster: forward-over-reverse or double backward?

    python -m metagrad_bench.hvp_modes [--device cpu|cuda] [--threads 1] \\
        [--out bench/results/hvp_modes_cpu]

Times IMAML (5 steps, 5 CG), trajectory MAML (K = 5) and Penalty (K = 5), whose
cost is dominated by HVPs, with ``hvp="fwdrev"`` and ``hvp="revrev"``, on the
sinusoid MLP and the conv net, interleaved round-robin in one run; the faster
mode per device is what ``hvp="auto"`` picks (``metagrad._hvp.DEFAULT_MODE``).
The sinusoid loss is written as ((a − b)²).mean(): forward-over-reverse through
``F.mse_loss`` fails in torch ("ZeroTensors are immutable").
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

import metagrad as mg
from metagrad import _provenance as provenance
from metagrad.problems import make_problem, mse
from metagrad.timing import synchronize


def workloads(device: str):
    sinusoid = make_problem("sinusoid", device=device)
    # The same net with the MSE written out: forward-over-reverse fails inside F.mse_loss.
    yield ("sinusoid", mg.module_loss(sinusoid.module, mse), sinusoid.params, sinusoid.tasks)
    conv = make_problem("convnet", device=device)
    yield ("convnet", conv.loss, conv.params, conv.tasks)


def methods(mode: str):
    common = {"hvp": mode, "diagnose": "off"}
    return [mg.IMAML(steps=5, inner_lr=0.01, lam=1.0, cg_iters=5, **common),
            mg.MAML(steps=5, inner_lr=0.01, backward="trajectory", **common),
            mg.Penalty(steps=5, inner_lr=0.01, lam=0.1, **common)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default="bench/results/hvp_modes_cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for problem, loss, params, tasks in workloads(args.device):
        pairs = list(zip(methods("fwdrev"), methods("revrev")))
        for fwd, rev in pairs:
            times: dict[str, list[float]] = {"fwdrev": [], "revrev": []}
            for m in (fwd, rev):  # warm-up
                m(loss, params, tasks)
            for _ in range(args.repeats):  # interleaved, so load drifts hit both alike
                for m in (fwd, rev):
                    synchronize(args.device)
                    start = time.perf_counter()
                    m(loss, params, tasks)
                    synchronize(args.device)
                    times[m.hvp].append(time.perf_counter() - start)
            f, r = statistics.median(times["fwdrev"]), statistics.median(times["revrev"])
            rows.append({"problem": problem, "method": fwd.name, "device": args.device,
                         "threads": torch.get_num_threads(), "torch": torch.__version__,
                         "fwdrev_ms": 1e3 * f, "revrev_ms": 1e3 * r,
                         "fwdrev_over_revrev": f / r})
            print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "hvp_modes.csv", index=False)
    (out / "hvp_modes.md").write_text(df.to_markdown(index=False, floatfmt=".3g") + "\n")
    provenance.write(out, command=provenance.command_line("python -m metagrad_bench.hvp_modes"),
                     kind="bench", what="forward-over-reverse vs double-backward HVPs",
                     mode="eager", device=args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
