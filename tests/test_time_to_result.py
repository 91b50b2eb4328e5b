"""The time-to-result harness (``metagrad_bench.time_to_result``) trains the same model in
its JAX child and its metagrad child: a short run of each must end at the same parameters
(JAX's meta-gradient and hand-written Adam are written without metagrad). Timings are
written, never asserted."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest


def test_jax_and_metagrad_children_train_the_same_model(tmp_path):
    pytest.importorskip("jax")
    out = tmp_path / "ttr"
    done = subprocess.run(
        [sys.executable, "-m", "metagrad_bench.time_to_result", "--steps", "3", "--rounds", "1",
         "--cases", "maml K=1", "--runs", "jax", "eager", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = pd.read_csv(out / "time_to_result.csv").set_index("variant")
    assert set(rows.index) == {"jax", "eager"} and rows.loc["eager", "path"] == "eager"
    # float32 on both sides: the same three meta-steps agree to rounding
    for column in ("param_norm", "final_post_loss"):
        a, b = float(rows.loc["jax", column]), float(rows.loc["eager", column])
        assert abs(a - b) <= 1e-5 * abs(a), (column, a, b)
    assert (out / "provenance.json").is_file() and (out / "time_to_result.md").is_file()
