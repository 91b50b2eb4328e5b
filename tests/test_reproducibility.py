"""Committed results against today's code: every training result and sweep under
``bench/results`` carries ``provenance.json`` and, where it was recorded, a trace
(``trace.json``: the first meta-steps of one seed of every run, a sweep's first row per
method) that is replayed here and compared bit for bit. A change to a numerical path fails
until the results are regenerated or the change is declared rounding-only with its
measured size (``rounding.json``, :mod:`metagrad.train.study.trace`).

The mechanism itself is tested on a tiny run: a deliberate rounding-only change (the task
mean nudged by two float32 roundings) fails the check, a declaration of its measured size lets it
pass, a larger change still fails, and a regenerated trace makes the declaration stale.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metagrad import _provenance
from metagrad import _pytree as pt
from metagrad.train import TrainConfig, train
from metagrad.train.study import trace

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CHECKED = ("train", "sweep")
TINY = dict(hidden=(8, 8), meta_batch=3, heldout_tasks=6, heldout_query=5,
            validation_tasks=6, snapshot_every=0, meta_steps=12, check_every=5)


def _folders() -> list[Path]:
    out = []
    for path in sorted(RESULTS.rglob(_provenance.FILE)):
        if json.loads(path.read_text()).get("kind") in CHECKED:
            out.append(path.parent)
    return out


def _nudged_mean(a, by=2.0 ** -22):
    # The deliberate change: the task mean scaled by 1 + 2⁻²², about two float32 roundings
    # (what reordering a sum or fusing kernels does to a number).
    return {k: v.mean(0) * (1 + by) for k, v in a.items()}


def test_every_results_folder_records_its_provenance():
    folders = [p for p in RESULTS.iterdir() if p.is_dir()]
    missing = [p.name for p in folders
               if not (p / _provenance.FILE).is_file()
               and not any((q / _provenance.FILE).is_file() for q in p.iterdir() if q.is_dir())]
    assert not missing, f"results folders without provenance.json: {missing}"
    for path in RESULTS.rglob(_provenance.FILE):
        record = json.loads(path.read_text())
        for key in ("commit", "command", "mode", "packages", "machine", "date"):
            assert key in record, f"{path}: no {key!r}"
            if record[key] is None:  # unknown: said why
                assert record.get(f"{key}_note"), f"{path}: {key} unknown without a note"


@pytest.mark.parametrize("folder", _folders(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_committed_result_reproduces_at_this_commit(folder):
    record = _provenance.read(folder)
    assert record is not None
    if not (folder / trace.FILE).is_file():
        pytest.xfail(f"{folder.relative_to(RESULTS)}: no reproducibility trace: "
                     f"{record.get('reproducibility')}")
    recorded = json.loads((folder / trace.FILE).read_text())["recorded"]
    here = _provenance.machine()
    cap = recorded["machine"].get("cpu_capability")
    if cap is not None and cap != here["cpu_capability"]:
        pytest.skip(f"recorded with {cap} CPU kernels, here {here['cpu_capability']}: float "
                    "rounding differs between them, so bit for bit is not expected")
    torch_then = recorded["packages"].get("torch")
    if torch_then != torch.__version__:
        pytest.skip(f"recorded with torch {torch_then}, here {torch.__version__}")
    kinds = json.loads((folder / trace.FILE).read_text())
    devices = {c.get("row", {}).get("device", "cpu") for c in kinds["cases"]}
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        pytest.skip("the trace's rows ran on CUDA")
    outcomes = trace.check(folder, command=record.get("command") or "")
    bad = [o.message for o in outcomes if o.status == "differs"]
    assert not bad, "\n".join(bad)


def test_a_changed_numerical_path_fails_the_committed_sweep(monkeypatch):
    # The deliberate change (the mean over tasks of the meta-gradient nudged by two float32
    # roundings): the committed sweep rows (approx_error, the float64 meta-gradient against
    # the oracle) no longer reproduce, and the check says what to do.
    folder = RESULTS / "sweep_cpu_quick"
    monkeypatch.setattr(pt, "mean0", _nudged_mean)
    outcomes = trace.check(folder, command="metagrad sweep --preset cpu-quick")
    differs = [o for o in outcomes if o.status == "differs"]
    assert differs, [o.status for o in outcomes]
    assert all("Regenerate the results" in o.message and "declare" in o.message
               for o in differs)


def _tiny_run(tmp_path: Path) -> tuple[Path, TrainConfig]:
    # Reptile's outer SGD step passes a scaled meta-gradient on (Adam's would cancel it).
    cfg = TrainConfig(method="reptile", steps=2, **TINY)
    out = tmp_path / "result"
    train(cfg, out / "run", progress=False)
    trace.record(out, [("reptile", out / "run", cfg)])
    return out, cfg


def test_a_trace_replays_its_run_bit_for_bit(tmp_path):
    out, cfg = _tiny_run(tmp_path)
    data = json.loads((out / trace.FILE).read_text())
    (case,) = data["cases"]
    # the replay is the run's own first meta-steps, and θ after them
    assert case["own"]["post_update_loss"] == case["replay"]["post_update_loss"]
    assert len(case["replay"]["pre_update_loss"]) == TINY["meta_steps"]
    assert [o.status for o in trace.check(out)] == ["same"]


def test_a_rounding_change_fails_until_declared_and_a_larger_one_fails_anyway(
        tmp_path, monkeypatch):
    out, cfg = _tiny_run(tmp_path)
    monkeypatch.setattr(pt, "mean0", _nudged_mean)
    (first,) = trace.check(out)
    assert first.status == "differs" and 0 < first.size < 1e-4, first  # rounding-sized
    with pytest.raises(ValueError, match="needs a reason"):
        trace.declare(out, " ")
    (decl,) = trace.declare(out, "task mean nudged by two float32 roundings")
    assert decl["max_rel_diff"] == first.size  # the measured size is what is declared
    (again,) = trace.check(out)
    assert again.status == "declared" and again.size == first.size
    # a change beyond the declared size (the mean scaled by 1 + 2⁻¹⁰) still fails
    monkeypatch.setattr(pt, "mean0", lambda a: _nudged_mean(a, 2.0 ** -10))
    (worse,) = trace.check(out)
    assert worse.status == "differs" and "beyond the declared" in worse.message


def test_a_regenerated_trace_makes_old_declarations_stale(tmp_path, monkeypatch):
    out, cfg = _tiny_run(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(pt, "mean0", _nudged_mean)
        trace.declare(out, "task mean nudged by two float32 roundings")
        # regenerated with the change: the new trace is what the code does now
        train(cfg, out / "run", progress=False, overwrite=True)
        trace.record(out, [("reptile", out / "run", cfg)])
        outcomes = trace.check(out)
    stale = [o for o in outcomes if "no longer there" in o.message]
    assert stale and stale[0].status == "differs"


def test_an_eager_run_that_its_replay_does_not_reproduce_gets_no_trace(tmp_path,
                                                                       monkeypatch):
    cfg = TrainConfig(method="reptile", steps=2, **TINY)
    out = tmp_path / "result"
    train(cfg, out / "run", progress=False)
    monkeypatch.setattr(pt, "mean0", _nudged_mean)  # the replay runs other code
    with pytest.raises(RuntimeError, match="does not reproduce the run's own log"):
        trace.record(out, [("reptile", out / "run", cfg)])
    assert not (out / trace.FILE).exists()


def test_provenance_names_the_commit_the_command_and_the_machine(tmp_path, capsys):
    from metagrad import cli
    out = tmp_path / "run"
    rc = cli.main(["train", "--method", "fomaml", "--meta-steps", "3", "--heldout-tasks",
                   "4", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    record = _provenance.read(out)
    state = _provenance.git_state()
    assert record["commit"] == state["commit"] and record["kind"] == "train"
    assert record["command"].endswith(f"metagrad train --method fomaml --meta-steps 3 "
                                      f"--heldout-tasks 4 --out {out} --quiet")
    assert record["mode"] == "eager" and record["trace"] == trace.FILE
    assert record["packages"]["torch"] == torch.__version__
    assert record["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert [o.status for o in trace.check(out)] == ["same"]


def test_a_long_run_records_the_commit_it_started_with(tmp_path, monkeypatch, capsys):
    """A run's results come from the code it imported at its start; a commit made while
    it ran is recorded beside it (commit_at_end), not in its place."""
    from metagrad import cli
    states = iter([{"commit": "a" * 40, "dirty": False, "changed": []}])
    later = {"commit": "b" * 40, "dirty": True, "changed": ["metagrad/x.py"]}
    monkeypatch.setattr(_provenance, "git_state", lambda root=None: next(states, later))
    out = tmp_path / "run"
    rc = cli.main(["train", "--method", "fomaml", "--meta-steps", "2", "--heldout-tasks",
                   "4", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    record = _provenance.read(out)
    assert (record["commit"], record["dirty"]) == ("a" * 40, False)
    assert (record["commit_at_end"], record["dirty_at_end"]) == ("b" * 40, True)
