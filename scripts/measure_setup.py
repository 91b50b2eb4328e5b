"""Measure what a newcomer waits for, `metagrad report` and the test suite, on this machine
at this commit, and write the sentences of README.md and docs/getting-started.md that
quote the numbers.

    python scripts/measure_setup.py               # both: a few minutes plus the suite
    python scripts/measure_setup.py --skip-tests  # metagrad report only (keeps the last
                                                  # test numbers)
    python scripts/measure_setup.py --render      # measure nothing: rewrite the quoted
                                                  # sentences from the committed results

Writes ``bench/results/setup/setup.json`` (the numbers, the commands, the commit and
whether the tree had uncommitted changes, the machine: CPU model, CPU count, load average
before and after, Python, torch, OMP_NUM_THREADS, the date) and its ``README.md``, then
replaces the text between ``<!-- setup-times -->`` and ``<!-- /setup-times -->`` in
README.md and docs/getting-started.md. ``tests/test_docs.py`` checks that those
sentences say what ``setup.json`` holds. Run it on a quiet machine, from a clean checkout
of the commit to be described, in the environment the README's set-up commands make.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "setup"
RESULT = OUT / "setup.json"
QUOTING = (ROOT / "README.md", ROOT / "docs" / "getting-started.md")
BLOCK = re.compile(r"(<!-- setup-times -->)(.*?)(<!-- /setup-times -->)", re.S)
REPORT_CMD = ["metagrad", "report", "--out", "{out}"]
TEST_CMD = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|warnings?)")
NOT_MEASURED = ("How long these take on a given machine is measured by "
                "`python scripts/measure_setup.py` (it writes `bench/results/setup/`); "
                "not yet measured for this version.")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def machine() -> dict[str, Any]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        model = found.group(1).strip() if found else ""
    import torch

    return {"cpu_model": model or platform.processor(), "cpus": os.cpu_count(),
            "arch": platform.machine(), "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def timed(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` from the repository root; its wall time, exit status and output."""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    return {"command": " ".join(cmd), "seconds": round(seconds, 1), "exit_status": done.returncode,
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
            "output_tail": output[-2000:],
            "lines_mentioning_warnings": sum("warn" in line.lower()
                                             for line in output.splitlines())}


def test_counts(output: str) -> dict[str, int]:
    """The counts of pytest's final summary line (``12 passed, 3 skipped in 4.5s``)."""
    summary = [line for line in output.splitlines() if re.search(r"\bin [\d.]+s", line)]
    counts: dict[str, int] = {}
    for number, kind in COUNTS.findall(summary[-1] if summary else ""):
        counts[kind.rstrip("s") if kind.startswith(("error", "warning")) else kind] = int(number)
    return counts


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def sentence(result: dict[str, Any] | None) -> str:
    """What README.md and docs/getting-started.md say about the committed measurement."""
    if not result:
        return NOT_MEASURED
    m = result["machine"]
    where = (f"a {m['cpus']}-core {m['arch']} CPU ({m['cpu_model']}), Python {m['python']}, "
             f"torch {m['torch']}")
    parts = []
    report = result.get("report")
    if report:
        parts.append(f"`metagrad report` took {minutes(report['seconds'])}")
    tests = result.get("tests")
    if tests:
        counts = ", ".join(f"{n} {k}" for k, n in tests["counts"].items() if k != "warning")
        parts.append(f"the test suite {minutes(tests['seconds'])} ({counts})")
    return (f"On {where}, {' and '.join(parts)}, at commit `{result['commit'][:7]}` on "
            f"{result['date']} (`bench/results/setup/`, written by "
            "`python scripts/measure_setup.py`).")


def render(result: dict[str, Any] | None) -> list[Path]:
    """Rewrite the quoted sentences; return the files that changed."""
    changed = []
    for path in QUOTING:
        text = path.read_text()
        new = BLOCK.sub(lambda m: m.group(1) + sentence(result) + m.group(3), text)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def load() -> dict[str, Any] | None:
    return json.loads(RESULT.read_text()) if RESULT.exists() else None


def readme(result: dict[str, Any]) -> str:
    lines = ["# Set-up times", "", "What a newcomer waits for, measured by "
             "`python scripts/measure_setup.py` (all numbers in `setup.json`).", "",
             sentence(result), ""]
    for key in ("report", "tests"):
        if key in result:
            r = result[key]
            lines += [f"- `{r['command']}`: {r['seconds']} s, exit status {r['exit_status']}, "
                      f"load average {r['load_before']} before and {r['load_after']} after, "
                      f"{r['lines_mentioning_warnings']} output lines mentioning warnings"]
    lines += ["", f"Commit `{result['commit']}`"
              + (" with uncommitted changes" if result["dirty"] else "") + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-tests", action="store_true", help="time metagrad report only")
    ap.add_argument("--skip-report", action="store_true", help="time the test suite only")
    ap.add_argument("--render", action="store_true",
                    help="measure nothing; rewrite the quoted sentences from setup.json")
    args = ap.parse_args(argv)
    if args.render:
        for path in render(load()):
            print(f"rewrote {path.relative_to(ROOT)}")
        return 0
    result: dict[str, Any] = dict(load() or {})
    result.update({"commit": git("rev-parse", "HEAD"),
                   "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
                   "date": dt.date.today().isoformat(), "machine": machine()})
    if not args.skip_report:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [part.format(out=Path(tmp) / "report") for part in REPORT_CMD]
            result["report"] = timed(cmd)
            result["report"]["command"] = "metagrad report --out OUT"
        print(f"metagrad report: {result['report']['seconds']} s")
    if not args.skip_tests:
        result["tests"] = timed(TEST_CMD)
        result["tests"]["command"] = "python -m pytest -q -p no:cacheprovider"
        result["tests"]["counts"] = test_counts(result["tests"]["output_tail"])
        print(f"tests: {result['tests']['seconds']} s, {result['tests']['counts']}")
    OUT.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "README.md").write_text(readme(result))
    from metagrad import _provenance

    _provenance.write(OUT, command="python scripts/measure_setup.py", kind="bench",
                      mode="new processes: metagrad report and the test suite",
                      what="how long metagrad report and the test suite take",
                      extra={"trace": None, "reproducibility": "timings: rerun by the command"})
    for path in render(result):
        print(f"rewrote {path.relative_to(ROOT)}")
    failed = [k for k in ("report", "tests") if k in result and result[k]["exit_status"]]
    if failed:
        print(f"measure_setup: {' and '.join(failed)} exited non-zero; see {RESULT}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
