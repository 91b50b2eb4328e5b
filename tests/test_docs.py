"""The documentation site cannot rot: its Python examples run, it builds with warnings as
errors, and a headless Chromium sees rendered equations, loaded images and no request
leaving the machine (``scripts/check_docs.py``)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# audit.md runs in tests/test_testing.py (with its CLI lines); finn2017.md has no examples.
PAGES = sorted(p for p in DOCS.rglob("*.md") if p.name not in ("audit.md",)
               and "hooks" not in p.parts)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_python_examples_on_the_page_run(page, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, str(page), "exec"), namespace)  # noqa: S102


def test_docs_pages_have_no_broken_python_fences():
    """A block meant to run must be fenced ```python; everything else is text."""
    for page in PAGES:
        for lang in re.findall(r"^```(\w*)", page.read_text(), flags=re.M):
            assert lang in ("", "python", "bash", "text"), (page, lang)


needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="the docs extra is not installed: pip install -e '.[docs]'")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(out)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@needs_mkdocs
def test_site_builds_with_warnings_as_errors(site):
    for page in ("index.html", "methods/index.html", "reference/api/index.html",
                 "results/index.html", "results/sweep_cpu_quick/index.html"):
        assert (site / page).exists(), page
    html = (site / "methods" / "index.html").read_text()
    assert html.count("<math") >= 10 and "\\nabla" not in html


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@needs_mkdocs
@pytest.mark.skipif(
    importlib.util.find_spec("playwright") is None or not Path(CHROMIUM).exists(),
    reason="needs the playwright package and a Chromium (Debian: apt install chromium)")
def test_site_reads_right_in_chromium(site, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_docs.py"), "--site",
                           str(site), "--out", str(tmp_path), "--chromium", CHROMIUM],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    for shot in ("index.png", "methods.png", "api.png", "results_sweep.png"):
        assert (tmp_path / shot).stat().st_size > 10_000, shot
