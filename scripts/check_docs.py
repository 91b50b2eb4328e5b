"""Check the built documentation site as a reader would: in headless Chromium.

    python scripts/check_docs.py [--site site] [--out docs_check] [--chromium /usr/bin/chromium]

Serves the built site (``mkdocs build``) on a local port, opens the index, the methods page,
the API reference and a results page, takes a full-page screenshot of each, and checks

* that the equations rendered: the page holds MathML elements with a visible size, and its
  rendered text holds no raw TeX (``$…$``, ``\\frac``, ``\\nabla``, …);
* that every image loaded (``complete`` and a natural width above zero);
* that nothing was fetched from outside the local server (every such request is blocked
  and recorded, so math and styles must work offline).

Exit 0 when every check passes, 1 otherwise; the screenshots and ``check.json`` go to --out.
Needs the ``playwright`` Python package (no browser download: it drives the system
Chromium given by --chromium).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import sys
import threading
from pathlib import Path

PAGES = {
    "index": "",
    "methods": "methods/",
    "api": "reference/api/",
    "results_sweep": "results/sweep_cpu_quick/",
    "results_gpu": "results/gpu_h200/",
}
RAW_TEX = re.compile(r"\$[^$\n]{1,200}\$|\\(frac|nabla|lambda|alpha|theta|phi|sum|mathrm|left|right)\b")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the check's output readable
        pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def check_page(page, url: str, shot: Path) -> dict:
    page.goto(url, wait_until="networkidle")
    facts = page.evaluate("""() => {
        const maths = [...document.querySelectorAll('math')];
        const images = [...document.querySelectorAll('article img, .md-content img')];
        return {
            text: document.querySelector('article, .md-content, body').innerText,
            math: maths.length,
            math_visible: maths.filter(m => m.getBoundingClientRect().height > 4).length,
            images: images.map(i => ({src: i.getAttribute('src'),
                                      ok: i.complete && i.naturalWidth > 0})),
            title: document.title,
        };
    }""")
    page.screenshot(path=str(shot), full_page=True)
    raw = sorted(set(m.group(0) for m in RAW_TEX.finditer(facts["text"])))[:10]
    return {"url": url, "title": facts["title"], "screenshot": shot.name,
            "math": facts["math"], "math_visible": facts["math_visible"], "raw_tex": raw,
            "images": len(facts["images"]),
            "broken_images": [i["src"] for i in facts["images"] if not i["ok"]]}


def run(site: Path, out: Path, chromium: str) -> int:
    from playwright.sync_api import sync_playwright

    if not (site / "index.html").exists():
        print(f"check_docs: no built site in {site} (run mkdocs build)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    server, base = serve(site)
    outside: list[str] = []
    results = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def route(r):
                if r.request.url.startswith(base):
                    r.continue_()
                else:  # the site must not need the network
                    outside.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            for name, path in PAGES.items():
                results[name] = check_page(page, base + path, out / f"{name}.png")
            browser.close()
    finally:
        server.shutdown()
    failures = []
    for name, r in results.items():
        if r["raw_tex"]:
            failures.append(f"{name}: raw TeX in the rendered text: {r['raw_tex']}")
        if r["broken_images"]:
            failures.append(f"{name}: images that did not load: {r['broken_images']}")
        if r["math"] != r["math_visible"]:
            failures.append(f"{name}: {r['math'] - r['math_visible']} equations not rendered")
    if results["methods"]["math"] < 10:
        failures.append("methods: expected the definitions' equations, found "
                        f"{results['methods']['math']}")
    if results["results_sweep"]["images"] < 3:
        failures.append("results_sweep: expected the sweep's figures")
    if results["results_gpu"]["images"] < 3:
        failures.append("results_gpu: expected the GPU sweep's figures")
    if outside:
        failures.append(f"requests outside the local server: {sorted(set(outside))[:5]}")
    report = {"pages": results, "outside_requests": sorted(set(outside)), "failures": failures}
    (out / "check.json").write_text(json.dumps(report, indent=2) + "\n")
    for name, r in results.items():
        print(f"{name:14s} {r['url']}: {r['math_visible']}/{r['math']} equations, "
              f"{r['images'] - len(r['broken_images'])}/{r['images']} images, "
              f"screenshot {out / r['screenshot']}")
    for line in failures:
        print("FAIL:", line)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="site")
    ap.add_argument("--out", default="docs_check")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)
    return run(Path(args.site), Path(args.out), args.chromium)


if __name__ == "__main__":
    raise SystemExit(main())
