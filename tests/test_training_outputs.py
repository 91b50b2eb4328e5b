"""``metagrad train``'s outputs under faults and misuse: concurrent runs, one layout
written over another, non-finite numbers, folders that cannot be written, a disk that
fills up during a run, and flags that would do nothing.

Each test states the independent fact it relies on (a second process, the file system,
float32's largest finite number, a float64 recomputation); runs are a few meta-steps.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_training import final_params, heldout, ref_adaptation_curve  # float64 reference

from metagrad import _app, cli
from metagrad.methods import METHOD_NAMES
from metagrad.train import FILES, TrainConfig, outdir, snapshot
from metagrad.train import command as train_cli

QUICK = ["--meta-steps", "2", "--meta-batch", "3", "--heldout-tasks", "4", "--quiet"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["train", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


# --------------------------------------------------------------------------------------------
# two runs into one folder at the same time


def test_second_concurrent_run_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "shared"
    # A real `metagrad train` in another process, long enough to be alive while we try.
    first = subprocess.Popen(
        [sys.executable, "-m", "metagrad", "train", "--method", "maml", "--meta-steps",
         "100000", "--snapshot-every", "0", "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # The marker is written once the first run holds the folder (its baseline, 100 000
        # Adam steps, then keeps it busy for minutes).
        while not (out / outdir.MARKER).is_file():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run never started"
            time.sleep(0.1)
        rc, _, err = run_cli(capsys, "--method", "maml", "--out", str(out), *QUICK)
        assert rc == 2 and one_line(err), err
        assert str(out) in err and f"pid {first.pid}" in err and "in use" in err
        assert first.poll() is None  # the first run goes on
        assert not (out / FILES["summary"]).exists()
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: no clean-up code runs
        first.wait()
    # The kernel released the dead process's lock: the folder is usable again.
    rc, _, err = run_cli(capsys, "--method", "maml", "--out", str(out), "--overwrite", *QUICK)
    assert rc == 0, err
    assert (out / outdir.LOCK).exists()  # left behind, harmless


def test_lock_is_reentrant_in_one_process_and_exclusive_across_descriptors(tmp_path):
    with outdir.hold(tmp_path):
        with outdir.hold(tmp_path):  # the command holds the folder, then train() does
            pass
        # Another open file description (as another process would have) cannot take it.
        import fcntl
        fd = os.open(tmp_path / outdir.LOCK, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(tmp_path / outdir.LOCK, os.O_RDWR)  # released on exit
    try:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# one layout over another


def test_single_run_into_an_all_folder_is_refused_and_overwrite_replaces_it(tmp_path, capsys):
    out = tmp_path / "all"
    rc, _, err = run_cli(capsys, "--method", "all", "--out", str(out), *QUICK)
    assert rc == 0, err
    before = (out / "comparison.csv").read_bytes()
    figure = (out / train_cli.FIGURES["curves"]).stat().st_mtime_ns

    rc, _, err = run_cli(capsys, "--method", "maml", "--out", str(out), *QUICK)
    assert rc == 2 and one_line(err), err
    assert "--method all comparison" in err and "--overwrite" in err
    assert (out / "comparison.csv").read_bytes() == before  # untouched
    assert (out / train_cli.FIGURES["curves"]).stat().st_mtime_ns == figure

    rc, _, err = run_cli(capsys, "--method", "maml", "--out", str(out), "--overwrite", *QUICK)
    assert rc == 0, err
    assert list(pd.read_csv(out / "comparison.csv").method) == ["maml",
                                                               "baseline (joint training)"]
    assert not any((out / m).exists() for m in METHOD_NAMES)  # the old layout is gone
    assert json.loads((out / outdir.MARKER).read_text())["kind"] == "single"


def test_all_run_into_a_single_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "one"
    assert run_cli(capsys, "--method", "fomaml", "--out", str(out), *QUICK)[0] == 0
    rc, _, err = run_cli(capsys, "--method", "all", "--out", str(out), *QUICK)
    assert rc == 2 and one_line(err) and "single-method run" in err and "--overwrite" in err
    # A folder written before the marker existed is recognised from its files.
    (out / outdir.MARKER).unlink()
    rc, _, err = run_cli(capsys, "--method", "all", "--out", str(out), *QUICK)
    assert rc == 2 and "single-method run" in err


def test_overwrite_keeps_files_that_are_not_ours(tmp_path, capsys):
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run_cli(capsys, "--method", "maml", "--out", str(out), *QUICK)[0] == 0
    assert run_cli(capsys, "--method", "all", "--out", str(out), "--overwrite", *QUICK)[0] == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / FILES["snapshot"]).exists()  # the single run's files were removed


# --------------------------------------------------------------------------------------------
# non-finite numbers


def strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_non_finite_heldout_mse_is_null_in_json_and_named_in_the_status(tmp_path, capsys):
    # An evaluation step of 1e30 overflows float32. Independent check in float64: after one
    # such step the held-out MSE is far beyond float32's largest number (3.4e38), so the
    # float32 evaluation must be inf or NaN, never a finite number.
    out = tmp_path / "nan"
    rc, _, err = run_cli(capsys, "--method", "fomaml", "--eval-lr", "1e30", "--out", str(out),
                         *QUICK)
    assert rc == 1 and "not finite" in err
    summary = strict_json(out / FILES["summary"])  # no NaN/Infinity tokens
    cfg = TrainConfig(method="fomaml", meta_steps=2, meta_batch=3, heldout_tasks=4).resolved()
    ref = ref_adaptation_curve(final_params(out), heldout(cfg), 1e30, 1)
    assert ref[1] > torch.finfo(torch.float32).max
    assert summary["heldout"]["post_update_mse"]["1"] is None
    assert summary["heldout"]["pre_update_mse"] == pytest.approx(ref[0], rel=1e-5)
    listed = summary["non_finite"]["values"]
    assert "heldout.post_update_mse.1" in listed and listed["heldout.post_update_mse.1"] in (
        "nan", "inf")
    assert "null" in summary["non_finite"]["note"]
    status = pd.read_csv(out / "comparison.csv").set_index("method").loc["fomaml", "status"]
    assert status.startswith("heldout MSE not finite after 1") and "eval_lr" in status


def test_write_json_replaces_every_non_finite_number():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = outdir.write_json(Path(d) / "x.json", {"a": [1.0, math.nan], "b": {
            "c": -math.inf}, "d": 2})
        back = strict_json(path)
    assert back["a"] == [1.0, None] and back["b"]["c"] is None and back["d"] == 2
    assert back["non_finite"]["values"] == {"a[1]": "nan", "b.c": "-inf"}


# --------------------------------------------------------------------------------------------
# folders that cannot be written, and a disk that fills up


def test_out_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    rc, _, err = run_cli(capsys, "--out", str(path), *QUICK)
    assert rc == 2 and one_line(err) and str(path) in err and "cannot be written" in err
    assert sorted(tmp_path.iterdir()) == [path]  # refused up front: nothing was trained
    rc, _, err = run_cli(capsys, "--out", str(path / "below"), *QUICK)
    assert rc == 2 and one_line(err) and "cannot be written" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        rc, _, err = run_cli(capsys, "--out", str(folder), *QUICK)
    finally:
        folder.chmod(0o700)
    assert rc == 2 and one_line(err) and "Permission denied" in err


def test_unwritable_folder_is_refused_with_the_reason(tmp_path, capsys, monkeypatch):
    # The probe write fails as on a read-only file system (EROFS), whoever we run as.
    def read_only(path, mode="r", *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(_app, "open", read_only, raising=False)
    rc, _, err = run_cli(capsys, "--out", str(tmp_path / "ro"), *QUICK)
    assert rc == 2 and one_line(err) and "Read-only file system" in err
    assert not (tmp_path / "ro" / FILES["log"]).exists()


def test_disk_full_during_a_run_is_one_clear_line_and_resume_finishes_it(tmp_path, capsys,
                                                                           monkeypatch):
    out = tmp_path / "full"
    real = snapshot.atomic_write_bytes
    calls = []

    def fills_up(path, data):
        calls.append(path)
        if len(calls) == 2:  # the second snapshot finds the disk full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    monkeypatch.setattr(snapshot, "atomic_write_bytes", fills_up)
    argv = ["--method", "maml", "--meta-steps", "4", "--snapshot-every", "2", "--meta-batch",
            "3", "--heldout-tasks", "4", "--quiet", "--out", str(out)]
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 1 and one_line(err), err
    assert "No space left on device" in err and "snapshot.pt" in err and "--resume" in err
    assert snapshot.load_snapshot(out / FILES["snapshot"])["meta_step"] == 2  # intact
    monkeypatch.setattr(snapshot, "atomic_write_bytes", real)
    rc, _, err = run_cli(capsys, *argv, "--resume")
    assert rc == 0, err
    whole = tmp_path / "whole"
    assert run_cli(capsys, *argv[:-1], str(whole))[0] == 0
    for a, b in zip(final_params(out), final_params(whole), strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# every flag acts on the chosen method(s) or is refused


@pytest.mark.parametrize("flags, message", [
    (["--method", "maml", "--lam", "5"], "--lam is not read by maml"),
    (["--method", "fomaml", "--step", "0.5"], "--step is not read by fomaml"),
    (["--method", "all", "--terms", "0"], None),  # read by neumann: accepted (checked below)
    (["--resume", "--overwrite"], "give one of them"),
    (["--method", "reptile", "--steps", "0"], "reptile needs steps >= 1"),
    (["--method", "maml", "--regime", "solved"], "solved regime is for the implicit"),
    (["--method", "imaml", "--regime", "solved", "--cg-iters", "3"],
     "--cg-iters is not read by imaml in the solved regime"),
    (["--method", "imaml", "--regime", "solved", "--steps", "3"], "--steps does nothing"),
    (["--method", "imaml", "--tune", "--lam", "5"], "--tune chooses lam for imaml"),
    (["--method", "maml", "--tune"], "maml has nothing to tune"),
    (["--preset", "finn2017", "--method", "imaml"], "the protocol of maml"),
    (["--probe-at", "0", "5000"], "probe_at entry 5000 is beyond meta_steps 2000"),
    (["--seeds", "0", "0"], "lists a seed twice"),
    (["--eval-lr", "0"], "eval_lr must be a finite positive number"),
])
def test_flags_that_would_do_nothing_are_refused(tmp_path, capsys, flags, message):
    args = cli.build_parser("train").parse_args(["train", "--out", str(tmp_path), *flags])
    if message is None:
        plan = train_cli.resolve(args)
        assert [c.terms for c in train_cli._configs(plan) if c.method == "neumann"] == [0]
        return
    rc = cli.main(["train", "--out", str(tmp_path / "x"), "--quiet", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and one_line(err) and message in err, err


def test_the_old_checkpoint_every_flag_still_works_with_a_deprecation_message(capsys):
    parser = cli.build_parser("train")
    plan = train_cli.resolve(parser.parse_args(["train", "--checkpoint-every", "7"]))
    assert train_cli._configs(plan)[0].snapshot_every == 7
    err = capsys.readouterr().err
    assert one_line(err) and "--checkpoint-every is deprecated, use --snapshot-every" in err
    same = ["train", "--checkpoint-every", "7", "--snapshot-every", "7"]
    assert train_cli._configs(train_cli.resolve(parser.parse_args(same)))[0].snapshot_every == 7
    with pytest.raises(train_cli.UsageError, match="disagrees with --snapshot-every 5"):
        train_cli.resolve(parser.parse_args(["train", "--checkpoint-every", "7",
                                             "--snapshot-every", "5"]))


def test_the_study_preset_runs_for_one_method(tmp_path, capsys):
    # --preset study with --method maml: the preset's tuning and solved regime apply where
    # they can (maml has no grid and no proximal problem), so the study runs K = 1 and the
    # matched view; an explicit --tune or --regime solved is still refused (above).
    parser = cli.build_parser("train")
    plan = train_cli.resolve(parser.parse_args(["train", "--preset", "study", "--method",
                                                "maml"]))
    assert plan["kind"] == "study" and not plan["tune"] and plan["regimes"] == ("k1",)
    assert plan["matched"] and plan["seeds"] == [0, 1, 2, 3, 4]
    # --no-tune unsets the preset's tuning for a method that has a grid
    plan = train_cli.resolve(parser.parse_args(["train", "--preset", "study", "--method",
                                                "imaml", "--no-tune"]))
    assert not plan["tune"] and plan["regimes"] == ("k1", "solved")
    # a setting given with the preset stays fixed: the preset tunes the rest
    plan = train_cli.resolve(parser.parse_args(["train", "--preset", "study", "--method",
                                                "neumann", "--lam", "500"]))
    from metagrad.train import study
    grids = {v.name: v.grid for v in study.variants(plan["methods"], plan["regimes"],
                                                    plan["tune"], plan["given"])}
    assert grids["neumann"] == {"step": (0.5, 1.0)} and plan["given"] == {"lam": 500.0}
    out = tmp_path / "study"
    rc = cli.main(["train", "--preset", "study", "--method", "maml", "--seeds", "0",
                   "--meta-steps", "2", "--heldout-tasks", "4", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    record = outdir.read_json(out / "study.json")
    assert list(record["settings"]) == ["maml", "maml-matched"] and not record["spec"]["tune"]


def test_seed_and_seeds_together_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--seed", "1", "--seeds", "0", "1"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# Each flag of `metagrad train`, an example value, and what it must change in the plan
# (a TrainConfig field of every run, or a plan key). Flags that act on the run's files
# rather than its numbers are checked by the tests above.
EFFECTS = {
    "--method": (["fomaml"], lambda p: [c.method for c in p["configs"]] == ["fomaml"]),
    "--inner": (["per_step", "multistep"],
                lambda p: p["configs"][0].inner == ("per_step", "multistep")),
    "--shots": (["5"], lambda p: p["configs"][0].shots == 5),
    "--seed": (["7"], lambda p: p["configs"][0].seed == 7),
    "--seeds": (["3", "4"], lambda p: p["seeds"] == [3, 4] and p["kind"] == "study"),
    "--tune": (["--method", "imaml"], lambda p: p["tune"]),
    "--regime": (["both", "--method", "imaml"], lambda p: p["regimes"] == ("k1", "solved")),
    "--matched-cost": ([], lambda p: p["matched"]),
    "--probe-at": (["0", "5"], lambda p: p["configs"][0].probe_at == (0, 5)),
    "--meta-steps": (["7"], lambda p: p["configs"][0].meta_steps == 7),
    "--steps": (["3"], lambda p: p["configs"][0].steps == 3),
    "--inner-lr": (["0.02"], lambda p: p["configs"][0].inner_lr == 0.02),
    "--eval-lr": (["0.05"], lambda p: p["configs"][0].eval_lr == 0.05),
    "--lam": (["7", "--method", "imaml"], lambda p: p["configs"][0].lam == 7.0),
    "--cg-iters": (["2", "--method", "imaml"], lambda p: p["configs"][0].cg_iters == 2),
    "--terms": (["2", "--method", "neumann"], lambda p: p["configs"][0].terms == 2),
    "--step": (["0.5", "--method", "neumann"], lambda p: p["configs"][0].step == 0.5),
    "--meta-batch": (["5"], lambda p: p["configs"][0].meta_batch == 5),
    "--meta-lr": (["0.01"], lambda p: p["configs"][0].meta_lr == 0.01),
    "--device": (["cpu"], lambda p: p["configs"][0].device == "cpu"),
    "--snapshot-every": (["3"], lambda p: p["configs"][0].snapshot_every == 3),
    "--checkpoint-every": (["3"], lambda p: p["configs"][0].snapshot_every == 3),  # old name
    "--heldout-tasks": (["9"], lambda p: p["configs"][0].heldout_tasks == 9),
    "--threads": (["2"], lambda p: p["configs"][0].threads == 2),
    "--compile": ([], lambda p: p["configs"][0].compile is True),
    "--check-every": (["4"], lambda p: p["configs"][0].check_every == 4),
    "--preset": (["finn2017"], lambda p: p["configs"][0].init == "finn2017"
                 and p["configs"][0].meta_steps == 70_000),
}
BEHAVIOUR = {"--out", "--resume", "--overwrite", "--quiet", "-h", "--help"}


def test_every_flag_changes_the_plan_or_the_files():
    parser = cli.build_parser("train")
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    flags = {s for a in sub._actions for s in a.option_strings if s.startswith("--")}
    flags -= {"--no-compile", "--no-tune", "--no-matched-cost"}  # negations
    assert flags == set(EFFECTS) | (BEHAVIOUR - {"-h"}), flags ^ (set(EFFECTS) | BEHAVIOUR)
    for flag, (values, check) in EFFECTS.items():
        argv = ["train", flag, *values] if flag != "--matched-cost" else ["train", flag]
        plan = train_cli.resolve(parser.parse_args(argv))
        plan["configs"] = train_cli._configs(plan)
        assert check(plan), flag


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_method_settings_are_used_or_refused_for_every_method(method):
    # For each method, each method-specific flag either lands in the method's config or is
    # refused; none is silently ignored.
    parser = cli.build_parser("train")
    values = {"lam": "7", "cg_iters": "2", "terms": "2", "step": "0.5"}
    for name, value in values.items():
        args = parser.parse_args(["train", "--method", method, f"--{name.replace('_', '-')}",
                                  value])
        try:
            configs = train_cli._configs(train_cli.resolve(args))
        except train_cli.UsageError as err:
            assert f"is not read by {method}" in str(err)
            assert name not in train_cli.method_class(method).setting_names()
        else:
            assert float(getattr(configs[0], name)) == float(value)
            assert configs[0].method == method


@pytest.mark.parametrize("command, work", [
    (["report", "--sections", "verify"], "metagrad.report.command.ReportContext"),
    (["verify", "--quick"], "metagrad.verify.command.run_cases"),
    (["sweep", "--preset", "tiny"], "metagrad_bench.sweep.sweep"),
])
def test_every_command_refuses_an_out_it_cannot_write_before_working(command, work, tmp_path,
                                                                      capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError(f"{work} ran before --out was checked")

    monkeypatch.setattr(work, must_not_run)
    path = tmp_path / "file"
    path.write_text("x")
    rc = cli.main([*command, "--out", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and one_line(err) and "cannot be written" in err and str(path) in err


@pytest.mark.parametrize("argv, command, message", [
    (["train", "--method", "mamll"], "train", "invalid choice: 'mamll'"),
    (["verify", "--bogus"], "verify", "unrecognized arguments: --bogus"),
    (["sweep", "--repeats", "many"], "sweep", "invalid int value: 'many'"),
    (["bogus"], None, "invalid choice: 'bogus'"),
])
def test_a_bad_flag_is_one_line_naming_the_command(argv, command, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    prog = "metagrad" + (f" {command}" if command else "")
    assert exit_info.value.code == 2 and one_line(err)
    assert err.startswith(f"{prog}: error: ") and message in err and f"{prog} --help" in err
