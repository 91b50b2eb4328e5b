"""Check the built documentation site as a reader would: in headless Chromium, on a desktop
(1280 px wide) and on a phone (390 px wide).

    python scripts/check_docs.py [--site site] [--out docs_check] [--chromium /usr/bin/chromium]

Serves the built site (``mkdocs build``) on a local port, opens the pages in ``PAGES`` at
both widths, takes a screenshot of the top of each, of the methods table and of the
Pareto figure (``SHOTS``), and fails when a reader would stumble:

* **equations**: every MathML element has a visible size; the rendered prose (code, code
  blocks and MathML left out) holds no raw TeX: ``$…$``, a TeX command (``\\frac``,
  ``\\sqrt``, …) or a TeX sub/superscript group (``_{…}``, ``^{…}``);
* **clipped math**: an equation (display or inline) wider than its column must sit in a
  box that scrolls sideways; one cut off by its container or running past the edge of
  the window fails (checked at both widths);
* **code**: no line of a code block is hidden past the block's right edge or the
  window's (a block that scrolls sideways hides it too), and the copy button covers no
  code text;
* **tables**: no identifier in a table's code is broken across two lines mid-word (each
  whitespace-separated word of a ``code`` element lies on one line), and on the desktop
  no table is wider than the text column (on the phone a wide table scrolls sideways);
* **figure text**: every figure on the checked pages records, in its PNG, the smallest
  font size it holds in image pixels (``metagrad:min_font_px``, written by
  ``metagrad.plotting.save`` as points × dpi / 72); shown at its rendered width, that
  is ``min_font_px × rendered width / natural width`` CSS pixels, and it must be at
  least ``MIN_FIGURE_FONT_PX`` (10 px, about two thirds of the site's 16 px body text)
  on the desktop. A figure without the record fails as unmeasurable. On the phone the
  size is reported, not enforced: every figure there opens full size when tapped;
* **images** all load, and **nothing is fetched** from outside the local server (every
  such request is blocked and recorded, so math and styles must work offline).

Exit 0 when every check passes, 1 when one fails, 2 when it cannot run (no built site, no
Chromium or no playwright: one line says what to install). Screenshots and
``check.json`` go to --out.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import struct
import sys
import threading
import zlib
from pathlib import Path

PAGES = {
    "index": "",
    "methods": "methods/",
    "verification": "verification/",
    "which_method": "howto/which-method/",
    "choose_settings": "howto/choose-settings/",
    "inner_loops": "howto/inner-loops/",
    "getting_started": "getting-started/",
    "benchmarks": "benchmarks/",
    "api": "reference/api/",
    "api_testing": "reference/testing/",
    "api_problems": "reference/problems/",
    "results_sweep": "results/sweep_cpu_quick/",
    "results_gpu": "results/gpu_h200/",
}
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
SHOTS = {  # name -> (page, CSS selector of the element, or None for the top of the page)
    "methods": ("methods", None),
    "methods_table": ("methods", "article table"),
    "api": ("api", None),
    "results_sweep": ("results_sweep", None),
    "pareto": ("results_sweep", "article img[src$='pareto.png']"),
}
MIN_FIGURE_FONT_PX = 10.0
FONT_KEY = "metagrad:min_font_px"
RAW_TEX = re.compile(r"\$[^$\n]{1,200}\$|\\[A-Za-z]{2,}\b|[_^]\{")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
INSTALL_CHROMIUM = ("check_docs: needs Chromium at {path} (Debian/Ubuntu: apt install "
                    "chromium; or pass --chromium PATH)")
INSTALL_PLAYWRIGHT = ("check_docs: needs the playwright Python package (pip install -e "
                      "'.[docs]'); it drives the system Chromium, no browser download")

# What the page looks like to a reader, measured in the browser (one evaluate per page).
MEASURE = r"""
() => {
  const article = document.querySelector('article') || document.body;
  const vw = document.documentElement.clientWidth;
  // prose only: code, code blocks and MathML (whose text is the formula) left out
  const prose = article.cloneNode(true);
  prose.querySelectorAll('pre, code, math, script, style').forEach(e => e.remove());
  const maths = [...article.querySelectorAll('math')];
  // Is part of el's content out of sight? Its extent against every box that clips it
  // (overflow other than visible; a scrolling box counts as clipping unless
  // scrollOk), starting at el itself, and against the window.
  // The box of el's visible characters (spaces left out: a wrapped line's trailing
  // spaces hang past the edge without hiding anything).
  const ink = el => {
    let left = Infinity, right = -Infinity;
    const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let t = walk.nextNode(); t; t = walk.nextNode()) {
      const re = /\S+/g; let w;
      while ((w = re.exec(t.data))) {
        const range = document.createRange();
        range.setStart(t, w.index); range.setEnd(t, w.index + w[0].length);
        for (const r of range.getClientRects()) {
          if (r.width > 0) { left = Math.min(left, r.left); right = Math.max(right, r.right); }
        }
      }
    }
    return {left, right};
  };
  const cut = (el, scrollOk) => {
    const box = ink(el);
    if (box.right < box.left) return false;
    for (let a = el; a && a !== document.documentElement; a = a.parentElement) {
      const style = getComputedStyle(a), r = a.getBoundingClientRect();
      if (style.overflowX === 'visible') continue;
      if (box.right <= r.right + 1 && box.left >= r.left - 1) continue;
      return !(scrollOk && ['auto', 'scroll'].includes(style.overflowX));
    }
    return box.right > vw + 1 || box.left < -1;
  };
  const clipped = maths.filter(m => cut(m, true)).map(m => m.textContent.slice(0, 60));
  const hiddenCode = [], covered = [];
  for (const pre of article.querySelectorAll('pre')) {
    const code = pre.querySelector('code');
    if (!code) continue;
    if (cut(code, false))
      hiddenCode.push(code.textContent.split('\n')
                      .reduce((a, b) => a.length >= b.length ? a : b).slice(0, 80));
    const button = pre.parentElement.querySelector('.md-clipboard, .md-code__button, button');
    if (!button) continue;
    const b = button.getBoundingClientRect();
    if (b.width === 0) continue;
    // the visible characters only: wrapped lines keep their trailing spaces
    const walk = document.createTreeWalker(code, NodeFilter.SHOW_TEXT);
    let hit = false;
    for (let t = walk.nextNode(); t && !hit; t = walk.nextNode()) {
      const re = /\S+/g; let w;
      while (!hit && (w = re.exec(t.data))) {
        const range = document.createRange();
        range.setStart(t, w.index); range.setEnd(t, w.index + w[0].length);
        for (const r of range.getClientRects()) {
          const inside = r.left < b.right && r.right > b.left
                         && r.top < b.bottom && r.bottom > b.top;
          if (r.width > 0 && inside) hit = true;
        }
      }
    }
    if (hit) covered.push(code.textContent.slice(0, 60));
  }
  const broken = [];
  for (const code of article.querySelectorAll('table code')) {
    const walk = document.createTreeWalker(code, NodeFilter.SHOW_TEXT);
    for (let t = walk.nextNode(); t; t = walk.nextNode()) {
      const re = /\S+/g; let m;
      while ((m = re.exec(t.data))) {
        const range = document.createRange();
        range.setStart(t, m.index); range.setEnd(t, m.index + m[0].length);
        const tops = new Set([...range.getClientRects()].filter(r => r.width > 0)
                                                          .map(r => Math.round(r.top)));
        if (tops.size > 1) broken.push(m[0]);
      }
    }
  }
  const wideTables = [...article.querySelectorAll('table')]
      .filter(t => t.getBoundingClientRect().width > article.clientWidth + 1)
      .map(t => t.innerText.split('\n')[0].slice(0, 60));
  const images = [...article.querySelectorAll('img')].map(i => ({
      src: i.getAttribute('src'), url: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0,
      natural: i.naturalWidth, shown: i.getBoundingClientRect().width}));
  return {title: document.title, text: prose.innerText, math: maths.length,
          math_visible: maths.filter(m => m.getBoundingClientRect().height > 4).length,
          clipped_math: clipped, hidden_code: hiddenCode, copy_button_covers: covered,
          broken_words: broken, wide_tables: wideTables, images: images,
          page_overflow: document.documentElement.scrollWidth > vw + 1};
}
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the check's output readable
        pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def png_text(path: Path) -> dict[str, str]:
    """The tEXt chunks of a PNG (where matplotlib writes ``savefig(metadata=...)``)."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return {}
    out, pos = {}, 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"tEXt" and b"\0" in body:
            key, value = body.split(b"\0", 1)
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt" and b"\0" in body:
            key, rest = body.split(b"\0", 1)
            out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"IEND":
            break
        pos += 12 + length
    return out


def figure_fonts(images: list[dict], site: Path, base: str) -> list[dict]:
    """Each PNG's smallest font as shown: recorded px × rendered / natural width."""
    out = []
    for image in images:
        url = image["url"]
        if not url.startswith(base) or not url.lower().endswith(".png") or not image["ok"]:
            continue
        recorded = png_text(site / url[len(base):]).get(FONT_KEY)
        shown = (float(recorded) * image["shown"] / image["natural"]
                 if recorded and image["natural"] else None)
        out.append({"src": image["src"], "min_font_px": None if shown is None else round(shown, 1),
                    "recorded_px": recorded, "natural_width": image["natural"],
                    "shown_width": round(image["shown"])})
    return out


def check_page(page, url: str, site: Path, base: str) -> dict:
    page.goto(url, wait_until="networkidle")
    facts = page.evaluate(MEASURE)
    raw = sorted(set(m.group(0) for m in RAW_TEX.finditer(facts["text"])))[:10]
    return {"url": url, "title": facts["title"], "math": facts["math"],
            "math_visible": facts["math_visible"], "raw_tex": raw,
            "clipped_math": facts["clipped_math"], "hidden_code": facts["hidden_code"],
            "copy_button_covers": facts["copy_button_covers"],
            "broken_words": sorted(set(facts["broken_words"])),
            "wide_tables": facts["wide_tables"],
            "page_overflow": facts["page_overflow"],
            "images": len(facts["images"]),
            "broken_images": [i["src"] for i in facts["images"] if not i["ok"]],
            "figures": figure_fonts(facts["images"], site, base)}


def failures_of(view: str, name: str, r: dict) -> list[str]:
    where = f"{name} ({view})"
    out = []
    if r["raw_tex"]:
        out.append(f"{where}: raw TeX in the rendered text: {r['raw_tex']}")
    if r["math"] != r["math_visible"]:
        out.append(f"{where}: {r['math'] - r['math_visible']} equations not rendered")
    if r["clipped_math"]:
        out.append(f"{where}: math cut off: {r['clipped_math'][:3]}")
    if r["hidden_code"]:
        out.append(f"{where}: code lines hidden past the block's edge: {r['hidden_code'][:3]}")
    if r["copy_button_covers"]:
        out.append(f"{where}: the copy button covers code: {r['copy_button_covers'][:3]}")
    if r["broken_words"]:
        out.append(f"{where}: identifiers broken across lines in a table: "
                   f"{r['broken_words'][:5]}")
    if view == "desktop" and r["wide_tables"]:
        out.append(f"{where}: tables wider than the text column: {r['wide_tables'][:3]}")
    if r["broken_images"]:
        out.append(f"{where}: images that did not load: {r['broken_images']}")
    for fig in r["figures"]:
        if fig["min_font_px"] is None:
            out.append(f"{where}: {fig['src']} does not record its font sizes "
                       f"({FONT_KEY}); redraw it with metagrad.plotting.save")
        elif view == "desktop" and fig["min_font_px"] < MIN_FIGURE_FONT_PX:
            out.append(f"{where}: text in {fig['src']} is {fig['min_font_px']} px as shown "
                       f"(< {MIN_FIGURE_FONT_PX:g} px)")
    return out


def run(site: Path, out: Path, chromium: str, pages: dict[str, str] | None = None) -> int:
    """Check ``pages`` (name -> path in the site; default :data:`PAGES`, with the checks
    of what those pages must hold) of the built ``site``; screenshots and check.json in
    ``out``. Returns the exit status."""
    if not (site / "index.html").exists():
        print(f"check_docs: no built site in {site} (run mkdocs build)", file=sys.stderr)
        return 2
    if not Path(chromium).exists():
        print(INSTALL_CHROMIUM.format(path=chromium), file=sys.stderr)
        return 2
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print(INSTALL_PLAYWRIGHT, file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    default = pages is None
    pages = PAGES if pages is None else pages
    server, base = serve(site)
    outside: list[str] = []
    results: dict[str, dict[str, dict]] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            for view, (width, height) in WIDTHS.items():
                page = browser.new_page(viewport={"width": width, "height": height},
                                        device_scale_factor=1)

                def route(r):
                    if r.request.url.startswith(base):
                        r.continue_()
                    else:  # the site must not need the network
                        outside.append(r.request.url)
                        r.abort()

                page.route("**/*", route)
                results[view] = {}
                for name, path in pages.items():
                    results[view][name] = check_page(page, base + path, site, base)
                    for shot, (on, selector) in (SHOTS.items() if default else ()):
                        if on != name:
                            continue
                        target = out / f"{shot}-{width}.png"
                        if selector is None:
                            page.evaluate("window.scrollTo(0, 0)")
                            page.screenshot(path=str(target))
                        else:
                            page.locator(selector).first.screenshot(path=str(target))
                page.close()
            browser.close()
    finally:
        server.shutdown()
    failures = [f for view, by_page in results.items() for name, r in by_page.items()
                for f in failures_of(view, name, r)]
    desktop = results["desktop"]
    if default and desktop["methods"]["math"] < 10:
        failures.append("methods: expected the definitions' equations, found "
                        f"{desktop['methods']['math']}")
    for name in ("results_sweep", "results_gpu") if default else ():
        if desktop[name]["images"] < 3:
            failures.append(f"{name}: expected the sweep's figures")
    if outside:
        failures.append(f"requests outside the local server: {sorted(set(outside))[:5]}")
    report = {"pages": results, "outside_requests": sorted(set(outside)),
              "min_figure_font_px": MIN_FIGURE_FONT_PX, "failures": failures}
    (out / "check.json").write_text(json.dumps(report, indent=2) + "\n")
    for view, by_page in results.items():
        for name, r in by_page.items():
            fonts = [f["min_font_px"] for f in r["figures"]]
            shown = (f", figure text ≥ {min(f for f in fonts if f is not None):.1f} px"
                     if any(f is not None for f in fonts) else "")
            print(f"{view:7s} {name:16s} {r['math_visible']}/{r['math']} equations, "
                  f"{r['images'] - len(r['broken_images'])}/{r['images']} images{shown}")
    print(f"screenshots and check.json in {out}")
    for line in failures:
        print("FAIL:", line)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="site")
    ap.add_argument("--out", default="docs_check")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--page", action="append", default=None, metavar="NAME=PATH",
                    help="check this page instead of the default list (repeatable)")
    args = ap.parse_args(argv)
    pages = None
    if args.page:
        bad = [p for p in args.page if "=" not in p]
        if bad:
            ap.error(f"--page takes NAME=PATH, got {bad[0]!r}")
        pages = dict(p.split("=", 1) for p in args.page)
    return run(Path(args.site), Path(args.out), args.chromium, pages)


if __name__ == "__main__":
    raise SystemExit(main())
