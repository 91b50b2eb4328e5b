"""MkDocs hook: the results pages are generated from the committed results in ``bench/results``.

One page per results folder (``results/<folder>.md``): where the results came from (the
folder's ``provenance.json``: commit, command, package versions, machine, eager or
compiled, and whether a reproducibility trace checks them), the folder's own markdown (its
README or report, which give the command, the machine and the date), every figure, the
small CSV tables rendered and every CSV linked for download, and, where the folder has no
markdown of its own, the machine and date read from the CSV's ``device_name``, ``torch``
and ``timestamp`` columns. ``bench/results/README.md`` becomes the index. Nothing is
copied into ``docs/``: the pages are built from the results each time, so they cannot
drift from them. The pages appear in the navigation under Results.

The docs pages link to results as they lie in the repository (``../bench/results/…``), so
the links work where the Markdown is read directly; on the site they are rewritten to the
generated pages.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
LINK = re.compile(r"(\]\()([^)#\s]+)((?:#[^)]*)?\))")
COPIED = (".png", ".svg", ".csv", ".json", ".md", ".txt")
PREFIX = "results"
TITLES = {
    "peers_cpu": "Peer libraries and JAX (CPU, 2 threads)",
    "peers_cpu_1thread": "Peer libraries and JAX (CPU, 1 thread)",
    "audit": "Audit of the peer libraries",
    "sweep_cpu_quick": "Sweep: time, memory and accuracy (CPU, quick grid)",
    "memory_convnet_cpu": "Memory vs K on the conv net (CPU)",
    "memory_convnet_cpu_checkpoint10": "Memory vs K with checkpointing (CPU)",
    "hvp_modes_cpu": "Hessian-vector-product modes (CPU)",
    "scaling_cpu": "Scaling across processes (2-core CPU)",
    "scaling_cpu16_h200host": "Scaling across processes (16-core CPU)",
    "scaling_cuda_h200": "Distributed on one H200 (NCCL)",
    "gpu_h200": "GPU run: one NVIDIA H200",
    "asv": "asv history",
    "check_cost_cpu": "Cost of the numerical checks (CPU)",
    "compile_cpu": "Compile times of mg.compile (CPU)",
    "setup": "Set-up times: metagrad report and the test suite",
    "study": "The method comparison study",
    "finn2017": "Finn et al. 2017's sinusoid protocol",
}
MAX_TABLE_ROWS = 40


def _title(folder: str) -> str:
    if folder in TITLES:
        return TITLES[folder]
    if folder.startswith("gpu_"):
        return f"GPU run: {folder[4:].replace('_', ' ')}"
    return folder.replace("_", " ")


def _csv_table(path: Path) -> str:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or len(rows) - 1 > MAX_TABLE_ROWS or len(rows[0]) > 14:
        return ""
    header, body = rows[0], rows[1:]

    def cell(value: str) -> str:
        try:
            number = float(value)
        except ValueError:
            return value.replace("|", "\\|")
        return f"{number:.4g}" if value.strip() else ""

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in body]
    return "\n".join(lines)


def _environment(path: Path) -> str:
    """Machine, torch and date of a CSV that records them per row."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    facts = []
    for key, label in (("device_name", "machine"), ("torch", "torch"), ("cuda", "CUDA"),
                       ("timestamp", "measured")):
        values = sorted({r.get(key, "") for r in rows} - {""})
        if values:
            shown = values if key != "timestamp" else [f"{values[0]} … {values[-1]}"]
            facts.append(f"{label}: {', '.join(shown)}")
    return "; ".join(facts)


def _demote(text: str) -> str:
    """The folder's own headings one level down (the page has its own title)."""
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)


def _relink(text: str, source: Path, page_dir: str) -> str:
    """Rewrite the relative links of a markdown file at ``source`` for a page generated in
    ``page_dir`` (a folder of the site, relative to the docs root): links into
    bench/results point at the generated copies, links into docs/ at the pages."""

    def fix(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target or target.startswith(("mailto:", "/")):
            return match.group(0)
        path = (source.parent / target).resolve()
        if path.is_relative_to(RESULTS):
            inner = path.relative_to(RESULTS)
            if path.is_dir():  # a results folder is its generated page
                inner = inner.with_suffix(".md") if inner.parts else Path("index.md")
            elif inner.name == "README.md":  # and so is its README
                inner = inner.parent.with_suffix(".md") if inner.parent.parts else Path("index.md")
            site = Path(PREFIX) / inner
        elif path.is_relative_to(DOCS):
            site = path.relative_to(DOCS)
        else:
            return match.group(0)
        depth = len(Path(page_dir).parts) if page_dir else 0
        rel = Path(*([".."] * depth), site) if depth else site
        return f"{match.group(1)}{rel.as_posix()}{match.group(3)}"

    return LINK.sub(fix, text)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs API)
    """A docs page links to results as they are in the repository (``../bench/results/
    sweep_cpu_quick/pareto.png``, which works where the Markdown is read directly, e.g. on
    GitHub); on the site those links go to the generated results pages and their copies."""
    if page.file.generated_by is not None or page.file.src_uri.startswith(PREFIX + "/"):
        return markdown
    src = Path(page.file.src_uri)
    return _relink(markdown, DOCS / src, str(src.parent) if src.parent.parts else "")


PROVENANCE_ROWS = (("commit", "commit"), ("command", "command"), ("mode", "eager / compiled"),
                   ("packages", "packages"), ("machine", "machine"), ("date", "date"),
                   ("reproducibility", "reproducible"))


def _cell(value: object) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items() if v is not None)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _provenance(path: Path) -> str:
    """A ``provenance.json`` as a two-column table (unknown fields say so)."""
    record = json.loads(path.read_text())
    rows = []
    for key, label in PROVENANCE_ROWS:
        value = record.get(key)
        if key == "commit" and value:
            value = f"`{value[:10]}`" + (" (uncommitted changes)" if record.get("dirty")
                                         else "")
        elif key == "command" and value:
            value = f"`{value}`"
        elif key == "reproducibility" and value is None:
            value = (f"checked by the tests against `{record['trace']}`"
                     if record.get("trace") else None)
        note = record.get(f"{key}_note")
        text = _cell(note) if value is None and note else \
            _cell(value) + (f" ({_cell(note)})" if note else "")
        rows.append(f"| {label} | {text} |")
    where = path.parent.resolve().relative_to(RESULTS).as_posix()
    return "\n".join([f"**Provenance** of `{where}/` (`{path.name}`: "
                      f"{_cell(record.get('source', 'written by the command'))}):", "",
                      "| | |", "|---|---|", *rows])


def _provenance_blocks(folder: Path) -> list[str]:
    """The folder's provenance records and those of its immediate subfolders."""
    paths = sorted(folder.glob("provenance*.json")) + sorted(folder.glob("*/provenance*.json"))
    return [_provenance(p) for p in paths]


def page(folder: Path) -> str:
    parts = [f"# {_title(folder.name)}", "",
             f"Generated from `bench/results/{folder.name}/` when the site is built."]
    for block in _provenance_blocks(folder):
        parts += ["", block]
    markdown = sorted(folder.glob("*.md"), key=lambda p: (p.name != "README.md", p.name))
    for md in markdown:
        parts += ["", _demote(_relink(md.read_text(), md, PREFIX))]
    described = " ".join(md.read_text() for md in markdown)
    for png in sorted(folder.glob("*.png")):
        if png.name not in described:
            parts += ["", f"![{png.stem}]({folder.name}/{png.name})"]
    for table in sorted(folder.glob("*.csv")):
        if not markdown:
            env = _environment(table)
            if env:
                parts += ["", f"*{env}*"]
            rendered = _csv_table(table)
            if rendered:
                parts += ["", rendered]
        parts += ["", f"Download: [{table.name}]({folder.name}/{table.name})"]
    return "\n".join(parts) + "\n"


def _folders() -> list[Path]:
    return sorted(p for p in RESULTS.iterdir() if p.is_dir() and any(p.iterdir()))


def _subpages(folder: Path) -> list[Path]:
    """The markdown files of a results folder that become pages of their own."""
    return sorted(p for p in folder.rglob("*.md") if p.name != "README.md")


def navigation() -> list:
    """The Results section of the navigation: the index, then one entry per folder (a
    section, when the folder has markdown files of its own besides its README)."""
    nav: list = [{"Overview": f"{PREFIX}/index.md"}]
    for folder in _folders():
        page_uri = f"{PREFIX}/{folder.name}.md"
        subs = _subpages(folder)
        if not subs:
            nav.append({_title(folder.name): page_uri})
            continue
        nav.append({_title(folder.name): [{"Overview": page_uri}] + [
            {sub.relative_to(folder).with_suffix("").as_posix():
             f"{PREFIX}/{sub.relative_to(RESULTS).as_posix()}"} for sub in subs]})
    return nav


def on_config(config):
    """Put every generated results page in the navigation, in place of the nav entry that
    names ``results/index.md``."""
    for i, entry in enumerate(config.nav or []):
        if isinstance(entry, dict) and list(entry.values()) == [f"{PREFIX}/index.md"]:
            config.nav[i] = {next(iter(entry)): navigation()}
    return config


def on_files(files: Files, config) -> Files:
    index = RESULTS / "README.md"
    listing = "\n".join(f"- [{_title(p.name)}]({p.name}.md)" for p in _folders())
    intro = _demote(_relink(index.read_text(), index, PREFIX)) if index.exists() else ""
    files.append(File.generated(config, f"{PREFIX}/index.md",
                                content=f"# Results\n\n{listing}\n\n{intro}"))
    for folder in _folders():
        files.append(File.generated(config, f"{PREFIX}/{folder.name}.md", content=page(folder)))
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.suffix not in COPIED or path.name == "README.md":
                continue
            uri = f"{PREFIX}/{path.relative_to(RESULTS).as_posix()}"
            if path.suffix == ".md":  # a page of its own, with its links fixed
                page_dir = str(Path(uri).parent)
                files.append(File.generated(config, uri, content=_relink(
                    path.read_text(), path, page_dir)))
            else:
                files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
