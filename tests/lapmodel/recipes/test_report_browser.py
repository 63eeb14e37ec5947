"""benchmarks/report_browser.py in headless Chromium: the demo GLB loads and shows; a missing GLB fails the check; the
3D views of a page written by lapmodel.viz.report load and show."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tests.builders import REPO

SCRIPT = REPO / "benchmarks" / "report_browser.py"
BROWSER = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BROWSER is None, reason="chromium not installed: apt-get install chromium"),
]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=400, cwd=REPO)


def test_demo_mesh_loads_and_shows(tmp_path):
    demo = tmp_path / "demo"
    proc = _run("--demo", str(demo), "--json", str(tmp_path / "res.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["failures"] == [] and len(res["meshes"]) == 1
    mesh = res["meshes"][0]
    assert mesh["src"] == "mesh.glb" and mesh["loaded"] and mesh["visible"]  # the probe's flags in the DOM dump
    x, y, w, h = mesh["rect"]
    assert (w, h) == (640, 480)
    shot = np.asarray(Image.open(res["screenshot"]).convert("RGB"), dtype=np.float64)[y : y + h, x : x + w]
    assert shot.std() > 10, "the viewer area is (nearly) uniform: WebGL drew nothing"
    background = np.array([0xE8, 0xE8, 0xE8])  # the demo's model-viewer background
    drawn = np.abs(shot - background).max(-1) > 30  # the mesh's pixels; auto-rotate: any view, edge-on ~8%
    assert 0.02 < drawn.mean() < 0.9, f"{drawn.mean():.0%} of the viewer differs from its background"
    assert (shot[drawn][:, 0] > shot[drawn][:, 2] + 40).mean() > 0.1  # the texture's orange squares
    assert (shot[drawn][:, 2] > shot[drawn][:, 0] + 40).mean() > 0.1  # and its blue ones


def test_missing_mesh_fails(tmp_path):
    page = tmp_path / "index.html"
    shutil.copyfile(REPO / "lapmodel" / "viz" / "assets" / "model-viewer.min.js", tmp_path / "model-viewer.min.js")
    page.write_text('<!doctype html><html><head><script type="module" src="model-viewer.min.js"></script></head>'
                    '<body><model-viewer src="missing.glb"></model-viewer></body></html>')
    proc = _run(str(page), "--budget-ms", "3000", "--json", str(tmp_path / "res.json"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    res = json.loads((tmp_path / "res.json").read_text())
    assert [m["loaded"] for m in res["meshes"]] == [False]
    assert "mesh 0 (missing.glb) did not load" in proc.stderr


def test_report_page_meshes_load_and_show(tmp_path):
    """A page written by lapmodel.viz.report.write_report (the report's own 3D views, model-viewer copied in)."""
    from lapmodel.io import mesh as M
    from lapmodel.viz.report import Mesh3D, ReportFolder, Section, write_report

    report = tmp_path / "report"
    folder = ReportFolder(report)
    meshes = []
    for i in range(3):  # three bumps of different heights
        y, x = np.meshgrid(np.linspace(1.2, -1.2, 41), np.linspace(-1.2, 1.2, 41), indexing="ij")
        z = (0.4 + 0.3 * i) * np.exp(-2 * (x**2 + y**2))
        tex = np.stack([0.3 + 0.6 * (x + 1.2) / 2.4, 0.4 + 0.0 * x, 0.9 - 0.6 * (y + 1.2) / 2.4], -1)
        glb = M.write_glb(folder.path("meshes", f"bump{i}.glb"), M.grid_mesh(3 - z, np.stack([x, y, z], -1),
                                                                             texture=tex))
        meshes.append(Mesh3D(glb, f"bump {i}", [(glb, "GLB")]))
    write_report(report, "report page", [Section("3D", "meshes", meshes=meshes)])
    # a longer virtual-time budget than the demo's: three viewers share one software-rendered WebGL context (with the
    # default 15 s this test failed once on a loaded 2-core machine, not reproduced since)
    proc = _run(str(report / "index.html"), "--budget-ms", "30000", "--json", str(tmp_path / "res.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((tmp_path / "res.json").read_text())
    assert [m["src"] for m in res["meshes"]] == [f"meshes/bump{i}.glb" for i in range(3)]
    assert all(m["loaded"] and m["visible"] for m in res["meshes"]), res["meshes"]
    assert all(m["pixel_std"] is not None and m["pixel_std"] > 5 for m in res["meshes"]), res["meshes"]
