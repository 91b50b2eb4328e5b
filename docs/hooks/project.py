"""MkDocs hook: what the site says about the project itself comes from one place each.

* The version is the installed package's (``importlib.metadata``, the same number as
  ``metagrad.__version__`` and pyproject.toml's): it is shown next to the site name.
* The repository's address is the ``Repository`` entry of ``[project.urls]`` in
  pyproject.toml, the one place to set it. When it is set, the site links to it in its
  header and the getting-started page shows the ``git clone`` line where it has
  ``<!-- clone -->``; until then neither appears.
* ``CHANGELOG.md`` and ``CITATION.cff`` at the repository's root are published with the
  site (the changelog as a page), and the pages' links to them (``../CHANGELOG.md``, which
  work where the Markdown is read directly) are pointed at the published copies.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PUBLISHED = {"CHANGELOG.md": "changelog.md", "CITATION.cff": "CITATION.cff"}
LINK = re.compile(r"(\]\()([^)#\s]+)((?:#[^)]*)?\))")
CLONE = "<!-- clone -->"


def version() -> str:
    return metadata.version("metagrad")


def repository() -> str | None:
    """The ``Repository`` URL of ``[project.urls]``, if one is set."""
    for entry in metadata.metadata("metagrad").get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "repository" and url.strip():
            return url.strip()
    return None


def clone_block(url: str | None) -> str:
    if not url:
        return ""
    return f"\n```bash\ngit clone {url} metagrad && cd metagrad\n```\n"


def on_config(config):
    config.site_name = f"metagrad {version()}"
    url = repository()
    if url:
        config.repo_url = url
    return config


def on_files(files: Files, config) -> Files:
    for source, uri in PUBLISHED.items():
        path = ROOT / source
        if not path.exists():
            continue
        if uri.endswith(".md"):
            files.append(File.generated(config, uri, content=path.read_text()))
        else:
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def relink(markdown: str, src_uri: str) -> str:
    """Links from the page at ``src_uri`` to the root's CHANGELOG.md or CITATION.cff go to
    their published copies."""
    page_dir = Path(src_uri).parent
    depth = len(page_dir.parts)

    def fix(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target:
            return match.group(0)
        path = (DOCS / page_dir / target).resolve()
        if path.parent != ROOT or path.name not in PUBLISHED:
            return match.group(0)
        site = Path(*([".."] * depth), PUBLISHED[path.name]) if depth else Path(
            PUBLISHED[path.name])
        return f"{match.group(1)}{site.as_posix()}{match.group(3)}"

    return LINK.sub(fix, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs API)
    if page.file.generated_by is not None:
        return markdown
    markdown = markdown.replace(CLONE, clone_block(repository()))
    return relink(markdown, page.file.src_uri)
