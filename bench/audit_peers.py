"""The published audit of the peer libraries: ``metagrad audit peer:NAME`` for every peer
library and every method it offers, each run exactly as a user would type it.

    python -m metagrad_bench.audit_peers --out bench/results/audit

For each run, ``DIR/<library>-<method>[-<inner>][-float32]/`` holds what ``metagrad audit
... --out`` writes (``audit.md``: the table and the diagnosis; ``audit.csv``;
``audit.json``) and ``stdout.txt``, what the command printed. ``DIR/summary.md`` has one row
per run (the command, the verdict, the worst error, the diagnosis), ``DIR/environment.md``
the library versions, the machine and the date, ``DIR/provenance.json`` metagrad's commit
and the command. The verdicts on the failures (a bug in the library, or a different
definition) are in ``DIR/README.md``, written by hand from the evidence in the adapters'
docstrings (``bench/peers/*.py``). ``--only inner`` reruns the inner-loop variants alone
(learned rates, momentum, Adam), ``--only methods`` the textbook loops.

The peers are optional (``bash scripts/install_peers.sh``); one that does not import is
listed as such and skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata as md
import io
import json
import os
import platform
import shlex
import sys
from pathlib import Path

RUNS: list[tuple[str, str, str]] = [
    # (library, method, the flags after --method)
    ("higher", "maml", ""),
    ("higher", "fomaml", ""),
    ("learn2learn", "maml", ""),
    ("learn2learn", "fomaml", ""),
    ("torchopt", "maml", ""),
    ("torchopt", "fomaml", ""),
    ("torchopt", "imaml", "--lam 2 --cg-iters 5"),
    ("torchopt", "imaml", "--variant normal_cg --lam 2 --cg-iters 5"),
    ("torchopt", "neumann", "--lam 2 --terms 5"),
    ("betty", "imaml", "--lam 2 --cg-iters 5"),
    ("betty", "neumann", "--lam 2 --terms 5"),
    ("betty", "maml", ""),
    # -- inner-loop variants: learned rates, momentum and Adam inner loops ----------------
    ("learn2learn", "maml", "--inner per_entry"),
    ("learn2learn", "fomaml", "--inner per_entry"),
    ("learn2learn", "maml", "--inner per_tensor"),
    ("torchopt", "maml", "--inner momentum"),
    ("torchopt", "maml", "--inner nesterov"),
    ("torchopt", "maml", "--inner adam"),
    ("torchopt", "maml", "--inner adam --float32"),
    ("torchopt", "maml", "--inner one_rate"),
    ("torchopt", "maml", "--inner one_rate,momentum"),
    ("torchopt", "maml", "--inner one_rate,adam"),
    ("torchopt", "fomaml", "--inner adam"),
    ("higher", "maml", "--inner momentum"),
    ("higher", "maml", "--inner nesterov"),
    ("higher", "maml", "--inner adam"),
    ("higher", "maml", "--inner adam --float32"),
    ("higher", "maml", "--inner per_tensor,momentum"),
    ("higher", "maml", "--inner one_rate,adam"),
    ("higher", "fomaml", "--inner adam"),
]
"""Every method each library offers (betty's MAML is listed to record that it has none),
then the inner-loop variants each one runs (its adapter's ``AUDIT_INNER``): learn2learn's
``MetaSGD`` (per-entry or per-tensor rates), torchopt's ``MetaSGD`` with momentum and
``MetaAdam`` (a learned ``lr``), higher's differentiable momentum SGD and Adam (learned
rates through ``override``). Settings not given take the method's defaults (steps=5,
inner_lr=0.01)."""

DISTRIBUTIONS = {"higher": "higher", "learn2learn": "learn2learn", "torchopt": "torchopt",
                 "betty": "betty-ml"}


def command(library: str, method: str, flags: str) -> str:
    return f"metagrad audit peer:{library} --method {method}" + (f" {flags}" if flags else "")


def folder_name(library: str, method: str, flags: str) -> str:
    argv = shlex.split(flags)
    variant = argv[argv.index("--variant") + 1] if "--variant" in argv else ""
    inner = argv[argv.index("--inner") + 1].replace(",", "+") if "--inner" in argv else ""
    return (f"{library}-{method}" + (f"-{variant}" if variant else "")
            + (f"-{inner}" if inner else "") + ("-float32" if "--float32" in argv else ""))


def run_one(library: str, method: str, flags: str, out: Path) -> dict:
    """Run the CLI in-process; return the summary row."""
    from metagrad.cli import main

    folder = out / folder_name(library, method, flags)
    folder.mkdir(parents=True, exist_ok=True)
    line = command(library, method, flags)
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        status = main(shlex.split(line)[1:] + ["--out", str(folder)])
    (folder / "stdout.txt").write_text(printed.getvalue() + errors.getvalue())
    argv = shlex.split(flags)
    inner = argv[argv.index("--inner") + 1] if "--inner" in argv else ""
    row = {"library": library, "method": method,
           "inner": inner + (" (float32)" if "--float32" in argv else ""), "command": line,
           "exit": status, "folder": folder.name}
    report = folder / "audit.json"
    if status == 2 or not report.exists():
        row.update(result="not offered" if "offers no" in errors.getvalue() else "error",
                   worst_error=None, diagnosis=errors.getvalue().strip(), details="stdout.txt")
        return row
    data = json.loads(report.read_text())
    cases = data["cases"]
    errs = [c[k] for c in cases for k in ("err_reference", "err_fd", "err_rate_reference",
                                          "err_rate_fd") if c.get(k) is not None]
    failed = [c for c in cases if c["status"] == "FAIL"]
    keys = sorted({c["closest"] for c in failed if c["closest"]})
    row.update(result="passed" if data["passed"] else "FAILED",
               cases=f"{sum(c['status'] == 'pass' for c in cases)}/"
                     f"{sum(c['status'] != 'not run' for c in cases)}",
               worst_error=max(errs) if errs else None,
               diagnosis=", ".join(keys), details="audit.md")
    return row


def environment() -> dict:
    versions = {}
    for name in ("torch", *DISTRIBUTIONS.values()):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu,
            "cores": os.cpu_count(), "versions": versions}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.1e}"


def write_summary(rows: list[dict], env: dict, out: Path) -> None:
    lines = ["# Peer audit: summary", "",
             "One row per `metagrad audit` run (float64; settings not given take the method's "
             "defaults, steps=5 and inner_lr=0.01). `cases` counts the passing battery cases "
             "among those that ran; `diagnosis` lists the closest known mistakes of the "
             "failing cases (see each folder's `audit.md` for the sentences, and README.md "
             "for the verdicts).", "",
             "| library | method | inner loop | command | result | cases | worst error | "
             "diagnosis | details |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        diag = r["diagnosis"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['library']} | {r['method']} | {r.get('inner') or 'textbook'} | "
                     f"`{r['command']}` | {r['result']} | "
                     f"{r.get('cases', 'n/a')} | {_fmt(r['worst_error'])} | {diag} | "
                     f"[{r['folder']}/{r['details']}]({r['folder']}/{r['details']}) |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    env_lines = ["# Peer audit: environment", "", f"- date: {env['date']}",
                 f"- python {env['python']} on {env['platform']}",
                 f"- CPU: {env['cpu']} ({env['cores']} cores)", "- versions: "
                 + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), "",
                 "Command: `python -m metagrad_bench.audit_peers --out bench/results/audit`, "
                 "after `bash scripts/install_peers.sh`."]
    (out / "environment.md").write_text("\n".join(env_lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/audit")
    parser.add_argument("--only", choices=("methods", "inner"), default=None,
                        help="the textbook loops alone, or the inner-loop variants alone")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    rows = []
    for library, method, flags in RUNS:
        if args.only is not None and ("--inner" in flags) != (args.only == "inner"):
            continue
        if env["versions"][DISTRIBUTIONS[library]] == "not installed":
            print(f"{library}: not installed, skipped (bash scripts/install_peers.sh)")
            continue
        row = run_one(library, method, flags, out)
        print(f"{row['command']}: {row['result']} {row.get('cases', '')} "
              f"{row['diagnosis'][:100]}")
        rows.append(row)
    if args.only is not None:  # keep the other runs' rows, as committed
        rows = _merged(rows, out)
    write_summary(rows, env, out)
    _write_provenance(out, env, args)
    print(f"wrote {out}/summary.md, {out}/environment.md, {out}/provenance.json and one "
          "folder per run")
    return 0


def _merged(rows: list[dict], out: Path) -> list[dict]:
    """The runs just made, in RUNS order, with the others' rows read back from their
    folders (as they were committed)."""
    done = {r["folder"]: r for r in rows}
    merged = []
    for library, method, flags in RUNS:
        folder = folder_name(library, method, flags)
        if folder in done:
            merged.append(done[folder])
        elif (out / folder / "audit.json").exists() or (out / folder / "stdout.txt").exists():
            merged.append(_row_from_folder(library, method, flags, out / folder))
    return merged


def _row_from_folder(library: str, method: str, flags: str, folder: Path) -> dict:
    argv = shlex.split(flags)
    inner = argv[argv.index("--inner") + 1] if "--inner" in argv else ""
    row = {"library": library, "method": method,
           "inner": inner + (" (float32)" if "--float32" in argv else ""),
           "command": command(library, method, flags), "folder": folder.name}
    report = folder / "audit.json"
    if not report.exists():
        text = (folder / "stdout.txt").read_text().strip()
        row.update(result="not offered" if "offers no" in text else "error", worst_error=None,
                   diagnosis=text, details="stdout.txt")
        return row
    data = json.loads(report.read_text())
    cases = data["cases"]
    errs = [c[k] for c in cases for k in ("err_reference", "err_fd", "err_rate_reference",
                                          "err_rate_fd") if c.get(k) is not None]
    row.update(result="passed" if data["passed"] else "FAILED",
               cases=f"{sum(c['status'] == 'pass' for c in cases)}/"
                     f"{sum(c['status'] != 'not run' for c in cases)}",
               worst_error=max(errs) if errs else None,
               diagnosis=", ".join(sorted({c["closest"] for c in cases
                                           if c["status"] == "FAIL" and c["closest"]})),
               details="audit.md")
    return row


def _write_provenance(out: Path, env: dict, args: argparse.Namespace) -> None:
    """``out/provenance.json``: metagrad's commit, the command, the peers' versions."""
    from metagrad import _provenance

    only = f" --only {args.only}" if args.only else ""
    _provenance.write(
        out, command=f"python -m metagrad_bench.audit_peers --out {args.out}{only}",
        mode="eager (float64; float32 where the run says so)", kind="bench",
        what="the peer libraries' meta-gradients (and rate-gradients) audited against the "
             "oracle",
        extra={"third_party": {k: v for k, v in env["versions"].items() if k != "torch"},
               "setup": "bash scripts/install_peers.sh", "trace": None,
               "reproducibility": "no trace: an audit, rerun by its command"})


if __name__ == "__main__":
    sys.exit(main())
