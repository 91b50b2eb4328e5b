"""What the real-code adapters share: the command line, running and writing the audits, and
the dense building blocks of the independent checks.

The independent checks evaluate, directly and densely (``torch.func`` Hessians of a flat
function, plain loops), the formula read off each repository's code, on one of the
battery's problems, and compare the repository's own output with it. They share nothing
with ``metagrad_reference`` or the audit's catalogue, so that they check the diagnosis
rather than repeat it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, grad, hessian
from torch.nn import functional as F

from metagrad.testing import battery, check_meta_gradient


@dataclass
class Run:
    """One audit: a label, the method the code claims, the target and its settings."""

    label: str
    method: str
    target: Any
    settings: dict[str, Any]
    what: str
    """Repository file and function, for the report."""
    float32: bool = False


def parse(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repo", required=True, type=Path,
                        help="a checkout of the repository at the commit in the module docstring")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for one audit.md / audit.json per run")
    return parser.parse_args(argv)


def on_path(repo: Path, expected: str) -> Path:
    """Put ``repo`` first on ``sys.path`` after checking that ``expected`` is in it."""
    repo = repo.resolve()
    if not (repo / expected).exists():
        raise SystemExit(f"{repo} has no {expected}: give --repo a checkout of the repository")
    sys.path.insert(0, str(repo))
    return repo


REPOSITORIES = {
    "imaml_dev": "https://github.com/aravindr93/imaml_dev@6a2a6697d8b7be72e098d524852eacb448935fbf",
    "gbml": "https://github.com/sungyubkim/GBML@1577e172dc5852267ad0b94cdb9c175a5ca7018e",
    "maml_pytorch": "https://github.com/dragen1860/MAML-Pytorch@"
                    "98a00d41724c133bd29619a2fb2cc46dd128a368",
    "higher_example": "https://github.com/facebookresearch/higher@"
                      "15a247ac06cac0d22601322677daff0dcfff062e",
    "few_shot": "https://github.com/oscarknagg/few-shot@672de83a853cc2d5e9fe304dc100b4a735c10c15",
    "hypertorch": "https://github.com/prolearner/hypertorch@"
                  "6241dfafcf37ddaf14e152ba5e5a3aa7165396d3",
}
"""Adapter module → the repository and commit it was written against."""


def _provenance(folder: Path, module: str, repo: Path, out: Path) -> None:
    """``folder/provenance.json``: metagrad's commit, the command (the checkout named by its
    folder), the packages (higher's too), the machine, the date, the repository audited."""
    from importlib import metadata

    from metagrad import _provenance

    try:
        third_party = {"higher": metadata.version("higher")}
    except metadata.PackageNotFoundError:
        third_party = {}
    try:  # the results folder as seen from the repository's root
        shown = out.resolve().relative_to(_provenance.SOURCE)
    except ValueError:
        shown = Path(out.name)
    _provenance.write(
        folder, command=f"python -m metagrad_bench.real_code.{module} --repo {repo.name} "
                        f"--out {shown}", mode="eager (float64; float32 where the run says so)",
        kind="bench", what=f"the real-code audit of {REPOSITORIES[module]}",
        extra={"repository": REPOSITORIES[module], "third_party": third_party,
               "trace": None, "reproducibility": "no trace: an audit, rerun by its command"})


def run_all(runs: Sequence[Run], checks: Sequence[Callable[[], str]], out: Path | None,
            module: str | None = None, repo: Path | None = None) -> int:
    """Audit every run, print the reports, run the independent checks; exit status 0. With
    ``out``: each run's ``audit.md``, ``audit.json`` and ``provenance.json`` in
    ``out/<run>``."""
    for run in runs:
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):  # the repositories print progress
            result = check_meta_gradient(run.target, run.method, float32=run.float32,
                                         **run.settings)
        result.target = f"{run.label} ({run.what})"
        print(result.report(), "\n")
        if out is not None:
            folder = out / run.label
            folder.mkdir(parents=True, exist_ok=True)
            result.to_markdown(folder / "audit.md")
            result.to_json(folder / "audit.json")
            if module is not None and repo is not None:
                _provenance(folder, module, repo, out)
    for check in checks:
        print("independent check:", check())
    return 0


# --------------------------------------------------------------------------------------------
# dense building blocks for the independent checks

@dataclass
class Flat:
    """A battery problem as a flat function ``f(w, batch)`` of all parameters."""

    f: Callable[[Tensor, Any], Tensor]
    theta: Tensor
    tasks: list[tuple[Any, Any]]
    names: list[str]
    shapes: list[torch.Size]

    def unflat(self, w: Tensor) -> dict[str, Tensor]:
        out, at = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = int(torch.Size(shape).numel())
            out[name] = w[at:at + n].reshape(shape)
            at += n
        return out

    def g(self, w: Tensor, batch: Any) -> Tensor:
        return grad(self.f)(w, batch)

    def h(self, w: Tensor, batch: Any) -> Tensor:
        return hessian(self.f)(w, batch)


def problem(label: str, method: str, settings: dict[str, Any],
            criterion: str = "cross_entropy", tasks: int = 3):
    """The battery's module-form problem ``label`` as given to a target, and its Flat view."""
    given, _ = battery.problems(label, tasks, method, settings, criterion=criterion)
    model = given.module
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    loss_fn = F.cross_entropy if criterion == "cross_entropy" else F.mse_loss
    flat = Flat(lambda w, b: loss_fn(functional_call(model, flat.unflat(w), (b[0],)), b[1]),
                torch.cat([given.params[n].reshape(-1) for n in names]),
                given.task_list(), names, shapes)
    return given, flat


def conjugate_gradient(a: Tensor, b: Tensor, iters: int, x0: Tensor | None = None,
                       stop_rr: float | None = None, keep_last: bool = True) -> Tensor:
    """``iters`` CG iterations from ``x0``; with ``stop_rr``, stop once rᵀr < stop_rr after
    an update, keeping it (``keep_last``) or returning the iterate before it."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - a @ x
    p = r.clone()
    for _ in range(iters):
        rr = r @ r
        if rr == 0:
            break
        ap = a @ p
        alpha = rr / (p @ ap)
        x_new = x + alpha * p
        r_new = r - alpha * ap
        if stop_rr is not None and float(r_new @ r_new) < stop_rr:
            return x_new if keep_last else x
        x = x_new
        p = r_new + (r_new @ r_new) / rr * p
        r = r_new
    return x


def flat_result(result: dict[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([result[n].detach().reshape(-1).double() for n in names])


def rel(a: Tensor, b: Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))
