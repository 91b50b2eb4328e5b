"""The audit's result: one row per battery case, as a markdown table, CSV and JSON.

Written with the standard library only (``csv``, ``json``), so that ``import
metagrad.testing`` stays light enough for another project's test suite.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("pass", "FAIL", "not run")


@dataclass
class CaseResult:
    """One battery case: the target's errors against the dense float64 reference and
    (where the method's quantity is a gradient) central finite differences, the
    tolerances, the verdict and, when it failed, the diagnosis.

    Attributes
    ----------
    case : str
        The case's name, e.g. ``"scalar+matrix, T=3, K=2"``.
    problem : str
        The problem it ran on, in words.
    tasks : int
        T, the number of tasks.
    dim : int
        d, the number of parameters.
    settings : dict[str, Any]
        The method's settings in this case.
    status : str
        ``"pass"``, ``"FAIL"``, or ``"not run"`` (a factory that refused settings the user
        did not ask for, or code that said it cannot express the case by raising
        ``NotImplementedError``).
    err_reference, err_fd : float or None
        Relative error ‖g − g_ref‖/‖g_ref‖ against the dense reference and against
        central finite differences (None where not computed).
    err_rate_reference, err_rate_fd : float or None
        The same for the rate-gradient (learned inner step sizes), where the audit has
        learned rates and the target returned their gradient (finite differences: MAML).
    tol_reference, tol_fd : float or None
        The tolerances those errors were held to.
    diagnosis : str
        Full sentence for a failure (or why the case did not run); empty for a pass.
    closest : str or None
        Key of the closest known mistake or combination (e.g. ``"first_order"``,
        ``"damped+plain_inner"``, ``"float32_rounding"``), for a failure.
    closest_title : str or None
        What the closest candidate's value is, in words (e.g. ``"FOMAML's ∇L_val(φ)"``).
    closest_error : float or None
        Relative distance of the result from that candidate's value.
    why : str
        What the code did to compute the closest candidate, in words.
    match : bool
        The result equals the closest candidate to the tolerance (or, in float64 mode, up
        to float32 rounding).
    also : list[str]
        Other candidates the result equals as well (they coincide on this case).
    separations : dict[str, float]
        How far each known mistake is from the correct value on this case.
    ranking : list[tuple[str, float]]
        For a failure: the closest candidates and the correct value (``"correct"``), with
        their relative distances from the result, closest first.
    fitted : dict[str, float]
        The fitted free parameters of the closest candidate (e.g. a damping).
    notes : list[str]
        Remarks that are no failure (a result that carries an autograd graph).
    """

    case: str
    problem: str
    tasks: int
    dim: int
    settings: dict[str, Any]
    status: str
    err_reference: float | None = None
    err_fd: float | None = None
    err_rate_reference: float | None = None
    err_rate_fd: float | None = None
    tol_reference: float | None = None
    tol_fd: float | None = None
    diagnosis: str = ""
    closest: str | None = None
    closest_title: str | None = None
    closest_error: float | None = None
    why: str = ""
    match: bool = False
    also: list[str] = field(default_factory=list)
    separations: dict[str, float] = field(default_factory=dict)
    ranking: list[tuple[str, float]] = field(default_factory=list)
    fitted: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True for a case that ran and passed."""
        return self.status == "pass"

    @property
    def short_diagnosis(self) -> str:
        """The diagnosis in a few words, for the table's last column."""
        if self.status == "pass":
            return ""
        if self.status == "not run":
            return self.diagnosis.split(": ", 1)[-1][:110]
        if self.closest is not None and self.closest_error is not None:
            sign = "=" if self.match else "closest:"
            return f"{sign} {self.closest} ({self.closest_error:.0e})"
        return self.diagnosis.split(": ", 1)[-1][:90]


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.1e}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


@dataclass
class AuditResult:
    """What :func:`metagrad.testing.check_meta_gradient` and :func:`gradcheck` return.

    Attributes
    ----------
    method : str
        The method the target was checked as.
    settings : dict[str, Any]
        The method's settings.
    target : str
        What was audited (the callable's name, or ``peer:torchopt``).
    float32 : bool
        Whether the float32 mode ran.
    cases : list[CaseResult]
        One row per battery case.
    notes : list[str]
        Remarks on the battery (bug classes it could not separate at these settings) and on
        the results (a result carrying an autograd graph).
    module : str or None
        The criterion of a module target (``"cross_entropy"``, ``"mse"``), None otherwise.
    variant : str or None
        The inner-loop variant checked (forms, rule, step weights), None for the textbook
        loop.
    """

    method: str
    settings: dict[str, Any]
    target: str
    float32: bool
    cases: list[CaseResult]
    notes: list[str] = field(default_factory=list)
    module: str | None = None
    variant: str | None = None

    @property
    def passed(self) -> bool:
        """True when every case that ran passed (and at least one ran)."""
        ran = [c for c in self.cases if c.status != "not run"]
        return bool(ran) and all(c.passed for c in ran)

    @property
    def failures(self) -> list[CaseResult]:
        """The cases that ran and failed."""
        return [c for c in self.cases if c.status == "FAIL"]

    @property
    def worst_error(self) -> float | None:
        """The largest relative error of any case, against either reference (None if none)."""
        errors = [e for c in self.cases for e in (c.err_reference, c.err_fd,
                                                  c.err_rate_reference, c.err_rate_fd)
                  if e is not None]
        return max(errors) if errors else None

    @property
    def diagnosis(self) -> str:
        """One paragraph: the verdict, the common mistake if every failure is the same one,
        and each failing case's diagnosis."""
        failures = self.failures
        ran = sum(c.status != "not run" for c in self.cases)
        refused = [f"- not run: {c.diagnosis}" for c in self.cases if c.status == "not run"]
        if not failures:
            verdict = (f"{self.method}: all {ran} cases that ran pass" if ran
                       else f"{self.method}: no case ran")
            return "\n".join([verdict, *refused])
        lines = [f"{self.method}: {len(failures)} of {ran} cases FAIL."]
        keys = {c.closest for c in failures if c.match}
        if len(keys) == 1 and all(c.match for c in failures):
            first = failures[0]
            if first.closest == "float32_rounding":
                lines.append("In every failing case your result agrees with the correct value "
                             "to float32 rounding: rerun with --float32 (float32=True).")
            else:
                lines.append(f"In every failing case your result equals {first.closest_title}: "
                             f"{first.why}.")
        for c in failures:
            lines.append(f"- {c.diagnosis}")
            if c.ranking:
                lines.append("  distances from your result: " + ", ".join(
                    f"{key} {dist:.1e}" for key, dist in c.ranking))
        return "\n".join(lines + refused)

    def header(self) -> str:
        """One line: the target, the method, its settings, the precision and the form."""
        settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in self.settings.items())
        mode = "float32" if self.float32 else "float64"
        form = f"; nn.Module form, {self.module}" if self.module else ""
        inner = f"; inner loop: {self.variant}" if self.variant else ""
        return f"{self.target} as {self.method} ({settings}{inner}; {mode}{form})"

    def table(self) -> str:
        """Markdown: one row per case, errors, verdict and the short diagnosis."""
        rates = any(c.err_rate_reference is not None for c in self.cases)
        head = ["case", "d", "vs reference", "vs finite diff",
                *(["rates vs reference", "rates vs finite diff"] if rates else []),
                "tolerance", "result", "diagnosis"]
        rows = [head, ["---"] * len(head)]
        for c in self.cases:
            tol = _fmt(c.tol_reference) + (f" / {_fmt(c.tol_fd)}" if c.tol_fd is not None
                                           else "")
            rate_cells = [_fmt(c.err_rate_reference), _fmt(c.err_rate_fd)] if rates else []
            rows.append([c.case, str(c.dim), _fmt(c.err_reference), _fmt(c.err_fd),
                         *rate_cells, tol, c.status, c.short_diagnosis])
        return "\n".join("| " + " | ".join(_cell(x) for x in row) + " |" for row in rows)

    def report(self) -> str:
        """The header, the table, the diagnosis and the notes: what a failure prints."""
        parts = [self.header(), "", self.table(), "", self.diagnosis]
        if self.notes:
            parts += ["", *[f"Note: {n}" for n in self.notes]]
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.report()

    def rows(self) -> list[dict[str, Any]]:
        """Flat dicts, one per case (the CSV's rows)."""
        out = []
        for c in self.cases:
            row = {"target": self.target, "method": self.method,
                   "inner": self.variant or "", "float32": self.float32, "case": c.case,
                   "problem": c.problem, "tasks": c.tasks, "dim": c.dim,
                   **{f"setting_{k}": v for k, v in c.settings.items()},
                   "err_reference": c.err_reference, "err_fd": c.err_fd,
                   "err_rate_reference": c.err_rate_reference, "err_rate_fd": c.err_rate_fd,
                   "tol_reference": c.tol_reference, "tol_fd": c.tol_fd,
                   "status": c.status, "closest": c.closest,
                   "closest_error": c.closest_error, "match": c.match,
                   "ranking": "; ".join(f"{k} {d:.3e}" for k, d in c.ranking),
                   "diagnosis": c.diagnosis}
            out.append(row)
        return out

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`rows` as CSV, one row per case.

        Parameters
        ----------
        path : str or Path
            The file to write (replaced if it exists).

        Returns
        -------
        Path
            ``path``.
        """
        path = Path(path)
        rows = self.rows()
        names: list[str] = []
        for row in rows:
            names += [k for k in row if k not in names]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=names)
            writer.writeheader()
            writer.writerows(rows)
        return path

    def to_json(self, path: str | Path) -> Path:
        """Write the whole result as JSON (settings, verdict, diagnosis, notes, cases).

        Parameters
        ----------
        path : str or Path
            The file to write (replaced if it exists).

        Returns
        -------
        Path
            ``path``.
        """
        path = Path(path)
        data = {"target": self.target, "method": self.method, "settings": self.settings,
                "float32": self.float32, "module": self.module, "inner": self.variant,
                "passed": self.passed,
                "diagnosis": self.diagnosis,
                "notes": self.notes, "cases": [asdict(c) for c in self.cases]}
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        return path

    def to_markdown(self, path: str | Path) -> Path:
        """Write the header, the table, the diagnosis and the notes as markdown.

        Parameters
        ----------
        path : str or Path
            The file to write (replaced if it exists).

        Returns
        -------
        Path
            ``path``.
        """
        path = Path(path)
        path.write_text(f"# Audit: {self.header()}\n\n{self.table()}\n\n{self.diagnosis}\n"
                        + "".join(f"\nNote: {n}\n" for n in self.notes))
        return path
