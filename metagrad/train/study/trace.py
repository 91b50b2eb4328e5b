"""Reproducibility traces: a committed training result checked, bit for bit, against the
code that would produce it today.

The run that writes a result (``metagrad train``) also writes ``trace.json``: for one
seed of every run it made (the first seed of every variant of a study), the first
:data:`STEPS` meta-steps replayed eager from the run's settings (pre- and post-update
loss of every step, a SHA-256 of θ after them, and the held-out MSE of that θ on the first
:data:`HEAD_TASKS` test tasks after 0 and the last number of adaptation steps), next to
the same steps as the run itself logged them (compiled where it ran compiled). An eager
run's replay must equal its own log bit for bit, or the trace is not written.

:func:`check` replays the eager prefix again and compares it bit for bit with the trace:
any change to a numerical path the run goes through (task sampling, initialisation, the
method, the inner loop, the optimizer, the evaluation) shows. ``compiled=True`` replays
the compiled runs compiled and compares with their own log (slow: one compilation each).

A change that only moves the rounding can be *declared* (``declare``) instead of
regenerating the results: the relative difference it makes over the prefix is measured
and stored with a reason in ``rounding.json`` next to the trace, keyed by the trace it
amends; a replay within the declared size passes, a larger one fails, and a declaration
for a trace that was since regenerated is stale and fails until it is removed.

    python -m metagrad.train.study.trace check bench/results/study
    python -m metagrad.train.study.trace declare bench/results/study --reason "..."
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ... import _provenance
from ..._task import Task
from .. import outdir
from ..config import TrainConfig, heldout_tasks
from ..evaluation import adaptation_losses
from ..loop import FILES, read_log, shared_loss, train

FILE = "trace.json"
DECLARATIONS = "rounding.json"
STEPS = 20
"""Meta-steps replayed: two checked steps at the study's ``check_every`` = 10."""
HEAD_TASKS = 8
FORMAT = 1


def config_from(d: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from its ``as_dict()`` (lists back to tuples)."""
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
                              if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**fields)


def digest(params: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the parameters' bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def replay(cfg: TrainConfig, steps: int = STEPS, *, compiled: bool = False) -> dict[str, Any]:
    """The first ``steps`` meta-steps of ``cfg`` through :func:`metagrad.train.train`
    (eager, or compiled), in a scratch folder: their losses, θ's digest after them, and
    the held-out MSE of that θ on the first :data:`HEAD_TASKS` test tasks."""
    cfg = cfg.resolved()
    steps = min(steps, cfg.meta_steps)
    # meta_steps only bounds the loop (no schedule reads it): one more than the prefix lets
    # the run stop right after it, before any evaluation.
    run_cfg = replace(cfg, compile=compiled, probe_at=(), snapshot_every=0,
                      meta_steps=max(cfg.meta_steps, steps + 1))
    with tempfile.TemporaryDirectory() as tmp:
        result = train(run_cfg, tmp, stop_after=steps, progress=False, label="trace")
    log = result.log
    assert cfg.eval_lr is not None
    head = Task(*_first(heldout_tasks(cfg), HEAD_TASKS))
    mse = adaptation_losses(shared_loss(cfg), result.params, head, cfg.eval_lr,
                            max(cfg.eval_steps)).double()
    return {"steps": steps,
            "pre_update_loss": [float(v) for v in log["pre_update_loss"][:steps]],
            "post_update_loss": [float(v) for v in log["post_update_loss"][:steps]],
            "params_sha256": digest(result.params),
            "heldout_head": {"tasks": head.num_tasks, "k": [0, max(cfg.eval_steps)],
                             "mse": [[float(r[0]), float(r[-1])] for r in mse]}}


def _first(tasks, n: int):
    """``tasks.train``, ``tasks.val`` and ``tasks.info`` of the first ``n`` tasks."""
    def cut(x):
        return tuple(t[:n] for t in x)
    return cut(tasks.train), cut(tasks.val), {k: v[:n] for k, v in tasks.info.items()}


def own_prefix(folder: Path, steps: int) -> dict[str, Any] | None:
    """The first ``steps`` losses the run in ``folder`` logged itself (None without its log)."""
    path = folder / FILES["log"]
    if not path.is_file():
        return None
    log = read_log(path)
    return {"steps": min(steps, len(log)),
            "pre_update_loss": [float(v) for v in log["pre_update_loss"][:steps]],
            "post_update_loss": [float(v) for v in log["post_update_loss"][:steps]]}


def numbers(trace: dict[str, Any]) -> list[float]:
    """Every number of a replay, in a fixed order: a training prefix's losses, then its
    held-out head; or a sweep row's ``numbers``. None (a non-finite number in JSON) is NaN."""
    if "numbers" in trace:
        values = list(trace["numbers"].values())
    else:
        head = [v for row in trace.get("heldout_head", {}).get("mse", []) for v in row]
        values = [*trace["pre_update_loss"], *trace["post_update_loss"], *head]
    return [math.nan if v is None else float(v) for v in values]


def max_rel_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The largest relative difference between the numbers of two replays (inf when their
    shapes differ or one is not finite where the other is)."""
    x, y = numbers(a), numbers(b)
    if len(x) != len(y):
        return math.inf
    worst = 0.0
    for u, v in zip(x, y, strict=True):
        if u == v or (u != u and v != v):
            continue
        if not (math.isfinite(u) and math.isfinite(v)):
            return math.inf
        worst = max(worst, abs(u - v) / max(abs(u), abs(v), 1e-300))
    return worst


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Bit-identical replays: every number and θ's digest."""
    return max_rel_diff(a, b) == 0.0 and a.get("params_sha256") == b.get("params_sha256")


def case_id(case: dict[str, Any]) -> str:
    """SHA-256 of a case's recorded replay: what a declaration amends."""
    return hashlib.sha256(json.dumps(case["replay"], sort_keys=True).encode()).hexdigest()


def record(out: Path, runs: Sequence[tuple[str, Path, TrainConfig]],
           steps: int = STEPS) -> Path:
    """Write ``out/trace.json`` for ``runs`` (label, folder, config): each replayed eager,
    with the run's own logged prefix. Raises ``RuntimeError`` when an eager run's replay
    differs from its own log (the trace could not check anything)."""
    cases = []
    for label, folder, cfg in runs:
        cfg = cfg.resolved()
        ours = replay(cfg, steps)
        own = own_prefix(folder, steps)
        if own is not None and not cfg.compile and max_rel_diff(own, {
                **ours, "heldout_head": {}}) != 0.0:
            raise RuntimeError(f"{label}: replaying the first {steps} meta-steps eager does "
                               f"not reproduce the run's own log in {folder}; no trace written")
        cases.append({"run": str(folder.relative_to(out)) if folder != out else ".",
                      "label": label, "mode": "compiled" if cfg.compile else "eager",
                      "config": cfg.as_dict(), "replay": ours, "own": own})
    return write(out, "train", cases, steps=steps,
                 about="the first meta-steps of one seed of each run, replayed eager "
                       "(replay) and as the run logged them (own)")


def write(out: Path, kind: str, cases: list[dict[str, Any]], *, about: str,
          steps: int | None = None, machine: dict[str, Any] | None = None) -> Path:
    """Write ``out/trace.json``: ``cases`` of ``kind`` (``"train"``, ``"sweep"``), with the
    commit, packages and machine they were recorded on (``machine``: where they were not
    recorded here)."""
    state = _provenance.git_state()
    data = {"format": FORMAT, "kind": kind, "steps": steps,
            "recorded": {"commit": state["commit"], "dirty": state["dirty"],
                         "packages": _provenance.packages(),
                         "machine": machine or _provenance.machine()},
            "about": about + "; checked by python -m metagrad.train.study.trace check",
            "cases": cases}
    outdir.write_json(out / FILE, data)
    return out / FILE


def _replay_case(trace: dict[str, Any], case: dict[str, Any], compiled: bool = False
                 ) -> dict[str, Any]:
    """Today's replay of a case of a trace of either kind."""
    if trace.get("kind", "train") == "sweep":
        from metagrad_bench.sweep import replay_row  # a sweep's rows: the benchmark's code
        return replay_row(case["row"])
    return replay(config_from(case["config"]), trace["steps"], compiled=compiled)


def traced_runs(out: Path, kind: str, configs: dict[str, TrainConfig],
                record_: dict[str, Any] | None = None) -> list[tuple[str, Path, TrainConfig]]:
    """The runs a trace covers: the run itself (``single``), each method's subfolder
    (``all``), or the first seed of every variant of a study (``record_``: ``study.json``)."""
    if kind == "single":
        (cfg,) = configs.values()
        return [(cfg.variant, out, cfg)]
    if kind == "all":
        return [(name, out / name, cfg) for name, cfg in configs.items()]
    assert record_ is not None
    seed = record_["spec"]["seeds"][0]
    out_runs = []
    for name in record_["settings"]:
        folder = out / "runs" / name / f"seed{seed}"
        summary = folder / FILES["summary"]
        if summary.is_file():
            out_runs.append((name, folder, config_from(outdir.read_json(summary)["config"])))
    return out_runs


@dataclass
class Outcome:
    """One case of a check: ``status`` is ``"same"`` (bit for bit), ``"declared"`` (within
    a declared rounding-only change), or ``"differs"``; ``size`` the largest relative
    difference; ``message`` what to do."""

    run: str
    status: str
    size: float
    message: str


def load_declarations(folder: Path) -> list[dict[str, Any]]:
    path = folder / DECLARATIONS
    return json.loads(path.read_text())["declarations"] if path.is_file() else []


def check(folder: Path, *, compiled: bool = False, command: str = "") -> list[Outcome]:
    """Replay every case of ``folder/trace.json`` and compare (see the module docstring).
    ``compiled``: replay the compiled cases compiled, against their own log."""
    trace = json.loads((folder / FILE).read_text())
    declared = {d["case"]: d for d in load_declarations(folder)}
    ids = {case_id(c) for c in trace["cases"]}
    outcomes = []
    for d in declared.values():
        if d["case"] not in ids:
            outcomes.append(Outcome(d.get("run", "?"), "differs", math.nan,
                                    f"{folder / DECLARATIONS}: a declaration for a trace that "
                                    "is no longer there (the results were regenerated): "
                                    "remove it"))
    for case in trace["cases"]:
        if compiled and case["mode"] == "compiled":
            if case.get("own") is None:
                continue
            got = _replay_case(trace, case, compiled=True)
            size = max_rel_diff(case["own"], {**got, "heldout_head": {}})
            ok = size == 0.0
        else:
            got = _replay_case(trace, case)
            ok = same(case["replay"], got)
            size = max_rel_diff(case["replay"], got)
        if ok:
            outcomes.append(Outcome(case["run"], "same", 0.0, ""))
            continue
        decl = declared.get(case_id(case))
        if decl is not None and size <= decl["max_rel_diff"] and not compiled:
            outcomes.append(Outcome(case["run"], "declared", size,
                                    f"declared rounding-only: {decl['reason']}"))
            continue
        prefix = f"the first {trace['steps']} meta-steps" if trace.get("steps") else "the row"
        size_text = f"largest relative difference {size:.3g}" if size else \
            "the logged numbers agree but θ after them does not (its digest)"
        what = f"{folder.name}/{case['run']} ({case['label']}): {prefix} replayed today " \
               f"differs from the committed trace ({size_text}"
        if decl is not None:
            what += f", beyond the declared {decl['max_rel_diff']:.3g}"
        outcomes.append(Outcome(case["run"], "differs", size, what + "). Regenerate the "
                                f"results ({command or 'the command in provenance.json'}), or, "
                                "if the change only moves float rounding, declare it: python "
                                f"-m metagrad.train.study.trace declare {folder} --reason ..."))
    return outcomes


def declare(folder: Path, reason: str) -> list[dict[str, Any]]:
    """Measure how far today's replays are from the trace and record each differing case
    as a rounding-only change of that size, with ``reason`` (see the module docstring)."""
    if not reason.strip():
        raise ValueError("a declaration needs a reason: what changed and why it only moves "
                         "the rounding")
    trace = json.loads((folder / FILE).read_text())
    state = _provenance.git_state()
    kept = {d["case"]: d for d in load_declarations(folder)
            if d["case"] in {case_id(c) for c in trace["cases"]}}
    for case in trace["cases"]:
        got = _replay_case(trace, case)
        if same(case["replay"], got):
            continue
        size = max_rel_diff(case["replay"], got)
        if not math.isfinite(size):
            raise ValueError(f"{case['run']}: the replay is not finite where the trace is (or "
                             "the reverse): that is not a rounding change; regenerate")
        kept[case_id(case)] = {"case": case_id(case), "run": case["run"],
                               "max_rel_diff": size, "reason": reason,
                               "commit": state["commit"], "dirty": state["dirty"],
                               "measured_over": f"the first {trace['steps']} meta-steps and "
                                                f"{HEAD_TASKS} test tasks" if trace.get("steps")
                                                else "the row's numbers"}
    declarations = list(kept.values())
    (folder / DECLARATIONS).write_text(json.dumps({
        "about": "rounding-only changes declared against trace.json, with the largest "
                 "relative difference each makes over the traced prefix (measured)",
        "declarations": declarations}, indent=2) + "\n")
    return declarations


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metagrad.train.study.trace",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("check", help="replay the traced prefixes and compare bit for bit")
    c.add_argument("folder")
    c.add_argument("--compiled", action="store_true",
                   help="also replay the compiled runs compiled (slow)")
    d = sub.add_parser("declare", help="record today's differences as rounding-only")
    d.add_argument("folder")
    d.add_argument("--reason", required=True)
    args = p.parse_args(argv)
    folder = Path(args.folder)
    if not (folder / FILE).is_file():
        p.error(f"{folder}: no {FILE} (results made before traces were recorded; "
                "regenerate them)")
    if args.action == "declare":
        for decl in declare(folder, args.reason):
            print(f"{decl['run']}: declared rounding-only, largest relative difference "
                  f"{decl['max_rel_diff']:.3g}")
        return 0
    bad = 0
    for o in check(folder, compiled=args.compiled):
        print(f"{o.run}: {o.status}" + (f" ({o.size:.3g}) {o.message}" if o.message else ""))
        bad += o.status == "differs"
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["DECLARATIONS", "FILE", "STEPS", "Outcome", "check", "config_from", "declare",
           "digest", "max_rel_diff", "record", "replay", "same", "traced_runs", "write"]
