"""MkDocs hook: TeX math in the pages becomes MathML when the site is built.

``$…$`` (inline) and ``$$…$$`` (display, on lines of their own) are converted with
``latex2mathml``; browsers render MathML natively (MathML Core), so the equations need
no script and no network, and the built HTML holds no raw TeX. Code spans and fenced
code blocks are left alone. A formula the converter cannot handle fails the build
(``mkdocs build --strict``), naming the page.
"""

from __future__ import annotations

import re

from latex2mathml.converter import convert

FENCE = re.compile(r"(^```.*?^```[^\n]*$)", re.M | re.S)
CODE = re.compile(r"(`+)(.+?)\1", re.S)
DISPLAY = re.compile(r"^\$\$\s*\n?(.+?)\n?\s*\$\$\s*$", re.M | re.S)
INLINE = re.compile(r"(?<![\\$\w])\$(?!\s)([^$\n]+?)(?<!\s)\$(?![\w$])")


def _math(tex: str, display: bool, page: str) -> str:
    try:
        html = convert(tex.strip(), display="block" if display else "inline")
    except Exception as err:  # the converter raises its own types; say where
        raise ValueError(f"{page}: cannot convert math {tex!r}: {err}") from err
    # Inline math in a span: a line that starts with a bare <math> would be read as the
    # start of an HTML block and split from its paragraph.
    return f'<div class="math">{html}</div>' if display else f'<span class="math">{html}</span>'


def _prose(text: str, page: str) -> str:
    """Convert the math of a piece of Markdown that holds no fenced code."""
    pieces = CODE.split(text)
    # CODE.split yields [text, ticks, code, text, ticks, code, ...]: convert text only.
    out = []
    for i, piece in enumerate(pieces):
        if i % 3 == 0:
            piece = DISPLAY.sub(lambda m: "\n" + _math(m.group(1), True, page) + "\n", piece)
            piece = INLINE.sub(lambda m: _math(m.group(1), False, page), piece)
            out.append(piece)
        elif i % 3 == 2:
            out.append(pieces[i - 1] + piece + pieces[i - 1])
    return "".join(out)


def to_mathml(markdown: str, page: str = "page") -> str:
    parts = FENCE.split(markdown)
    return "".join(part if i % 2 else _prose(part, page) for i, part in enumerate(parts))


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs API)
    return to_mathml(markdown, page.file.src_uri)
