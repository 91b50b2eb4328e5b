"""The numbers quoted in the README and the documentation, and the committed results they
cite: read by ``tests/test_claims.py``.

A *block* of a page is a paragraph, a list item or a table (with the paragraph just before
it, its caption). A block cites a result by linking into ``bench/results/`` (or the site's
``results/`` pages, generated from it); a results folder's own README cites its folder.
In a citing block every decimal number (``0.888``, ``1.3e20``) and every ratio
(``5.6×``, ``17x``) outside code is a *quoted number*, unless it is a setting or a bound
(it follows ``=``, ``≤``, a setting's name such as ``inner_lr`` or ``λ``, "about", or is
part of a version or a date). A quoted number is *found* when it is written, as quoted,
in the cited folder's markdown (the tables its tools wrote; a stale number that happens to
be written there for something else is not caught); a ratio also when it is the
quotient of two numbers of one table row there (rounded as quoted); and when a cell of
a CSV file the block links to (or of a folder that holds only CSV) rounds to it.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
PAGES = (ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted(DOCS.glob("howto/*.md")),
         RESULTS / "study" / "README.md", RESULTS / "finn2017" / "README.md",
         *[p for p in (RESULTS / "study_rates" / "README.md",) if p.is_file()])
"""The pages whose numbers are checked: the README, the documentation, and the study, Finn
et al. and learned-rates pages that summarise committed tables (the last once committed:
``metagrad train --preset rates`` writes it)."""

NUMBER = re.compile(
    r"(?<![\w.])(?P<num>\d+(?:\.\d+)?(?:e[-+]?\d+)?)(?P<unit>\s?[×x](?![\w]))?(?![\w.]*\d)")
SETTING = re.compile(
    r"((\b(inner_lr|eval_lr|meta_lr|lam|steps|cg_iters|terms|step|tol|K|m|J|seed)|λ|η|α|ε)"
    r"\s*=?|≈|≤|≥|<|>|\b(torch|Python|python|jax|jaxlib|jaxopt|CUDA|version|section|"
    r"Table|Figure|about|within|roughly|up to|load average)|§|Fig\.|arXiv:|~)\s*$")
"""What precedes a number that is a setting, a bound or an approximation, not a quote."""
LINK = re.compile(r"\]\(([^)#\s]+)")
RANGE_OF_RATIOS = re.compile(r"\s?[-–]\s?\d+(?:\.\d+)?\s?[×x](?!\w)")
CODE = re.compile(r"`[^`]*`")
TABLE_ROW = re.compile(r"^\s*\|")


@dataclass(frozen=True)
class Claim:
    page: Path
    line: int
    text: str
    number: str
    folders: tuple[Path, ...]
    ratio: bool = False
    files: tuple[Path, ...] = ()
    """CSV files the block links to directly."""

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks(text: str) -> Iterator[tuple[int, str]]:
    """(first line, text) of each paragraph, list item and table of a markdown page, code
    blocks and headings left out; a table carries the paragraph before it."""
    lines = text.splitlines()
    block: list[str] = []
    start = 0
    fence = False
    previous = ""
    for i, line in enumerate([*lines, ""], 1):
        if line.strip().startswith("```"):
            fence = not fence
            continue
        if fence:
            continue
        new_item = re.match(r"^\s*([-*]|\d+\.)\s", line) is not None
        is_table = TABLE_ROW.match(line) is not None
        was_table = bool(block) and TABLE_ROW.match(block[-1]) is not None
        ends = not line.strip() or line.startswith("#") or (new_item and block) or \
            (is_table != was_table and block)
        if ends and block:
            joined = "\n".join(block)
            if TABLE_ROW.match(block[0]):
                joined = previous + "\n" + joined
            else:
                previous = joined
            yield start, joined
            block = []
        if line.strip() and not line.startswith("#"):
            if not block:
                start = i
            block.append(line)
        elif line.startswith("#"):
            previous = ""


def _targets(page: Path, block: str) -> list[Path]:
    """The files and folders a block links to (the site's ``results/`` pages mapped back to
    ``bench/results``)."""
    out = []
    for target in LINK.findall(block):
        if "://" in target:
            continue
        path = (page.parent / target).resolve()
        if page.is_relative_to(DOCS) and target.startswith(("results/", "../results/")):
            path = RESULTS / target.split("results/", 1)[1]
            if path.suffix == ".md" and not path.exists():
                path = path.with_suffix("")  # results/<folder>.md is the folder's page
        out.append(path)
    return out


def _cited(page: Path, block: str) -> tuple[Path, ...]:
    folders = []
    for path in _targets(page, block):
        if path.is_relative_to(RESULTS):
            parts = path.relative_to(RESULTS).parts
            if len(parts) > 1 or (parts and (RESULTS / parts[0]).is_dir()):
                folders.append(RESULTS / parts[0])
    if page.parent.parent == RESULTS:
        folders.append(page.parent)
    return tuple(dict.fromkeys(folders))


def claims(texts: dict[Path, str] | None = None) -> list[Claim]:
    """Every quoted number of :data:`PAGES` with the results its block cites (``texts``:
    a page's text to read instead of its file)."""
    out = []
    for page in PAGES:
        text = (texts or {}).get(page) or page.read_text()
        for line, block in _blocks(text):
            folders = _cited(page, block)
            if not folders:
                continue
            files = tuple(p for p in _targets(page, block) if p.suffix == ".csv" and p.is_file())
            # a code span that names a setting keeps its name (`inner_lr` 0.001 is a
            # setting); any other code span is left out
            plain = CODE.sub(lambda m: m.group(0)[1:-1] if re.fullmatch(r"`\w+`", m.group(0))
                             else " ", re.sub(r"\]\([^)]*\)", "]", block))
            for m in NUMBER.finditer(plain):
                num, unit = m.group("num"), m.group("unit")
                # the first end of a range of ratios ("1.5-1.9×") is a ratio too
                unit = unit or RANGE_OF_RATIOS.match(plain, m.end())
                before = plain[max(0, m.start() - 24):m.start()]
                if "." not in num and "e" not in num and not unit:
                    continue  # a count or a size
                if SETTING.search(before) or re.search(r"\d[-/:]$", before) and not unit:
                    continue
                out.append(Claim(page, line, block, num, folders, bool(unit), files))
    return out


TOKEN = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")


@cache
def tokens(folder: Path) -> frozenset[str]:
    """Every number as written in the folder's markdown (the tables its tools wrote; not
    its README, whose numbers are themselves quotes)."""
    return frozenset(t for p in folder.rglob("*.md") if p.name != "README.md"
                     for t in TOKEN.findall(p.read_text()))


@cache
def rows(folder: Path) -> tuple[tuple[float, ...], ...]:
    """The numbers of every table row (markdown and CSV) of the folder, row by row."""
    out = []
    for path in folder.rglob("*"):
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                out += [_floats(" ".join(r)) for r in csv.reader(f)]
        elif path.suffix == ".md" and path.name != "README.md":
            out += [_floats(line) for line in path.read_text().splitlines()
                    if TABLE_ROW.match(line)]
    return tuple(r for r in out if r)


@cache
def cells(folder: Path) -> tuple[float, ...]:
    """Every CSV cell of a folder that has no markdown of its own (results written only
    as CSV), or of one CSV file."""
    if folder.is_dir() and any(p.name != "README.md" for p in folder.rglob("*.md")):
        return ()
    found: set[float] = set()
    for path in (folder.rglob("*.csv") if folder.is_dir() else [folder]):
        with path.open(newline="") as f:
            for row in csv.reader(f):
                found |= set(_floats(" ".join(row)))
    return tuple(sorted(found))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(v for v in map(float, TOKEN.findall(text)) if math.isfinite(v))


def matches(quoted: str, value: float) -> bool:
    """``value`` written at the precision of ``quoted`` is ``quoted`` (significant digits
    for scientific notation)."""
    q = float(quoted)
    if "e" in quoted:
        mantissa = quoted.split("e")[0]
        digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
        scale = 10 ** (math.floor(math.log10(abs(q))) - digits) if q else 0
        return abs(abs(value) - q) <= 0.5 * scale * (1 + 1e-9)
    digits = len(quoted.split(".")[1]) if "." in quoted else 0
    return abs(abs(value) - q) <= 0.5 * 10 ** -digits * (1 + 1e-9)


def found(claim: Claim) -> bool:
    """The quoted number is written in the cited folder's markdown; or it is a ratio (×)
    of two numbers of one table row there; or a cell of a CSV file the block links to (or
    of a folder of CSV only) rounds to it."""
    for path in claim.files:
        if any(matches(claim.number, v) for v in cells(path)):
            return True
    for folder in claim.folders:
        if claim.number in tokens(folder):
            return True
        if claim.ratio and any(matches(claim.number, a / b) for r in rows(folder)
                               for a in r for b in r if b and a != b):
            return True
        if any(matches(claim.number, v) for v in cells(folder)):
            return True
    return False
