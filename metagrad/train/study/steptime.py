"""Time one meta-step (the meta-gradient of a meta-batch, without the outer update),
eager against ``metagrad.compile``, side by side.

The modes of a configuration are timed on the same task batches, alternating call by
call, so that a change of machine load affects both alike; the table gives the median and
interquartile range over rounds, and the one-off compile time. Numerical checks are off
(``diagnose="off"``): they are not the computation.

    python -m metagrad.train.study.steptime --out timing.csv  # the study's configurations
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..._module import params_of
from ...compiled import compile as compile_method
from ..baseline import torch_threads
from ..config import TrainConfig, make_method, make_model, task_family
from ..loop import shared_loss

COMMITTED_STUDY = Path(__file__).resolve().parents[3] / "bench" / "results" / "study"


def time_meta_steps(configs: dict[str, TrainConfig], rounds: int = 100,
                    modes: tuple[str, ...] = ("eager", "compiled")) -> pd.DataFrame:
    """Median and IQR (ms) of one meta-gradient call per configuration and mode.

    Configurations are timed one after another (torch.compile keeps only a few traced
    variants of one function alive, see ``loop._meta_gradient``); within a configuration
    its modes alternate call by call on the same batches."""
    gen = torch.Generator().manual_seed(0)
    first = next(iter(configs.values())).resolved()
    batches = [task_family(first).sample(first.meta_batch, generator=gen)
               for _ in range(rounds)]
    rows = []
    for name, cfg in configs.items():
        cfg = cfg.resolved()
        model = make_model(cfg)
        params = params_of(model)
        method = replace(make_method(cfg), diagnose="off")
        loss = shared_loss(cfg)
        calls = {}
        compile_s = {}
        for mode in modes:
            if mode == "compiled":
                torch._dynamo.reset()
            call = compile_method(method) if mode == "compiled" else method
            started = time.perf_counter()
            call(loss, params, batches[0])  # warm-up (and compile)
            compile_s[mode] = time.perf_counter() - started if mode == "compiled" else 0.0
            calls[mode] = call
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for batch in batches:
            for mode, call in calls.items():
                t0 = time.perf_counter()
                call(loss, params, batch)
                times[mode].append(time.perf_counter() - t0)
        for mode, ts in times.items():
            s = pd.Series(ts) * 1e3
            rows.append({"config": name, "mode": mode, "median_ms": s.median(),
                         "iqr_ms": s.quantile(0.75) - s.quantile(0.25), "rounds": len(ts),
                         "compile_s": compile_s[mode], "load_avg": os.getloadavg()[0],
                         "torch": torch.__version__})
    return pd.DataFrame(rows)


def study_configs(record: dict | None = None) -> dict[str, TrainConfig]:
    """The configurations of a study record (``study.json``; default: the committed
    ``bench/results/study``): every variant's chosen settings, and the finn2017 preset."""
    from .. import outdir
    from .design import config_for, variants
    from .finn2017 import PRESET

    if record is None:
        record = outdir.read_json(COMMITTED_STUDY / "study.json")
    spec = record["spec"]
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in spec["base"].items() if k != "optimizer"}
    base = replace(TrainConfig(**fields), compile=False, probe_at=())
    configs = {}
    for v in variants(spec["methods"], spec["regimes"], spec["tune"]):
        settings = record["settings"][v.name]
        configs[f"{v.name} " + " ".join(f"{k}={x:g}" for k, x in sorted(settings.items()))] = \
            config_for(base, v, settings, 0)
    preset = TrainConfig(**{k: v for k, v in PRESET.items()
                            if k in TrainConfig.__dataclass_fields__})
    configs[f"finn2017 {preset.method}"] = replace(preset, compile=False)
    return configs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metagrad.train.study.steptime",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="steptime.csv", help="CSV to write")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--study", default=str(COMMITTED_STUDY),
                   help="folder of the study whose chosen settings are timed (default: the "
                        "committed bench/results/study)")
    args = p.parse_args(argv)
    from .. import outdir
    record_path = Path(args.study) / "study.json"
    if not record_path.is_file():
        p.error(f"--study {args.study}: no study.json there")
    with torch_threads(args.threads):
        frame = time_meta_steps(study_configs(outdir.read_json(record_path)),
                                rounds=args.rounds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    wide = frame.pivot(index="config", columns="mode", values="median_ms")
    wide["eager / compiled"] = wide["eager"] / wide["compiled"]
    print(wide.round(2).to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
