"""The committed peer audit (``bench/results/audit``) is what its runner produces, and the
inner-loop timing harness (``python -m metagrad_bench.peers.variants``) runs.

* every run of ``metagrad_bench.audit_peers.RUNS`` has its folder, its row in
  ``summary.md`` (with the verdict its ``audit.json`` records) and its command in the
  hand-written ``README.md``; ``provenance.json`` names the command and a commit;
* the timing harness refuses bad arguments in one line and, on a smoke run, writes its
  table with metagrad's row and a ratio of 1 for it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from metagrad_bench import audit_peers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "audit"


def test_every_run_is_committed_with_its_verdict():
    summary = (RESULTS / "summary.md").read_text()
    readme = (RESULTS / "README.md").read_text()
    for library, method, flags in audit_peers.RUNS:
        folder = RESULTS / audit_peers.folder_name(library, method, flags)
        line = audit_peers.command(library, method, flags)
        assert folder.is_dir(), folder
        assert f"`{line}`" in summary and f"`{line}`" in readme, line
        report = folder / "audit.json"
        if report.exists():
            verdict = "passed" if json.loads(report.read_text())["passed"] else "FAILED"
            row = next(r for r in summary.splitlines() if f"`{line}`" in r)
            assert f"| {verdict} |" in row, row


def test_provenance_names_the_command_and_a_commit():
    record = json.loads((RESULTS / "provenance.json").read_text())
    assert record["command"].startswith("python -m metagrad_bench.audit_peers --out")
    assert record["commit"] and not record["dirty"]


def test_folder_names():
    assert audit_peers.folder_name("torchopt", "maml", "--inner one_rate,adam --float32") == \
        "torchopt-maml-one_rate+adam-float32"
    assert audit_peers.folder_name("torchopt", "imaml", "--variant normal_cg --lam 2") == \
        "torchopt-imaml-normal_cg"


def test_variant_timing_harness(tmp_path, capsys):
    from metagrad_bench.peers import variants

    with pytest.raises(SystemExit):
        variants.main(["--repeats", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        variants.main(["--cases", "sgd K=1", "--out", str(tmp_path)])
    assert "must be at least 2" in capsys.readouterr().err
    assert variants.main(["--cases", "momentum K=1", "--repeats", "2", "--out",
                          str(tmp_path)]) == 0
    with (tmp_path / "variants.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    ours = next(r for r in rows if r["implementation"] == "metagrad")
    assert ours["case"] == "momentum K=1" and float(ours["time_over_metagrad"]) == 1.0
    assert float(ours["median_ms"]) > 0
    assert "momentum K=1" in (tmp_path / "variants.md").read_text()
    assert (tmp_path / "provenance.json").exists()
