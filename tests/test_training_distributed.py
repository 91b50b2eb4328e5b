"""``metagrad train`` under torchrun: 2 gloo processes on this CPU.

The independent numbers: the single-process run of the same settings (same seed), whose
own correctness ``test_training.py`` checks against a float64 reference; an uninterrupted
run for the resumed one; the file system (which files each rank wrote); and, for the
exchanges, tensors built identically in every worker.

Two ways of starting the processes: ``python -m torch.distributed.run`` as a user would
(the run compared with the single process), and :func:`start_ranks`, which sets the same
environment that torchrun gives its workers (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT) on two plain subprocesses. The latter gives every rank its own working
directory, like two machines without a shared file system (so rank 1's folder shows
whether it wrote anything, and a resume shows that rank 1 never reads the snapshot from
disk), and leaves the test each rank's exit code and the pids to kill. Every launch is
guarded by a timeout: a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from metagrad import cli
from metagrad.train import FILES, TrainConfig, outdir, ranks, read_log, train
from metagrad.train import snapshot as snap

WORLD = 2
GUARD_S = 180
"""Wall-clock guard per launch: far above the ~10 s a launch takes here, far below a hang."""
META_STEPS = 150
FLAGS = ["--method", "maml", "--meta-steps", str(META_STEPS), "--meta-batch", "4",
         "--heldout-tasks", "4", "--snapshot-every", "50", "--quiet"]
CONFIG = TrainConfig(method="maml", meta_steps=META_STEPS, meta_batch=4, heldout_tasks=4,
                     snapshot_every=50)
"""The TrainConfig that ``metagrad train FLAGS`` builds (the 1-40-40-1 net, seed 0)."""

# Distributed vs single process, float32. The first meta-step starts from the same θ₀ and
# the same 4 tasks: only the order of the reduction differs ((l₀ + l₁) + (l₂ + l₃) across
# ranks vs torch's mean), a few float32 ulps (eps = 1.2e-7), measured 1.1e-7 relative.
FIRST_STEP_RTOL = 1e-6
# Each later step starts from parameters that already differ by such rounding, and the Adam
# steps carry it along: measured at most 2.3e-7 relative on the logged losses over the first
# 190 meta-steps. Past that the training dynamics amplify rounding (the difference doubles
# about every 10 meta-steps from meta-step ~200 on, to 1.8e-4 at 300, the same for any two
# runs that differ by rounding), so the runs stop at 150. 1e-4 is far above the rounding and
# still far below a real difference: one meta-step moves every parameter tensor by 4e-4 to
# 3e-3 relative here (checked below), and a rank training on its own slice only, or a
# different task stream, moves the run from the first step on.
RTOL = 1e-4
TIME_COLUMNS = ("step_time_s", "wall_time_s")


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT") and not k.startswith("TORCHELASTIC")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(argv: list[str], cwds: list[Path]) -> list[subprocess.Popen]:
    """``python <argv>`` once per rank, each in its own working directory, with the
    environment torchrun sets for its workers."""
    port = str(free_port())
    procs = []
    for rank, cwd in enumerate(cwds):
        cwd.mkdir(parents=True, exist_ok=True)
        env = environment(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(len(cwds)),
                          LOCAL_WORLD_SIZE=str(len(cwds)), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of every rank; a test failure if any runs past the guard."""
    deadline = time.monotonic() + GUARD_S
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outs.append((proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.communicate()
        pytest.fail(f"the ranks did not finish within {GUARD_S} s (a hang)")
    return outs


def train_argv(out: str | Path, *extra: str) -> list[str]:
    return ["-m", "metagrad", "train", *FLAGS, "--out", str(out), *extra]


def model_state(folder: Path) -> dict[str, torch.Tensor]:
    return snap.load_snapshot(folder / FILES["snapshot"])["model"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def without_times(log: pd.DataFrame) -> pd.DataFrame:
    return log[[c for c in log.columns if c not in TIME_COLUMNS]]


# --------------------------------------------------------------------------------------------
# the runs compared by several tests


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process run of CONFIG (in this process), and its parameters one meta-step
    before the end (a run stopped there and resumed is bit-identical to an uninterrupted one,
    see test_training.py)."""
    folder = tmp_path_factory.mktemp("single")
    before = train(CONFIG, folder, progress=False, stop_after=META_STEPS - 1).params
    result = train(CONFIG, folder, progress=False, resume=True)
    return result, before


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory):
    """``torchrun --standalone --nproc-per-node 2 -m metagrad train FLAGS``."""
    folder = tmp_path_factory.mktemp("torchrun")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(WORLD), *train_argv(folder / "out")]
    proc = subprocess.run(command, cwd=folder, env=environment(), capture_output=True,
                          text=True, timeout=GUARD_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder / "out", proc.stdout


# --------------------------------------------------------------------------------------------


def test_torchrun_gives_the_single_process_result(single, torchrun):
    result, before = single
    out, stdout = torchrun
    dist_log = read_log(out / FILES["log"])
    log = result.log
    assert list(dist_log["meta_step"]) == list(range(1, META_STEPS + 1))
    for column in ("pre_update_loss", "post_update_loss"):
        assert dist_log[column][0] == pytest.approx(log[column][0], rel=FIRST_STEP_RTOL)
        worst = ((dist_log[column] - log[column]).abs() / log[column].abs()).max()
        assert worst <= RTOL, (column, worst)
    assert (dist_log["warnings"] == log["warnings"]).all()

    state = model_state(out)
    for name, value in result.params.items():
        drift = rel(state[name], value)
        one_step = rel(value, before[name])  # what one meta-step moves this tensor
        assert drift <= RTOL and drift <= one_step / 10, (name, drift, one_step)

    summary = outdir.read_json(out / FILES["summary"])
    assert summary["processes"] == WORLD and result.summary["processes"] == 1
    for k, value in result.summary["heldout"]["post_update_mse"].items():
        assert summary["heldout"]["post_update_mse"][k] == pytest.approx(value, rel=RTOL)
    # The baseline is computed by every rank alike, from the same seed as in one process.
    assert summary["baseline"]["mse_by_steps"] == result.summary["baseline"]["mse_by_steps"]
    # Rank 0 alone prints the table and writes the files.
    assert stdout.count("| maml") == 1 and stdout.count("wrote ") == 1, stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_kill_9_and_resume_on_two_processes_is_bit_identical(torchrun, single, tmp_path):
    whole, _ = torchrun
    cwds = [tmp_path / "rank0", tmp_path / "rank1"]
    out = cwds[0] / "out"  # --out is relative: each rank would write into its own folder

    procs = start_ranks(train_argv("out"), cwds)
    deadline = time.monotonic() + GUARD_S
    try:
        while not (out / FILES["snapshot"]).exists():
            assert all(p.poll() is None for p in procs), finish(procs)
            assert time.monotonic() < deadline, "no snapshot was written"
            time.sleep(0.01)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)  # no clean-up code runs on either rank
    assert [code for code, _, _ in finish(procs)] == [-signal.SIGKILL] * WORLD
    killed_at = snap.load_snapshot(out / FILES["snapshot"])["meta_step"]
    assert 50 <= killed_at < META_STEPS, killed_at
    copy = shutil.copytree(out, tmp_path / "one process")  # resumed below by one process

    # Resumed by 2 processes: rank 1 has no snapshot on its disk, rank 0 sends it.
    results = finish(start_ranks(train_argv("out", "--resume"), cwds))
    assert [code for code, _, _ in results] == [0, 0], results
    assert list(cwds[1].iterdir()) == []  # rank 1 wrote nothing, ever

    # Same processes, same slices, the same state restored exactly: the same bits.
    resumed, reference = model_state(out), model_state(whole)
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name
    pd.testing.assert_frame_equal(without_times(read_log(out / FILES["log"])),
                                  without_times(read_log(whole / FILES["log"])),
                                  check_exact=True)
    assert outdir.read_json(out / FILES["summary"])["heldout"] == \
        outdir.read_json(whole / FILES["summary"])["heldout"]

    # Resumed by one process: the task stream does not depend on the number of processes,
    # so only the reduction order changes, from meta-step killed_at + 1 on.
    one = train(CONFIG, copy, progress=False, resume=True)
    for name, value in one.params.items():
        assert rel(value, reference[name]) <= RTOL, name
    log = read_log(Path(copy) / FILES["log"])
    assert (log["pre_update_loss"][:killed_at] == read_log(whole / FILES["log"])[
        "pre_update_loss"][:killed_at]).all()  # the rows of the snapshot, as they were
    worst = ((log["post_update_loss"] - single[0].log["post_update_loss"]).abs()
             / single[0].log["post_update_loss"]).max()
    assert worst <= RTOL


def test_learned_rates_under_torchrun_follow_the_single_process_run(tmp_path):
    # Meta-SGD's per-entry rates are meta-parameters: every rank steps them from the same
    # all-reduced rate-gradient, and each snapshot is written only after the ranks' θ, rates
    # and optimizer state were checked bit-identical. The single-process run of the same
    # settings is the independent number (the same tolerance as θ above, same reasons).
    steps = 30
    flags = ["--method", "metasgd", "--meta-steps", str(steps), "--meta-batch", "4",
             "--heldout-tasks", "4", "--snapshot-every", "10", "--quiet"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(WORLD), "-m", "metagrad", "train", *flags,
               "--out", str(tmp_path / "out")]
    proc = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True,
                          text=True, timeout=GUARD_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    single = train(TrainConfig(method="maml", inner=("per_entry",), meta_steps=steps,
                               meta_batch=4, heldout_tasks=4, snapshot_every=10),
                   tmp_path / "single", progress=False)
    saved = snap.load_snapshot(tmp_path / "out" / FILES["snapshot"])
    assert saved["meta_step"] == steps and saved["processes"] == WORLD
    for name, rate in single.rates.items():
        assert rel(saved["rates"][name], rate) <= RTOL, name
        # 30 Adam steps of ~1e-3 each moved the rates far beyond that tolerance from 0.01
        assert rel(rate, torch.full_like(rate, 0.01)) > 100 * RTOL, name
    for name, value in single.params.items():
        assert rel(saved["model"][name], value) <= RTOL, name
    log = read_log(tmp_path / "out" / FILES["log"])
    assert (log["rate_max"] - single.log["rate_max"]).abs().max() <= RTOL * 0.01


def test_locked_folder_stops_every_rank_with_the_message(tmp_path):
    folder = tmp_path / "busy"
    folder.mkdir()
    cwds = [tmp_path / "rank0", tmp_path / "rank1"]
    with outdir.hold(folder):  # this process holds the lock, as a running train would
        results = finish(start_ranks(train_argv(folder), cwds))
    for rank, (code, _, err) in enumerate(results):
        assert code == 2, (rank, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (rank, err)
        assert "is in use by another metagrad train run" in err and f"pid {os.getpid()}" in err
    assert results[0][2] == results[1][2]  # the same line on every rank
    assert not (folder / FILES["log"]).exists() and not (folder / outdir.MARKER).exists()
    assert all(not any(cwd.iterdir()) for cwd in cwds)


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "0", "1"], "is not spread over processes"),
    (["--meta-batch", "1"], "--meta-batch 1 is smaller than the 2 processes"),
])
def test_what_torchrun_cannot_do_is_refused_before_starting(tmp_path, capsys, monkeypatch,
                                                             flags, message):
    # Refused from the flags and WORLD_SIZE alone, identically on every rank, before the
    # process group exists (so no rank waits for another): checked here in one process.
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc = cli.main(["train", "--out", str(tmp_path / "x"), "--quiet", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_a_world_without_torchrun_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    rc = cli.main(["train", "--out", str(tmp_path / "x"), "--quiet", "--meta-steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "start the processes with torchrun" in err, err


# --------------------------------------------------------------------------------------------
# the exchanges themselves, in two workers (this file run as a script)


def scenario(rank: int) -> dict:
    """What the other rank sees of rank 0's errors, the gathered per-task rows, and the
    check that the ranks' parameters are identical."""
    me = ranks.current()
    seen: dict = {"value": me.from_writer(lambda: {"rank": me.rank, "path": Path("a/b")})}
    failures = {
        "usage": outdir.FolderBusy("--out 'x' is in use"),
        "snapshot": snap.SnapshotError("x/snapshot.pt is corrupted"),
        "disk": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "x/summary.json"),
        "other": KeyError("boom"),
    }
    for name, error in failures.items():
        def fail(error=error):
            raise error
        try:
            me.from_writer(fail)
            seen[name] = None
        except Exception as err:  # noqa: BLE001  (the test inspects it)
            seen[name] = (type(err).__name__, str(err), getattr(err, "errno", None))

    # 5 tasks on 2 ranks: rows 0-2 on rank 0, 3-4 on rank 1 (metagrad.shard_tasks).
    import metagrad as mg
    tasks = mg.Sinusoid().sample(5, seed=0)
    full = {"loss": torch.arange(5, dtype=torch.float32) / 3,
            "steps": torch.arange(15, dtype=torch.int64).reshape(5, 3) * 7,
            "matrix": torch.randn(5, 2, 2, generator=torch.Generator().manual_seed(0))}
    lo, hi = (0, 3) if rank == 0 else (3, 5)
    seen["gathered"] = me.gather_tasks({k: v[lo:hi] for k, v in full.items()}, tasks)
    seen["full"] = full

    params = {"w": torch.linspace(-1, 1, 7), "b": torch.zeros(2)}
    state = {"model": params, "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}}}
    me.check_identical(state, 5)  # identical: passes on both
    if rank == 1:  # one float32 ulp on one entry of one rank
        params["w"][3] = torch.nextafter(params["w"][3], torch.tensor(1.0))
    try:
        me.check_identical(state, 7)
        seen["diverged"] = None
    except ranks.RanksDiverged as err:
        seen["diverged"] = str(err)
    return seen


def worker(rank: int, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=WORLD)
    torch.save(scenario(rank), f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


def test_exchanges_between_the_ranks(tmp_path):
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(tmp_path)],
                              env=environment(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(WORLD)]
    results = finish(procs)
    assert [code for code, _, _ in results] == [0, 0], results
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))

    for r in (r0, r1):
        assert r["value"] == {"rank": 0, "path": Path("a/b")}  # rank 0's value everywhere
        # every rank raises rank 0's error: the same kind, the same message
        assert r["usage"][1] == "--out 'x' is in use"
        assert r["snapshot"][:2] == ("SnapshotError", "x/snapshot.pt is corrupted")
        assert r["disk"][0] == "OSError" and r["disk"][2] == errno.ENOSPC
        assert "No space left on device" in r["disk"][1] and "x/summary.json" in r["disk"][1]
        # the rows of all ranks, in task order, with their dtypes: the tensors themselves
        for k, value in r["full"].items():
            assert r["gathered"][k].dtype == value.dtype and torch.equal(r["gathered"][k],
                                                                         value), k
        assert "differ after meta-step 7" in r["diverged"] and "rank 0" in r["diverged"] \
            and "rank 1" in r["diverged"]
    assert r0["usage"][0] == "FolderBusy"  # rank 0 raises its own exception, the others
    assert r1["usage"][0] == "UsageError"  # the kind the command reports as one line
    assert r0["other"][0] == "KeyError"
    assert r1["other"][:2] == ("RuntimeError", "rank 0 failed: KeyError: 'boom'")
    assert r0["diverged"] == r1["diverged"]


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2])
