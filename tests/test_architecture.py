"""How the project is put together: what ``import metagrad`` costs, which way imports
run between the library and its applications, what a user's installation holds, and
that the project documents itself in its own words."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "matplotlib", "seaborn", "tqdm", "scipy")
APPLICATIONS = ("metagrad.train", "metagrad.report", "metagrad.verify", "metagrad.testing",
                "metagrad.cli", "metagrad._app", "metagrad.plotting", "metagrad_bench")


def _run(code: str, **kw) -> str:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True,
                          capture_output=True, text=True, **kw).stdout


def test_import_metagrad_loads_no_application_dependencies():
    """Modules that ``import metagrad`` adds to what ``import torch`` already loads (torch
    itself imports tqdm on some releases, so the comparison is against torch alone)."""
    out = _run(f"""
        import sys, torch
        before = set(sys.modules)
        import metagrad
        added = {{m.split('.')[0] for m in set(sys.modules) - before}}
        print(sorted(added & set({HEAVY!r})))
        print(sorted(m for m in sys.modules if m.startswith({APPLICATIONS!r})))
    """)
    heavy, apps = out.splitlines()
    assert heavy == "[]", heavy
    assert apps == "[]", apps


def test_cli_loads_only_the_command_it_runs():
    out = _run("""
        import sys
        from metagrad.cli import build_parser, main
        build_parser()  # `metagrad --help`
        print(sorted(m for m in sys.modules if m.startswith(("pandas", "metagrad_bench",
                                                             "metagrad.train"))))
    """)
    assert out.strip() == "[]"


def _imports(path: Path) -> set[str]:
    found = set()
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # resolve relative imports against the module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module or "")
    return found


def test_library_never_imports_the_applications():
    """The library (every module of metagrad/ outside the application packages) imports no
    application and no benchmark code, statically, lazily or not: no cycle can form."""
    library = [p for p in (ROOT / "metagrad").rglob("*.py")
               if not any(part in ("train", "report", "verify", "testing") for part in p.parts)
               and p.name not in ("cli.py", "_app.py", "plotting.py", "__main__.py")]
    assert len(library) >= 15
    for path in library:
        bad = sorted(m for m in _imports(path) if m.startswith(APPLICATIONS))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_pointer_outside_the_repository():
    """Docs, docstrings, messages and committed results speak in the project's own words."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    pattern = re.compile(r"\.\./shared|DESIGN\.md|\bissue \d+", re.IGNORECASE)
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".toml", ".ini", ".sh", ".json", ".csv", ".txt",
                               ".cfg", ".yml", ".yaml") or not path.exists():
            continue
        if name == "tests/test_architecture.py":
            continue
        for i, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{name}:{i}: {line.strip()[:80]}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.skipif(os.environ.get("METAGRAD_SKIP_WHEEL_TEST") == "1",
                    reason="METAGRAD_SKIP_WHEEL_TEST=1")
def test_installed_wheel_works_beside_a_decoy_reference(tmp_path):
    """Build the wheel, install it into a fresh virtual environment (its dependencies taken
    from this environment's site-packages, so nothing is downloaded), and run
    ``metagrad verify --quick`` from a folder that holds a ``reference.py`` and a ``bench/``
    of the user's own: the installed oracle and benchmarks must not be shadowed."""
    # Build from a copy of the files git would commit, so the build leaves nothing here.
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "source"
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(dist), str(source)], check=True,
                   capture_output=True)
    wheel = next(dist.glob("metagrad-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = next((venv / "lib").glob("python*/site-packages"))
    # A plain path entry: this environment's packages, but not its editable install of
    # metagrad (that is a .pth *inside* it, which a path entry does not execute).
    (site / "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --force-reinstall: the test environment's own (editable) metagrad of the same version
    # is visible through the .pth, and some pip releases would then skip the wheel.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--force-reinstall", str(wheel)], check=True, capture_output=True)
    user = tmp_path / "user_project"
    (user / "bench").mkdir(parents=True)
    (user / "reference.py").write_text("raise ImportError('the user reference.py was imported')\n")
    (user / "bench" / "__init__.py").write_text(
        "raise ImportError('the user bench/ was imported')\n")
    where = subprocess.run(
        [str(python), "-c", "import metagrad, metagrad_reference, metagrad_bench; "
         "print(metagrad.__file__, metagrad_reference.__file__, metagrad_bench.__file__)"],
        cwd=user, check=True, capture_output=True, text=True).stdout
    assert all(p.startswith(str(site)) for p in where.split()), where
    done = subprocess.run([str(venv / "bin" / "metagrad"), "verify", "--quick", "--no-fd",
                           "--out", str(tmp_path / "verify")], cwd=user, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cases passed" in done.stdout


def test_every_package_is_installed():
    """A package folder left out of pyproject's list would be missing from the wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    names = {"metagrad": "metagrad", "reference": "metagrad_reference", "bench": "metagrad_bench"}
    found = set()
    for top, installed in names.items():
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((installed, *parts)))
    assert found == listed, (found ^ listed)
