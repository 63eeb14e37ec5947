"""Headless-browser check of an HTML report: do its ``<model-viewer>`` meshes load and show in a real browser?

    python benchmarks/report_browser.py                               # runs/quickstart/report/index.html
    python benchmarks/report_browser.py path/to/index.html --root path/to/run   # serve a folder above the page
    python benchmarks/report_browser.py --demo /tmp/mvdemo            # a hemisphere GLB page: no trained model needed

Serves the page's folder (or ``--root``) on 127.0.0.1 with ``http.server`` in a thread (``model-viewer`` is an ES
module: Chromium refuses module scripts on ``file://`` pages, so the meshes never load there) and runs headless
Chromium once with ``--dump-dom`` and ``--screenshot``. WebGL runs on the CPU (SwiftShader through ANGLE):

    chromium --headless=new --no-sandbox --disable-gpu --use-angle=swiftshader --enable-unsafe-swiftshader
             --window-size=1280,2000 --virtual-time-budget=15000 --screenshot=OUT.png --dump-dom URL

Every served HTML page gets a small probe script (the page needs no change): each ``<model-viewer>`` gets
``data-lap-loaded`` on its ``load`` event, ``data-lap-visible`` when it shows the model, ``data-lap-error`` on
``error`` and ``data-lap-rect`` (its box in the screenshot). The probe stops ``auto-rotate`` on load, so the
screenshot shows each viewer's initial camera orbit, the same on a fast or a loaded machine. Prints a table (page,
meshes found, loaded, visible, pixel std of each viewer in the screenshot, screenshot path, CPU seconds of the
browser) and exits 1 when a mesh did not load or a viewer inside the screenshot is one flat colour.
Needs Chromium (``apt-get install chromium``); about 15 CPU-seconds a page; ``--json`` writes the results.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import html.parser
import http.server
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ASSETS = REPO / "lapmodel" / "viz" / "assets"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--hide-scrollbars", "--no-first-run", "--mute-audio"]

PROBE = """<script>/* lap report_browser probe */(function () {
  function rect(mv) {
    var r = mv.getBoundingClientRect();
    return [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round).join(",");
  }
  function watch(mv) {
    mv.addEventListener("load", function () {
      mv.setAttribute("data-lap-loaded", "");
      if (mv.autoRotate) { mv.autoRotate = false; mv.resetTurntableRotation(0); }  /* the initial view */
    });
    mv.addEventListener("model-visibility", function (e) {
      if (e.detail.visible) mv.setAttribute("data-lap-visible", "");
    });
    mv.addEventListener("error", function (e) {
      var d = e.detail || {};
      mv.setAttribute("data-lap-error", String(d.type || "error") + (d.sourceError ? ": " + d.sourceError : ""));
    });
  }
  function scan() {
    document.querySelectorAll("model-viewer").forEach(function (mv) {
      if (!mv.__lapProbe) { mv.__lapProbe = true; watch(mv); }
      if (mv.loaded) mv.setAttribute("data-lap-loaded", "");
      mv.setAttribute("data-lap-rect", rect(mv));
    });
  }
  scan(); document.addEventListener("DOMContentLoaded", scan); setInterval(scan, 250);
})();</script>"""


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


# --------------------------------------------------------------------------------------------- the demo page


def write_demo(folder: Path, n: int = 97) -> Path:
    """A checkered unit hemisphere on a square base, as a depth grid seen from z = 3 -> ``mesh.glb``
    (`lapmodel.io.mesh.write_glb`), ``model-viewer.min.js`` (the vendored copy) and ``index.html``."""
    from lapdata.core import atomic
    from lapmodel.io import mesh as M

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.meshgrid(np.linspace(1.3, -1.3, n), np.linspace(-1.3, 1.3, n), indexing="ij")  # y up, +z to the viewer
    z = np.sqrt(np.clip(1 - x**2 - y**2, 0, 1))
    check = (np.floor(x * 3) + np.floor(y * 3)) % 2
    tex = np.stack([0.25 + 0.7 * check, 0.35 + 0.3 * (x + 1.3) / 2.6, 0.95 - 0.7 * check], -1)
    M.write_glb(folder / "mesh.glb", M.grid_mesh(3.0 - z, np.stack([x, y, z], -1), texture=tex))
    atomic.copy_file(ASSETS / "model-viewer.min.js", folder / "model-viewer.min.js")
    page = """<!doctype html><html><head><meta charset="utf-8"><title>model-viewer demo (lapmodel.io.mesh GLB)</title>
<script type="module" src="model-viewer.min.js"></script>
<style>body{font-family:sans-serif;margin:1em}model-viewer{width:640px;height:480px;background:#e8e8e8}</style>
</head><body><h1>A hemisphere from a depth grid</h1>
<model-viewer src="mesh.glb" alt="textured hemisphere" camera-controls auto-rotate
  rotation-per-second="3deg" camera-orbit="-25deg 65deg auto" interaction-prompt="none">
  <div slot="progress-bar"></div></model-viewer>
</body></html>
"""
    return atomic.write_text(folder / "index.html", page)


# --------------------------------------------------------------------------------------------- serving, browsing


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".glb": "model/gltf-binary",
                      ".js": "text/javascript", ".mjs": "text/javascript"}

    def do_GET(self):  # HTML pages get the probe before </body>; everything else as http.server serves it
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.html"
        if path.suffix.lower() not in (".html", ".htm") or not path.is_file():
            return super().do_GET()
        text = path.read_text(errors="replace")
        cut = text.lower().rfind("</body>")
        body = (text[:cut] + PROBE + text[cut:] if cut >= 0 else text + PROBE).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


class _Viewers(html.parser.HTMLParser):
    """The attributes of every <model-viewer> element of a DOM dump."""

    def __init__(self):
        super().__init__()
        self.found: list[dict[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "model-viewer":
            self.found.append(dict(attrs))


def _reap_orphans(deadline_s: float = 10.0) -> None:
    """Wait for the browser's orphaned helpers (they are ours as child subreaper), so their CPU time is counted."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.05)
        except ChildProcessError:
            return


def check(html_path: Path, screenshot: Path, root: Path | None = None, browser: str | None = None,
          budget_ms: int = 15000, size: tuple[int, int] = (1280, 2000), timeout_s: float = 300.0,
          reap: bool = False) -> dict:
    """Serve ``root`` (default: the page's folder), open the page in headless Chromium -> results dict.

    ``reap``: afterwards wait for orphaned browser helpers (only when this process is their child subreaper, as
    `main` makes it; else their CPU time is not counted in ``cpu_s``)."""
    html_path, root = html_path.resolve(), (root or html_path.parent).resolve()
    browser = browser or find_browser()
    if browser is None:
        raise SystemExit("chromium not installed: apt-get install chromium")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{html_path.relative_to(root).as_posix()}"
    screenshot = screenshot.resolve()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="lap-chromium-") as profile:
            cmd = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                   f"--virtual-time-budget={budget_ms}", f"--screenshot={screenshot}", "--dump-dom", url]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            if reap:
                _reap_orphans()
    finally:
        server.shutdown()
        server.server_close()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    parser = _Viewers()
    parser.feed(proc.stdout)
    shot = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64) if screenshot.is_file() else None
    meshes = []
    for a in parser.found:
        x, y, w, h = (int(v) for v in (a.get("data-lap-rect") or "0,0,0,0").split(","))
        inside = shot is not None and w > 0 and h > 0 and x >= 0 and y + h <= shot.shape[0] and x + w <= shot.shape[1]
        meshes.append({"src": a.get("src"), "loaded": "data-lap-loaded" in a, "visible": "data-lap-visible" in a,
                       "error": a.get("data-lap-error"), "rect": [x, y, w, h],
                       "pixel_std": round(float(shot[y : y + h, x : x + w].std()), 2) if inside else None})
    return {"page": str(html_path), "url": url, "browser": browser, "flags": FLAGS, "returncode": proc.returncode,
            "meshes": meshes, "screenshot": str(screenshot) if shot is not None else None,
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
            "stderr_tail": proc.stderr[-3000:]}


def failures(res: dict, min_std: float = 1.0) -> list[str]:
    """Why the check failed: a browser error, no screenshot, a mesh that did not load or a flat viewer."""
    out = [] if res["returncode"] == 0 else [f"the browser exited with status {res['returncode']}"]
    out += [] if res["screenshot"] else ["no screenshot was written"]
    for i, m in enumerate(res["meshes"]):
        if not m["loaded"]:
            hint = " (a path above the served folder? see --root)" if ".." in str(m["src"]) else ""
            out.append(f"mesh {i} ({m['src']}) did not load" + (f": {m['error']}" if m["error"] else "") + hint)
        elif m["pixel_std"] is not None and m["pixel_std"] < min_std:
            out.append(f"mesh {i} ({m['src']}): its viewer is one flat colour in the screenshot (std {m['pixel_std']})")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", nargs="?", type=Path, default=REPO / "runs" / "quickstart" / "report" / "index.html")
    ap.add_argument("--demo", type=Path, help="write the hemisphere demo page into this folder and check it")
    ap.add_argument("--root", type=Path, help="folder to serve (default: the page's folder)")
    ap.add_argument("--screenshot", type=Path, help="default: browser-check.png beside the page")
    ap.add_argument("--browser", help=f"browser binary (default: the first of {', '.join(BROWSERS)} on PATH)")
    ap.add_argument("--budget-ms", type=int, default=15000, help="--virtual-time-budget of the page")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    page = write_demo(args.demo) if args.demo else args.html
    if not page.is_file():
        print(f"error: {page} does not exist (run the quickstart first, or use --demo DIR)", file=sys.stderr)
        return 2
    if sys.platform.startswith("linux"):  # the browser's helper processes become ours when orphaned: count their CPU
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    res = check(page, args.screenshot or page.with_name("browser-check.png"), args.root, args.browser, args.budget_ms,
                reap=sys.platform.startswith("linux"))
    bad = failures(res)
    n_loaded = sum(m["loaded"] for m in res["meshes"])
    n_visible = sum(m["visible"] for m in res["meshes"])
    stds = " ".join("-" if m["pixel_std"] is None else f"{m['pixel_std']:.1f}" for m in res["meshes"]) or "-"
    rows = [("page", "meshes found", "loaded", "visible", "viewer std", "screenshot", "CPU s", "wall s"),
            (str(page), str(len(res["meshes"])), str(n_loaded), str(n_visible), stds, str(res["screenshot"]),
             f"{res['cpu_s']:.1f}", f"{res['wall_s']:.1f}")]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    if args.json:
        args.json.write_text(json.dumps({**res, "failures": bad}, indent=1))
    if not res["meshes"]:
        print(f"note: {page} has no <model-viewer> element", file=sys.stderr)
    for b in bad:
        print(f"FAIL: {b}", file=sys.stderr)
    if bad and res["returncode"] != 0:
        print(res["stderr_tail"], file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
