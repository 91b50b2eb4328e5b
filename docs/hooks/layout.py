"""MkDocs hook: two layout fixes that need the HTML, not only CSS
(``docs/stylesheets/extra.css`` has the rest; ``scripts/check_docs.py`` measures them).

* Every figure is a link to the full-size image, so that on a phone, where the column is
  narrower than the figure, a tap opens it at full resolution to zoom.
* Code in a table cell breaks only at its spaces: each word is kept whole
  (``--nproc-per-node``, ``mg.Neumann(steps,``), where a browser would otherwise break
  after a hyphen or before a bracket, mid-identifier.
"""

from __future__ import annotations

import re

IMG = re.compile(r'<img\b[^>]*\bsrc="([^"]+\.(?:png|svg))"[^>]*>')
LINKED = re.compile(r"<a\b[^>]*>\s*$")
CELL = re.compile(r"(<td\b[^>]*>)(.*?)(</td>)", re.S)
CODE = re.compile(r"(<code\b[^>]*>)([^<]*)(</code>)")
WORD = re.compile(r"\S+")


def link_figures(html: str) -> str:
    out, last = [], 0
    for match in IMG.finditer(html):
        out.append(html[last:match.start()])
        if LINKED.search(html[max(0, match.start() - 200):match.start()]):
            out.append(match.group(0))  # already inside a link
        else:
            out.append(f'<a class="figure" href="{match.group(1)}">{match.group(0)}</a>')
        last = match.end()
    out.append(html[last:])
    return "".join(out)


def whole_words(html: str) -> str:
    def code(m: re.Match) -> str:
        words = WORD.sub(lambda w: f'<span class="word">{w.group(0)}</span>', m.group(2))
        return m.group(1) + words + m.group(3)

    return CELL.sub(lambda c: c.group(1) + CODE.sub(code, c.group(2)) + c.group(3), html)


def on_page_content(html: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs API)
    return whole_words(link_figures(html))
