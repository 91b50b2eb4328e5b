"""The documentation site cannot rot: its Python examples run, it builds with warnings as
errors, and a headless Chromium sees rendered equations, loaded images and no request
leaving the machine (``scripts/check_docs.py``)."""

from __future__ import annotations

import importlib.util
import json
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
    (out / "build.log").write_text(done.stdout + done.stderr)
    return out


@pytest.fixture(scope="module")
def build_log(site) -> str:
    return (site / "build.log").read_text()


@needs_mkdocs
def test_site_builds_with_warnings_as_errors(site, build_log):
    for page in ("index.html", "methods/index.html", "reference/api/index.html",
                 "results/index.html", "results/sweep_cpu_quick/index.html",
                 "howto/which-method/index.html", "changelog/index.html", "CITATION.cff"):
        assert (site / page).exists(), page
    html = (site / "methods" / "index.html").read_text()
    assert html.count("<math") >= 10 and "\\nabla" not in html
    # every page, the generated results pages included, is in the navigation
    assert "not included in the \"nav\"" not in build_log, build_log[-2000:]


@needs_mkdocs
def test_site_shows_the_version_and_links_results_to_their_pages(site):
    import metagrad

    index = (site / "index.html").read_text()
    assert f"metagrad {metagrad.__version__}" in index
    memory = (site / "howto" / "memory" / "index.html").read_text()
    assert 'href="../../results/memory_convnet_cpu_checkpoint10/"' in memory
    assert "bench/results" not in re.sub(r"<code>.*?</code>", "", memory, flags=re.S)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


CHECK = ROOT / "scripts" / "check_docs.py"
needs_chromium = pytest.mark.skipif(
    importlib.util.find_spec("playwright") is None or not Path(CHROMIUM).exists(),
    reason="needs the playwright package and a Chromium (Debian: apt install chromium)")


def check_docs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True)


@needs_mkdocs
@needs_chromium
def test_site_reads_right_in_chromium(site, tmp_path):
    done = check_docs("--site", str(site), "--out", str(tmp_path), "--chromium", CHROMIUM)
    assert done.returncode == 0, done.stdout + done.stderr
    for width in (1280, 390):
        for shot in ("methods", "methods_table", "api", "results_sweep", "pareto"):
            assert (tmp_path / f"{shot}-{width}.png").stat().st_size > 5_000, (shot, width)
    report = json.loads((tmp_path / "check.json").read_text())
    fonts = [f["min_font_px"] for f in report["pages"]["desktop"]["results_sweep"]["figures"]]
    assert len(fonts) >= 3 and min(fonts) >= report["min_figure_font_px"]


WIDE = "<mrow>" + "<mi>x</mi><mo>+</mo>" * 80 + "<mi>y</mi></mrow>"
BAD_PAGE = f"""<!doctype html><html><head><meta charset="utf-8"></head><body><article>
<p>A formula left as TeX: $\\frac{{a}}{{b}}$ and x_{{i}}; in code it is fine:
<code>x_{{i}}</code></p>
<div class="math"><math display="block">{WIDE}</math></div>
<pre><code>{"long_line = 1  " * 40}</code></pre>
<img src="small_text.png" style="width: 300px">
</article></body></html>"""


@needs_chromium
def test_the_browser_check_fails_on_raw_tex_clipped_math_hidden_code_and_small_figure_text(
        tmp_path):
    from metagrad import plotting

    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html><body><article>ok</article></body></html>")
    (site / "bad.html").write_text(BAD_PAGE)
    fig, ax = plotting.plt.subplots(figsize=(10, 3))
    ax.set_title("seven-point text", fontsize=7)   # 11.7 px in the PNG, 2.9 px at 300 px
    plotting.save(fig, site / "small_text.png")
    done = check_docs("--site", str(site), "--out", str(tmp_path / "out"), "--chromium",
                      CHROMIUM, "--page", "bad=bad.html")
    assert done.returncode == 1, done.stdout + done.stderr
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL:")]
    assert any("raw TeX" in f and "\\frac" in f and "_{" in f for f in fails), fails
    assert any("(phone): math cut off" in f for f in fails), fails
    assert any("code lines hidden" in f for f in fails), fails
    assert any("(desktop): text in small_text.png is 2.9 px" in f for f in fails), fails


def test_the_browser_check_without_chromium_says_how_to_install_it(tmp_path):
    (tmp_path / "index.html").write_text("<html></html>")
    done = check_docs("--site", str(tmp_path), "--out", str(tmp_path / "out"), "--chromium",
                      str(tmp_path / "no-chromium"))
    assert done.returncode == 2
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "apt install chromium" in done.stderr and "Traceback" not in done.stderr


# -- what the pages say -----------------------------------------------------------------------

PROSE = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "CITATION.cff",
                *(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts),
                *(ROOT / "bench" / "results").rglob("*.md")])
TOOL_TALK = re.compile(
    r"device minutes?|device time|nothing can be fetched|code corpus|\bcorpus\b|"
    r"development machine|\blent\b|\bsessions?\b|\bhelper sessions?\b|these machines|"
    r"project's machines|DESIGN\.md|\.\./shared|\bissue #?\d+|sandbox", re.I)


@pytest.mark.parametrize("page", PROSE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_speak_to_users_not_about_the_project_s_machines_or_tools(page):
    found = sorted({m.group(0) for m in TOOL_TALK.finditer(page.read_text())})
    assert not found, f"{page.relative_to(ROOT)}: {found}"


def test_the_word_list_catches_tool_talk():
    for phrase in ("the device minutes ran out", "in the code corpus", "a lent GPU",
                   "on the shared development machine", "nothing can be fetched there"):
        assert TOOL_TALK.search(phrase), phrase
    for phrase in ("an excellent fit", "the GPU machine", "a 2-core x86_64 CPU"):
        assert not TOOL_TALK.search(phrase), phrase


MD_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s#]+)(?:#[^)]*)?\)|!\[[^\]]*\]\(([^)\s#]+)\)")
READ_DIRECTLY = [ROOT / "README.md", ROOT / "CHANGELOG.md",
                 *(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)]


@pytest.mark.parametrize("page", READ_DIRECTLY, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_work_where_the_markdown_is_read_directly(page):
    """README says the pages read on GitHub too: every relative link and image resolves to
    a file or folder of the repository (the site build checks the site's links)."""
    broken = []
    for match in MD_LINK.finditer(page.read_text()):
        target = match.group(1) or match.group(2)
        if "://" in target or target.startswith(("mailto:", "#")):
            continue
        if not (page.parent / target).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_the_version_is_one_number_everywhere():
    import importlib.metadata

    import metagrad

    version = metagrad.__version__
    assert importlib.metadata.version("metagrad") == version
    assert re.search(rf'^version = "{re.escape(version)}"$',
                     (ROOT / "pyproject.toml").read_text(), re.M)
    assert re.search(rf"^version: {re.escape(version)}$",
                     (ROOT / "CITATION.cff").read_text(), re.M)
    for page in (ROOT / "README.md", DOCS / "index.md", DOCS / "getting-started.md"):
        assert f"metagrad {version}" in page.read_text(), page
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(version)} \(\d{{4}}-\d{{2}}-\d{{2}}\)$", changelog, re.M)
    assert "## Unreleased" in changelog


def test_a_repository_address_is_set_in_one_place_and_used():
    """pyproject.toml's [project.urls] Repository is the one place the address is set (no
    page may invent one); when it is set, README shows the clone command."""
    import importlib.metadata

    urls = importlib.metadata.metadata("metagrad").get_all("Project-URL") or []
    repository = [u.split(",", 1)[1].strip() for u in urls
                  if u.split(",", 1)[0].strip().lower() == "repository"]
    readme = (ROOT / "README.md").read_text()
    if repository:
        assert f"git clone {repository[0]}" in readme
    for page in READ_DIRECTLY:
        assert "git clone http" not in page.read_text() or repository, page


def _measure_setup():
    spec = importlib.util.spec_from_file_location("measure_setup",
                                                  ROOT / "scripts" / "measure_setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_quoted_set_up_times_are_the_committed_measurement():
    measure = _measure_setup()
    expected = measure.sentence(measure.load())
    for page in measure.QUOTING:
        blocks = measure.BLOCK.findall(page.read_text())
        assert len(blocks) == 1, page
        assert blocks[0][1] == expected, (page, blocks[0][1], expected)


def test_the_set_up_sentence_says_what_the_result_holds():
    measure = _measure_setup()
    result = {"commit": "0123456789abcdef", "date": "2026-12-24",
              "machine": {"cpus": 2, "arch": "x86_64", "cpu_model": "AMD EPYC 7B13",
                          "python": "3.11.7", "torch": "2.13.0+cpu"},
              "report": {"seconds": 95.2}, "tests": {"seconds": 425.0, "counts": {
                  "passed": 801, "skipped": 24, "xfailed": 1, "warning": 3}}}
    assert measure.sentence(result) == (
        "On a 2-core x86_64 CPU (AMD EPYC 7B13), Python 3.11.7, torch 2.13.0+cpu, "
        "`metagrad report` took 95 s and the test suite 7.1 min (801 passed, 24 skipped, "
        "1 xfailed), at commit `0123456` on 2026-12-24 (`bench/results/setup/`, written by "
        "`python scripts/measure_setup.py`).")
    assert measure.test_counts("x\n== 801 passed, 24 skipped, 1 xfailed, 3 warnings in 425.03s "
                               "==") == {"passed": 801, "skipped": 24, "xfailed": 1,
                                          "warning": 3}
