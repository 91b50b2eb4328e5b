"""``metagrad sweep``: time, memory and accuracy of every method across K, λ, CG
iterations and Neumann depth, one CSV row per run, plus seaborn figures.

    metagrad sweep --preset cpu-quick --out sweep/
    metagrad sweep --problem convnet --methods maml maml-trajectory --steps 1 10 100
    metagrad sweep --problem sinusoid_tanh --methods neumann --lam 100 --terms 0 1 2 5 10 20

One row per (method, inner, problem, meta_batch, steps, inner_lr, lam, cg_iters, terms,
device, seed), ``inner`` the inner-loop forms of ``mg.INNER_FORMS`` (``--inner``, empty for
the plain loop; the exact target is then the form's own): ``median_ms``/``iqr_ms`` over
``repeats`` calls after a warm-up (CUDA synchronised),
``peak_mem_mb`` (see :mod:`metagrad_bench.measure`: CUDA max_memory_allocated, CPU sampled
RSS, both above what was in use before the call), ``gradient_equivalents`` (the cost model
of ``Method.gradient_equivalents``), ``predicted_ms`` = gradient-equivalents × the measured
time of one batched gradient, their ratio, and ``approx_error`` = ‖g − g*‖/‖g*‖ against the
bilevel-exact target of ``metagrad.verify.exact_target`` (the oracle,
``metagrad_reference``), with the method run again in float64 so the column measures
approximation, not float32 rounding. ``approx_error`` is empty (NaN) where no exact target
is computed: the conv net (too large for dense Hessians) and the implicit methods on a non-
smooth (ReLU) net, whose proximal minimiser sits on a kink (use ``sinusoid_tanh``). Settings
a method does not read are left empty. Rows already in the CSV are skipped (resumable);
exact targets are cached under ``OUT/exact_cache/``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

import metagrad as mg
from metagrad import _provenance as provenance
from metagrad import timing as mg_timing
from metagrad._app import UsageError, check_device, markdown_table, prepare_out
from metagrad.methods import METHOD_NAMES, is_implicit, method_class
from metagrad.problems import make_problem
from metagrad.verify.compare import exact_target, rel_error, target_key

from . import variants
from .measure import device_name, gradient_time, peak_memory_mb

PROBLEMS = ("sinusoid", "sinusoid_tanh", "convnet")
"""The workloads of ``metagrad.problems`` that the sweep runs."""
EXACT_MAX_DIM = 5000
"""Above this many parameters no exact target is computed (dense Hessians of the proximal
problem cost d² memory and d Hessian-vector products each); the conv net is above it."""

KEY = ["method", "inner", "problem", "meta_batch", "steps", "inner_lr", "lam", "cg_iters", "terms",
       "device", "seed"]
COLUMNS = KEY + [
    "family", "dim", "device_name", "torch", "cuda", "python", "median_ms", "iqr_ms",
    "repeats", "compile_s", "peak_mem_mb", "gradient_equivalents", "gradient_ms",
    "predicted_ms", "measured_over_predicted", "approx_error", "pre_update_loss",
    "post_update_loss", "warning", "load_avg", "timestamp",
]
LIMITS = {"steps": 100, "cg_iters": 50, "terms": 50}
LAM_RANGE = (1e-3, 1e3)


@dataclass
class Block:
    """A product grid on one problem; a preset is a list of blocks."""

    problem: str
    methods: list[str]
    steps: list[int]
    lam: list[float] = field(default_factory=lambda: [1.0])
    cg_iters: list[int] = field(default_factory=lambda: [5])
    terms: list[int] = field(default_factory=lambda: [5])
    inner_lr: float = 0.01
    meta_batch: int | None = None
    inner: list[str] = field(default_factory=lambda: [variants.PLAIN])
    """Inner-loop forms (``plain``, a form of ``mg.INNER_FORMS``, or forms joined with
    ``+``); a method runs those it can (:func:`variants.runs_form`)."""

    def runs(self) -> list[dict[str, Any]]:
        seen, out = set(), []
        for name, form, k, lam, m, j in itertools.product(self.methods, self.inner, self.steps,
                                                          self.lam, self.cg_iters, self.terms):
            if variants.runs_form(name, form) is not None:
                continue
            if k == 0 and variants.inner_forms(form):  # per-step rates need a step
                continue
            s = variants.settings(name, steps=k, lam=lam, cg_iters=m, terms=j)
            run = {"method": name, "inner": variants.inner_label(form),
                   "problem": self.problem, "inner_lr": self.inner_lr,
                   "meta_batch": self.meta_batch, **s}
            key = tuple(sorted(run.items(), key=lambda kv: kv[0]))
            if key not in seen:
                seen.add(key)
                out.append(run)
        return out


ALL = [*METHOD_NAMES, "maml-trajectory"]
IMPLICIT = [name for name in METHOD_NAMES if is_implicit(name)]
"""The methods with a linear solver, swept along lam, cg_iters and terms."""
MAML_TARGET = [name for name in METHOD_NAMES if not is_implicit(name)]
"""The methods whose target is MAML's meta-gradient."""


def reading(setting: str) -> list[str]:
    """The methods that read ``setting``."""
    return [name for name in METHOD_NAMES if setting in method_class(name).setting_names()]

K_FULL = [1, 2, 5, 10, 20, 50, 100]
FORMS = [variants.PLAIN, *mg.INNER_FORMS]
"""The plain inner loop and every named inner-loop form."""
LAM_FULL = [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
ITERS_FULL = [0, 1, 2, 3, 5, 10, 20, 50]


def _with_compiled(methods: list[str]) -> list[str]:
    """Add the compiled variants."""
    return methods + [n for n, v in variants.VARIANTS.items() if v.compiled]


def presets() -> dict[str, list[Block]]:
    """Named grids. ``cpu-quick`` is the ``metagrad report`` section (~30 s on 2 cores);
    ``cpu`` the full CPU grid (tens of minutes); ``gpu`` the full GPU grid; ``gpu-quick`` what
    fits a few minutes of one GPU;
    ``tiny`` a seconds-long smoke test of every figure (used by scripts/gpu_bench.sh on CPU)."""
    # Accuracy axes on the smooth sinusoid, 5 tasks (the dense exact targets cost ~2 s a
    # task a λ), inner_lr 0.005 so that inner_lr·(λ + L) < 2 up to λ = 100.
    acc = dict(problem="sinusoid_tanh", inner_lr=0.005, meta_batch=5)
    return {
        "cpu-quick": [
            Block("sinusoid", ALL, [1, 5]),
            Block(methods=IMPLICIT, steps=[5], lam=[100.0], cg_iters=[0, 1, 2, 5],
                  terms=[0, 1, 2, 5], **{**acc, "meta_batch": 3}),
        ],
        "cpu": [
            Block("sinusoid", _with_compiled(ALL), K_FULL),
            Block("convnet", _with_compiled(ALL), K_FULL),
            Block(methods=reading("lam"), steps=[5, 50], lam=LAM_FULL,
                  cg_iters=ITERS_FULL, terms=ITERS_FULL, **acc),
            Block(methods=[m for m in MAML_TARGET if m not in reading("lam")], steps=K_FULL,
                  **acc),
            # The inner-loop forms (learned rates, ANIL, momentum, Adam, the multi-step
            # loss): time and error against the exact target of the form's own inner loop.
            Block(methods=MAML_TARGET, steps=[1, 5], inner=FORMS, **acc),
        ],
        "gpu": [
            Block("sinusoid", _with_compiled(ALL), K_FULL),
            Block("convnet", _with_compiled(ALL), K_FULL, meta_batch=32),
            Block(methods=IMPLICIT, steps=[5], lam=[1.0, 10.0, 100.0],
                  cg_iters=[0, 1, 2, 5, 10, 20], terms=[0, 1, 2, 5, 10, 20], **acc),
            Block(methods=MAML_TARGET, steps=[1, 5, 20], **acc),
        ],
        # A few minutes of one GPU: eager grids only (the compiled path and CUDA
        # graphs are timed by the peer comparison and metagrad_bench.gpu_check).
        "gpu-quick": [
            Block("sinusoid", ALL, [1, 5, 20]),
            Block("convnet", ALL, [1, 5, 20], meta_batch=32),
            Block(methods=IMPLICIT, steps=[5], lam=[100.0], cg_iters=[0, 1, 2, 5, 10],
                  terms=[0, 1, 2, 5, 10], **acc),
            Block(methods=MAML_TARGET, steps=[1, 5], **acc),
        ],
        "tiny": [
            Block("sinusoid", ["maml", "fomaml", "imaml"], [1, 2], meta_batch=4),
            Block("sinusoid", ["maml"], [1, 2], meta_batch=4, inner=["per_entry", "adam"]),
            Block("convnet", ["maml", "maml-trajectory"], [1, 2], meta_batch=2),
            Block(methods=IMPLICIT, steps=[2], lam=[30.0, 100.0], cg_iters=[0, 2],
                  terms=[0, 2], problem="sinusoid_tanh", inner_lr=0.005, meta_batch=2),
        ],
    }


# -- running ---------------------------------------------------------------------------------


class Runner:
    """Runs grid points on one device, caching problems, gradient times and exact targets."""

    def __init__(self, device: str, *, repeats: int, seed: int, cache_dir: Path | None,
                 with_error: bool = True):
        self.device, self.repeats, self.seed = device, repeats, seed
        self.cache_dir, self.with_error = cache_dir, with_error
        self._problems: dict[tuple, Any] = {}
        self._grad_ms: dict[tuple, float] = {}
        self._targets: dict[tuple, torch.Tensor] = {}
        dev = torch.device(device)
        self.env = {
            "device": device,
            "device_name": device_name(device),
            "torch": torch.__version__,
            "cuda": (torch.version.cuda or "") if dev.type == "cuda" else "",
            "python": platform.python_version(),
            "seed": seed,
        }

    def problem(self, name: str, meta_batch: int | None, dtype=torch.float32):
        key = (name, meta_batch, dtype)
        if key not in self._problems:
            self._problems[key] = make_problem(name, meta_batch=meta_batch, seed=self.seed,
                                               dtype=dtype, device=self.device)
        return self._problems[key]

    def gradient_ms(self, name: str, meta_batch: int | None) -> float:
        key = (name, meta_batch)
        if key not in self._grad_ms:
            p = self.problem(name, meta_batch)
            t = gradient_time(p.loss, p.params, p.tasks, self.device, repeats=max(5, self.repeats))
            self._grad_ms[key] = 1e3 * t.median_s
        return self._grad_ms[key]

    def target(self, run: dict[str, Any], method: Any) -> torch.Tensor | None:
        """The exact target of ``method`` (configured on the float64 problem) for ``run``."""
        p64 = self.problem(run["problem"], run["meta_batch"], torch.float64)
        # No dense Hessians at conv-net size; no implicit target on a ReLU net (φ* on a kink).
        if p64.dim > EXACT_MAX_DIM or (method.implicit and not p64.smooth):
            return None
        # the whole identity of the target (the problem, and what defines the target: λ, or
        # the method's own inner loop: its rates, rule and loss weights), as for the
        # oracle's own caches
        spec = (run["problem"], p64.tasks.num_tasks, self.seed, self.device,
                target_key(method))
        if spec in self._targets:
            return self._targets[spec]
        path = None
        if self.cache_dir is not None:
            digest = hashlib.sha1(repr(spec).encode()).hexdigest()[:16]
            path = self.cache_dir / f"{digest}.pt"
            if path.exists():
                self._targets[spec] = torch.load(path, map_location=self.device)
                return self._targets[spec]
        try:
            value = exact_target(p64, method)
        except ValueError:  # no strict proximal minimiser reached: the target is undefined
            value = torch.full((p64.dim,), math.nan, dtype=torch.float64)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(value.cpu(), path)
        self._targets[spec] = value
        return value

    def approx_error(self, run: dict[str, Any]) -> float:
        """‖g − g*‖/‖g*‖ of the method run again in float64 against the exact target (NaN
        where none is computed)."""
        name = run["method"]
        p64 = self.problem(run["problem"], run["meta_batch"], torch.float64)
        eager, _ = variants.make(name.replace("-compiled", ""), **_settings(run),
                                 params=p64.params)
        target = self.target(run, eager)
        if target is None:
            return math.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return rel_error(torch.cat([g.reshape(-1) for g in
                                        eager(p64.loss, p64.params, p64.tasks).grad.values()]),
                             target)

    def numbers(self, run: dict[str, Any]) -> dict[str, float]:
        """The numerical columns of a row, without timing (what the reproducibility check
        recomputes): the losses of one call and ``approx_error``."""
        p = self.problem(run["problem"], run["meta_batch"])
        _, fn = variants.make(run["method"], **_settings(run), params=p.params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn(p.loss, p.params, p.tasks)
        return {"pre_update_loss": float(out.pre_update_loss),
                "post_update_loss": float(out.post_update_loss),
                "approx_error": self.approx_error(run)}

    def run(self, run: dict[str, Any]) -> dict[str, Any]:
        name = run["method"]
        v = variants.variant(name)
        p = self.problem(run["problem"], run["meta_batch"])
        method, fn = variants.make(name, **_settings(run), params=p.params)
        messages: list[str] = []
        start = time.perf_counter()
        out = fn(p.loss, p.params, p.tasks)  # first call: compiles a compiled variant
        first_s = time.perf_counter() - start
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            method(p.loss, p.params, p.tasks)  # eager, with metagrad's numerical checks
            messages += [str(w.message).splitlines()[0] for w in caught]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            timing = mg_timing.time_call(lambda: fn(p.loss, p.params, p.tasks), self.device,
                               warmup=1, repeats=self.repeats)
            peak = peak_memory_mb(lambda: fn(p.loss, p.params, p.tasks), self.device)
        ge = method.gradient_equivalents()
        grad_ms = self.gradient_ms(run["problem"], run["meta_batch"])
        median_ms = 1e3 * timing.median_s
        approx_error = self.approx_error(run) if self.with_error else math.nan
        compile_s = first_s - timing.median_s if v.compiled else math.nan
        reported = getattr(fn, "compile_seconds", None)  # mg.compile: {signature: seconds}
        if isinstance(reported, dict) and reported:
            compile_s = max(reported.values())
        return {
            **run,
            **self.env,
            "meta_batch": p.tasks.num_tasks,
            "family": v.family,
            "dim": p.dim,
            "median_ms": median_ms,
            "iqr_ms": 1e3 * timing.iqr_s,
            "repeats": timing.repeats,
            "compile_s": compile_s,
            "peak_mem_mb": peak,
            "gradient_equivalents": ge,
            "gradient_ms": grad_ms,
            "predicted_ms": ge * grad_ms,
            "measured_over_predicted": median_ms / (ge * grad_ms) if ge else math.nan,
            "approx_error": approx_error,
            "pre_update_loss": float(out.pre_update_loss),
            "post_update_loss": float(out.post_update_loss),
            "warning": " | ".join(dict.fromkeys(messages))[:300],
            # 1-min load average: on a shared machine, times are comparable only at equal load.
            "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }


def _settings(run: dict[str, Any]) -> dict[str, Any]:
    return {**{k: run[k] for k in ("steps", "inner_lr", "lam", "cg_iters", "terms")},
            "inner": run.get("inner")}


TRACED = ("pre_update_loss", "post_update_loss", "approx_error")
"""The numerical columns of a row that the reproducibility check recomputes."""


def _run_of(row: dict[str, Any]) -> dict[str, Any]:
    """The run (key and settings) of a CSV row, with empty cells as None."""
    run = {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) or v == ""
               else v) for k, v in row.items() if k in KEY}
    for k in ("steps", "cg_iters", "terms", "meta_batch", "seed"):
        if run.get(k) is not None:
            run[k] = int(float(run[k]))
    for k in ("inner_lr", "lam"):
        if run.get(k) is not None:
            run[k] = float(run[k])
    return run


def replay_row(run: dict[str, Any]) -> dict[str, Any]:
    """A row's numbers recomputed today (no timing), for the reproducibility check."""
    runner = Runner(run["device"], repeats=1, seed=run["seed"], cache_dir=None)
    return {"numbers": runner.numbers(run)}


def trace_cases(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows a sweep's ``trace.json`` holds: the first row of every eager method per
    device, with their numbers as written to the CSV."""
    cases, seen = [], set()
    for row in df.to_dict("records"):
        run = _run_of(row)
        key = (row["method"], run.get("inner"), row["device"])
        if key in seen or variants.variant(row["method"]).compiled:
            continue
        seen.add(key)
        cases.append({"run": " ".join(f"{k}={run[k]}" for k in KEY
                                      if run.get(k) is not None),
                      "label": row["method"], "mode": "eager", "row": run,
                      "replay": {"numbers": {c: None if row[c] != row[c] else float(row[c])
                                             for c in TRACED}}})
    return cases


# -- CSV (append, resumable) -----------------------------------------------------------------


def _norm(value: Any) -> str:
    """One spelling per value, so a key read back from the CSV equals the one built here."""
    if value is None or value == "":
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    return repr(int(x)) if x.is_integer() else repr(x)


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(_norm(row.get(k)) for k in KEY)


def recover_torn_tail(path: Path) -> int:
    """Drop a last line that a crash (or a full disk) left without its newline: rows are
    written whole (:func:`append_row`), so an unterminated tail is the only damage a crash
    can do. Returns the number of bytes dropped (0 when the file is whole)."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with path.open("r+b") as f:
        f.truncate(keep)
    print(f"metagrad sweep: {path}: dropped an incomplete last row ({len(data) - keep} bytes) "
          "left by an interrupted run; it will be measured again", file=sys.stderr)
    return len(data) - keep


def done_keys(path: Path) -> set[tuple[str, ...]]:
    if not path.exists():
        return set()
    recover_torn_tail(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        keys = set()
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise UsageError(f"{path}, line {reader.line_num}: a row with the wrong number "
                                 "of fields; the file is damaged (remove that row, or use a "
                                 "new --out)")
            keys.add(row_key(row))
    return keys


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one CSV row so that a crash cannot tear it: the whole line (with the header
    first if the file is new) goes out in one ``write`` on an ``O_APPEND`` descriptor and is
    fsync-ed; a short write (disk full) is rolled back and reported."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    if not path.exists() or path.stat().st_size == 0:
        writer.writeheader()
    writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    data = buf.getvalue().encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        before = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
        except OSError:
            os.ftruncate(fd, before)
            raise
        if written != len(data):
            os.ftruncate(fd, before)
            raise OSError(f"{path}: only {written} of {len(data)} bytes of a row were written "
                          "(disk full?); the row was rolled back")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_sweep(path: Path) -> pd.DataFrame:
    """The sweep CSV as a frame; a damaged file is an error that names it."""
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} cannot be read as a sweep CSV ({err}); remove the damaged "
                         "rows or use a new --out") from None


def sweep(blocks: list[Block], out: Path, *, device: str = "cpu", repeats: int = 5,
          seed: int = 0, with_error: bool = True, progress: bool = True) -> pd.DataFrame:
    """Run every grid point of ``blocks`` not already in ``out/sweep.csv``; return the CSV."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "sweep.csv"
    runner = Runner(device, repeats=repeats, seed=seed, cache_dir=out / "exact_cache",
                    with_error=with_error)
    grid = [r for b in blocks for r in b.runs()]
    for r in grid:
        if r["meta_batch"] is None:
            r["meta_batch"] = make_problem_meta_batch(r["problem"])
    done = done_keys(csv_path)
    todo = [r for r in grid if row_key({**r, "device": device, "seed": seed}) not in done]
    if progress and len(todo) < len(grid):
        print(f"resuming {csv_path}: {len(grid) - len(todo)} of {len(grid)} runs are already "
              f"in it, {len(todo)} to go", file=sys.stderr)
    bar = tqdm(todo, desc="sweep", unit="run", disable=not progress, dynamic_ncols=True)
    for r in bar:
        label = " ".join(f"{k}={r[k]}" for k in ("steps", "lam", "cg_iters", "terms")
                         if r[k] is not None)
        bar.set_postfix_str(f"{r['problem']} {shown(r['method'], r['inner'])} {label}")
        append_row(csv_path, runner.run(r))
    return read_sweep(csv_path)


def shown(method: str, inner: Any) -> str:
    """A row's name in figures and progress: the method, with its inner-loop forms
    (``maml+momentum``) where it has any."""
    label = "" if inner is None or inner != inner else str(inner)
    return f"{method}+{label}" if label else method


def make_problem_meta_batch(problem: str) -> int:
    return make_problem(problem).meta_batch


# -- figures ---------------------------------------------------------------------------------

AXIS_LABEL = {"steps": "K (inner steps)", "lam": "λ", "cg_iters": "CG iterations m",
              "terms": "Neumann terms J"}
SYMBOL = {"steps": "K", "lam": "λ", "cg_iters": "m", "terms": "J"}
"""How a setting is written in the figures' point labels."""
COUNT_AXES = ("cg_iters", "terms")
"""Axes drawn linear: each CG iteration or series term costs the same (one Hessian-vector
product), so equal steps along the axis are equal costs, and 0 is a setting."""
FIGURE_WIDTH = 7.0
"""Inches: 840 px at metagrad.plotting.DPI, about the width of the documentation's text
column, so that the figures' text is shown near its own size (scripts/check_docs.py)."""
PANEL_HEIGHT = 4.0
LEGEND_SIZE = 9
LABEL_SIZE = 8.5


def _series(df: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Rows that vary along ``axis`` with the other settings fixed, labelled by them."""
    others = [k for k in ("problem", "method", "meta_batch", "steps", "inner_lr", "lam",
                          "cg_iters", "terms") if k != axis]
    keep = df.groupby(others, dropna=False)[axis].transform("nunique") >= 2
    d = df[keep.values].copy()
    if d.empty:
        return d
    fixed = [k for k in ("steps", "lam", "cg_iters", "terms") if k != axis]

    def label(row) -> str:
        parts = [f"{k}={_norm(row[k])}" for k in fixed if _norm(row[k])]
        return row["method"] + (f" ({', '.join(parts)})" if parts else "")

    d["series"] = d.apply(label, axis=1)
    return d


def _colors(d: pd.DataFrame) -> dict[str, Any]:
    """The method's fixed colour (metagrad.plotting.palette); several series of one method
    (e.g. different λ) get darkening shades of it; variants get their own colours."""
    from metagrad import plotting

    base = plotting.palette()
    others = [m for m in d["method"].unique() if m not in base]
    # as many distinct colours as there are variants (inner-loop forms make many)
    extra = iter(plotting.sns.color_palette("dark", 10) if len(others) <= 10
                 else plotting.sns.color_palette("husl", len(others)))
    colors: dict[str, Any] = {}
    for method, group in d.groupby("method", sort=False):
        names = sorted(group["series"].unique())
        color = base.get(method) if method in base else next(extra)
        shades = (plotting.sns.dark_palette(color, len(names) + 2)[2:] if len(names) > 1
                  else [color])
        colors.update(zip(names, shades))
    return colors


def point_labels(d: pd.DataFrame) -> pd.Series:
    """Each row's settings that vary among the rows of its method, e.g. ``K=5`` or
    ``m=2``: what tells apart the points of one colour in the Pareto plot."""
    labels = pd.Series("", index=d.index)
    for _, group in d.groupby("method", sort=False):
        varying = [k for k in SYMBOL if k in group and group[k].nunique(dropna=True) > 1]
        for idx, row in group.iterrows():
            labels[idx] = ", ".join(f"{SYMBOL[k]}={_norm(row[k])}" for k in varying)
    return labels


def _place_labels(ax, points: list[tuple[float, float, str]]) -> None:
    """Label points beside them, each at the first of four places (upper right, lower
    right, upper left, lower left) where it overlaps no label placed before it and no
    other point."""
    offsets = [((5, 4), "left", "bottom"), ((5, -4), "left", "top"),
               ((-5, 4), "right", "bottom"), ((-5, -4), "right", "top")]
    renderer = ax.figure.canvas.get_renderer()
    marks = [ax.transData.transform((x, y)) for x, y, _ in points]
    placed: list[Any] = []
    for x, y, text in sorted(points):
        for i, (offset, ha, va) in enumerate(offsets):
            note = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points",
                               ha=ha, va=va, fontsize=LABEL_SIZE)
            box = note.get_window_extent(renderer).expanded(1.05, 1.1)
            clash = any(box.overlaps(b) for b in placed) or any(
                box.contains(*m) for m in marks)
            if not clash or i == len(offsets) - 1:
                placed.append(box)
                break
            note.remove()


MANY = 8
"""Above this many series a panel's legend goes below it, in two columns."""


def _panels(n: int, series: int = 0):
    """A figure of ``n`` panels stacked in one column, as wide as the docs' text column;
    with more than :data:`MANY` series per panel, each panel has a legend row below it
    (``legends``, else Nones)."""
    from metagrad import plotting

    if series <= MANY:
        fig, axes = plotting.plt.subplots(n, 1, figsize=(FIGURE_WIDTH, PANEL_HEIGHT * n),
                                          squeeze=False)
        return fig, axes[:, 0], [None] * n
    legend_h = 0.2 * math.ceil(series / 2) + 0.5
    fig, axes = plotting.plt.subplots(
        2 * n, 1, figsize=(FIGURE_WIDTH, (PANEL_HEIGHT + legend_h) * n), squeeze=False,
        gridspec_kw={"height_ratios": [PANEL_HEIGHT, legend_h] * n})
    for lax in axes[1::2, 0]:
        lax.axis("off")
    return fig, axes[0::2, 0], list(axes[1::2, 0])


def _legend(ax, lax) -> None:
    """The panel's legend: inside it, or in its legend row ``lax`` in two columns."""
    if lax is None:
        ax.legend(fontsize=LEGEND_SIZE)
        return
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    lax.legend(handles, labels, fontsize=LEGEND_SIZE, ncol=2, loc="upper center",
               frameon=False)


def figures(df: pd.DataFrame, out: Path) -> list[Path]:
    """Draw every figure the data support; return their paths. One panel per problem,
    stacked; x-axes for K and time logarithmic, for CG iterations and Neumann terms
    linear (their cost is linear in them); every Pareto point labelled with its
    settings."""
    from metagrad import plotting

    plotting.setup()
    sns = plotting.sns
    paths: list[Path] = []
    problems = sorted(df["problem"].unique())
    if "inner" in df:  # a method with inner-loop forms is its own series
        df = df.assign(method=[shown(m, i) for m, i in zip(df["method"], df["inner"])])

    def lineplot(y: str, axis: str, fname: str, title: str, ylabel: str) -> None:
        d = _series(df, axis).dropna(subset=[y])
        if d.empty:
            return
        probs = [p for p in problems if p in set(d["problem"])]
        fig, axes, legends = _panels(len(probs), d.groupby("problem")["series"].nunique().max())
        for ax, lax, prob in zip(axes, legends, probs):
            dp = d[d["problem"] == prob].sort_values(axis)
            # Dashes and markers per series too: methods that coincide (IMAML and Neumann
            # at convergence, MAML's two backward modes) stay visible on top of each other.
            sns.lineplot(dp, x=axis, y=y, hue="series", style="series", markers=True,
                         palette=_colors(dp), ax=ax)
            if axis not in COUNT_AXES:
                has_zero = bool((dp[axis] == 0).any())
                ax.set_xscale("symlog" if has_zero else "log")
            ax.set_yscale("log")
            plotting.value_ticks(ax, dp[axis])
            plotting.plain_log_labels(ax, "y")
            ax.set_xlabel(AXIS_LABEL[axis])
            ax.set_ylabel(ylabel)
            batch = int(dp["meta_batch"].iloc[0])
            ax.set_title(f"{prob}, {dp['device'].iloc[0]}, meta-batch {batch}")
            _legend(ax, lax)
        fig.suptitle(title)
        paths.append(plotting.save(fig, out / fname))

    lineplot("median_ms", "steps", "time_vs_steps.png", "median time per meta-gradient vs K",
             "ms")
    lineplot("peak_mem_mb", "steps", "memory_vs_steps.png",
             "peak memory above baseline vs K", "MiB")
    lineplot("approx_error", "steps", "error_vs_steps.png", "relative error vs exact target, vs K",
             "‖g − g*‖ / ‖g*‖")
    lineplot("approx_error", "terms", "error_vs_terms.png",
             "Neumann: relative error vs the implicit gradient, vs J", "‖g − g*‖ / ‖g*‖")
    lineplot("approx_error", "lam", "error_vs_lam.png", "relative error vs exact target, vs λ",
             "‖g − g*‖ / ‖g*‖")
    lineplot("approx_error", "cg_iters", "error_vs_cg_iters.png",
             "IMAML: relative error vs the implicit gradient, vs CG iterations",
             "‖g − g*‖ / ‖g*‖")

    d = df.dropna(subset=["approx_error", "median_ms"])
    d = d[d["approx_error"] > 0]
    if not d.empty:
        probs = sorted(d["problem"].unique())
        fig, axes, legends = _panels(len(probs),
                                     d.groupby("problem")["method"].nunique().max() + 1)
        for ax, lax, prob in zip(axes, legends, probs):
            dp = d[d["problem"] == prob]
            d2 = dp.assign(series=dp["method"])
            sns.scatterplot(d2, x="median_ms", y="approx_error", hue="series",
                            palette=_colors(d2), ax=ax, s=40)
            front = pareto_front(dp)
            ax.plot(front["median_ms"], front["approx_error"], "k--", lw=1, drawstyle="steps-post",
                    label="Pareto front")
            ax.set_xscale("log")
            ax.set_yscale("log")
            plotting.plain_log_labels(ax, "x")
            plotting.plain_log_labels(ax, "y")
            labels = point_labels(dp)
            _place_labels(ax, [(row["median_ms"], row["approx_error"], labels[idx])
                               for idx, row in dp.iterrows() if labels[idx]])
            ax.set_xlabel("median ms per meta-gradient")
            ax.set_ylabel("‖g − g*‖ / ‖g*‖")
            ax.set_title(f"{prob}, {dp['device'].iloc[0]}")
            _legend(ax, lax)
        fig.suptitle("error vs time: Pareto front (lower left is better)")
        paths.append(plotting.save(fig, out / "pareto.png"))
    return paths


def pareto_front(df: pd.DataFrame) -> pd.DataFrame:
    """Rows not dominated in (median_ms, approx_error), sorted by time."""
    d = df.sort_values(["median_ms", "approx_error"])
    best, keep = math.inf, []
    for idx, err in zip(d.index, d["approx_error"]):
        if err < best:
            best = err
            keep.append(idx)
    return d.loc[keep]


# -- command line ----------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="time/memory/accuracy of the methods across K, λ, cg_iters, terms",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--preset", choices=sorted(presets()), default=None,
                   help="a named grid (default cpu-quick when no axis is given)")
    p.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                   help=f"methods/variants: {', '.join(variants.VARIANTS)} "
                        "(default: every registered method)")
    p.add_argument("--problem", choices=PROBLEMS, default=None,
                   help="workload of an axis grid (default: sinusoid)")
    p.add_argument("--steps", nargs="+", type=int, default=None, help="K values, 0..100")
    p.add_argument("--lam", nargs="+", type=float, default=None, help="λ values (0.001..1000)")
    p.add_argument("--cg-iters", nargs="+", type=int, default=None, help="0..50")
    p.add_argument("--terms", nargs="+", type=int, default=None, help="Neumann J, 0..50")
    p.add_argument("--inner", nargs="+", default=None, metavar="FORM",
                   help=f"inner-loop forms, an axis: {variants.PLAIN} (every parameter, "
                        "gradient descent) or "
                        + ", ".join(mg.INNER_FORMS) + "; join forms with + (per_step+adam). "
                        "Each method runs the forms it can; learned rates start at "
                        "--inner-lr (default: plain)")
    p.add_argument("--inner-lr", type=float, default=None,
                   help="inner step size of an axis grid (default: 0.01)")
    p.add_argument("--meta-batch", type=int, default=None,
                   help="tasks per meta-batch (default: 25 sinusoid, 8 convnet)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per run (median, IQR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="sweep", help="folder for sweep.csv and figures")
    p.add_argument("--no-error", action="store_true", help="skip the exact-target error column")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--figures-only", action="store_true",
                   help="run nothing: redraw the figures from OUT/sweep.csv (rows of --device)")
    p.set_defaults(func=run)


def blocks_from_args(args: argparse.Namespace) -> list[Block]:
    axes = {"methods": args.methods, "steps": args.steps, "lam": args.lam,
            "cg_iters": args.cg_iters, "terms": args.terms, "inner": args.inner}
    given = any(v is not None for v in axes.values()) or args.meta_batch is not None
    grid_only = [flag for flag, value in (("--problem", args.problem),
                                          ("--inner-lr", args.inner_lr)) if value is not None]
    if args.preset and (given or grid_only):
        raise UsageError("give either --preset or a grid (--methods/--inner/--steps/--lam/"
                         "--cg-iters/--terms/--meta-batch/--problem/--inner-lr), not both")
    if not given:
        if grid_only:  # they would silently do nothing to the default preset
            raise UsageError(f"{' and '.join(grid_only)} need(s) an axis to sweep "
                             "(--methods, --inner, --steps, --lam, --cg-iters or --terms), or "
                             "use --preset")
        return presets()[args.preset or "cpu-quick"]
    methods = args.methods or list(METHOD_NAMES)
    for m in methods:
        try:
            variants.variant(m)
        except ValueError as err:
            raise UsageError(f"--methods: {err}") from None
    for name in ("lam", "cg_iters", "terms"):
        readers = [m for m in methods if name in variants.variant(m).method_class.setting_names()]
        if axes[name] is not None and not readers:
            raise UsageError(f"--{name.replace('_', '-')} is not read by "
                             f"{', '.join(methods)}")
    steps = args.steps or [5]
    cg_iters, terms = args.cg_iters or [5], args.terms or [5]
    for name, values in (("steps", steps), ("cg-iters", cg_iters), ("terms", terms)):
        hi = LIMITS[name.replace("-", "_")]
        bad = [v for v in values if not 0 <= v <= hi]
        if bad:
            raise UsageError(f"--{name} must be within 0..{hi}, got {bad}")
    lam = args.lam or [1.0]
    bad = [v for v in lam if not LAM_RANGE[0] <= v <= LAM_RANGE[1]]
    if bad:
        raise UsageError(f"--lam must be within {LAM_RANGE[0]}..{LAM_RANGE[1]}, got {bad}")
    inner_lr = 0.01 if args.inner_lr is None else args.inner_lr
    if not (inner_lr > 0 and math.isfinite(inner_lr)):
        raise UsageError(f"--inner-lr must be a finite positive number, got {inner_lr}")
    if args.meta_batch is not None and args.meta_batch < 1:
        raise UsageError(f"--meta-batch must be ≥ 1, got {args.meta_batch}")
    inner = args.inner or [variants.PLAIN]
    for value in inner:
        try:
            variants.inner_forms(value)
        except ValueError as err:
            raise UsageError(f"--inner: {err}") from None
        if all(variants.runs_form(m, value) is not None for m in methods):
            raise UsageError(f"--inner {value}: none of {', '.join(methods)} can run it ("
                             f"{variants.runs_form(methods[0], value)})")
        if variants.inner_forms(value) and 0 in steps:
            raise UsageError(f"--inner {value} needs at least one inner step; --steps has 0")
    return [Block(args.problem or "sinusoid", methods, steps, lam, cg_iters, terms, inner_lr,
                  args.meta_batch, inner)]


def redraw(out: Path, device: str) -> list[Path]:
    """The figures of a finished sweep, from its CSV alone (nothing is run, so a CUDA sweep
    can be redrawn on a machine without a GPU)."""
    csv_path = out / "sweep.csv"
    if not csv_path.is_file():
        raise UsageError(f"--figures-only: no sweep results at {csv_path}")
    df = read_sweep(csv_path)
    df = df[df["device"] == device]
    if df.empty:
        raise UsageError(f"--figures-only: {csv_path} has no rows for --device {device}")
    return figures(df, out)


def run(args: argparse.Namespace) -> int:
    if args.figures_only:
        if args.no_figures:
            raise UsageError("--figures-only and --no-figures contradict each other")
        for path in redraw(Path(args.out), args.device):
            print(f"wrote {path}")
        return 0
    device = check_device(args.device)
    if args.repeats < 1:
        raise UsageError(f"--repeats must be ≥ 1, got {args.repeats}")
    blocks = blocks_from_args(args)
    out = prepare_out(args.out)  # before the work, not after it
    df = sweep(blocks, out, device=device, repeats=args.repeats, seed=args.seed,
               with_error=not args.no_error)
    from metagrad.train.study import trace
    trace.write(out, "sweep", trace_cases(df), about="the first row of every eager method "
                "per device, as written to sweep.csv")
    compiled = sorted({m for m in df["method"] if variants.variant(m).compiled})
    provenance.write(out, command=provenance.command_line("metagrad", getattr(args, "argv",
                                                                           None)), kind="sweep",
                     what="time, memory and error against the exact target per setting",
                     mode="eager" + (f"; compiled: {', '.join(compiled)}" if compiled else ""),
                     device=device, extra={"trace": trace.FILE})
    print(f"wrote {out / 'sweep.csv'} ({len(df)} rows)")
    if not args.no_figures:
        for path in figures(df[df["device"] == device], out):
            print(f"wrote {path}")
    return 0


# -- report section --------------------------------------------------------------------------


def sweep_section(ctx) -> str:
    """``metagrad report`` section: the ``cpu-quick`` grid (``cpu`` with ``--full``)."""
    preset = "cpu-quick" if ctx.quick else "cpu"
    out = ctx.out / "sweep"
    df = sweep(presets()[preset], out, device=ctx.device, repeats=3 if ctx.quick else 5,
               seed=ctx.seed, progress=False)
    df = df[(df["device"] == ctx.device) & (df["seed"] == ctx.seed)]
    paths = figures(df, out)
    cols = ["problem", "method", "steps", "lam", "cg_iters", "terms", "median_ms",
            "peak_mem_mb", "measured_over_predicted", "approx_error"]
    table = markdown_table(df[cols], floatfmt=".3g")
    images = "\n".join(f"![{p.stem}](sweep/{p.name})" for p in paths)
    return (
        f"## Sweep ({preset}: time, memory and accuracy vs K, λ, CG iterations, J)\n\n"
        f"Device `{ctx.device}` ({df['device_name'].iloc[0] if len(df) else '?'}). Time: median "
        "of repeats after a warm-up; memory: peak above the pre-call baseline (CPU: sampled "
        "RSS, see `metagrad_bench.measure`); measured/predicted: time over (gradient-equivalents "
        "× one batched gradient); approx_error: against the float64 bilevel-exact target "
        "(`metagrad.verify.exact_target`), empty "
        "where none is computed. Full CSV: `sweep/sweep.csv`; rerun with "
        f"`metagrad sweep --preset {preset} --out OUT`.\n\n{table}\n\n{images}\n"
    )
