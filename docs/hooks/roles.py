"""MkDocs hook: Sphinx-style roles in docstrings (``:class:`X```, ``:func:`f```) read as plain
code in the API reference; the role prefix itself is dropped from the built pages."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):(?=<code)")


def on_page_content(html: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs API)
    return ROLE.sub("", html)
