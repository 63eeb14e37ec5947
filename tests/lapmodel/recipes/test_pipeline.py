"""`lapmodel run`: pipeline YAML loading (variables, errors), step markers / --from / --force, the report, every
ablation config builds and trains a step, and the quickstart runs end to end (slow, still in CI)."""

from __future__ import annotations

import glob
import html.parser
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lapdata.core.errors import LapError
from lapmodel.recipes.recipe import load_pipeline, pipeline_train_config
from lapmodel.recipes.runner import run_pipeline
from lapmodel.viz.report import Mesh3D, ReportFolder, Section, write_report
from tests.builders import REPO, write_tiny_shards


PIPELINES = REPO / "pipelines"


def _write(p: Path, doc: dict) -> Path:
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


# --------------------------------------------------------------------------------------------- loading


def test_variables_environment_and_errors(tmp_path):
    p = _write(tmp_path / "p.yaml", {"name": "t", "out": "${ROOT}/run", "vars": {"N": 3},
                                     "steps": [{"name": "r", "kind": "report", "args": {"title": "${N}", "x": "${N}"}}]})
    with pytest.raises(LapError, match=r"ROOT not set"):
        load_pipeline(p, environ={})
    cfg = load_pipeline(p, environ={"ROOT": "/r", "N": "7"})
    assert cfg.out == "/r/run" and cfg.steps[0].args["x"] == 7  # the environment wins, YAML-typed
    assert load_pipeline(p, out=tmp_path / "o", environ={}).out == str(tmp_path / "o")
    bad = _write(tmp_path / "b.yaml", {"steps": [{"name": "a", "kind": "report"}, {"name": "a", "kind": "report"}]})
    with pytest.raises(LapError, match="unique"):
        load_pipeline(bad, environ={})
    bad2 = _write(tmp_path / "c.yaml", {"steps": [{"name": "a", "kind": "download"}]})
    with pytest.raises(LapError, match="download"):
        load_pipeline(bad2, environ={})
    bad3 = _write(tmp_path / "d.yaml", {"stepz": []})
    with pytest.raises(LapError, match="stepz"):
        load_pipeline(bad3, environ={})


def test_paper_pipeline_names_unset_variables():
    with pytest.raises(LapError, match="CELEBA_DIR"):
        load_pipeline(PIPELINES / "paper.yaml", environ={})
    env = {"CELEBA_DIR": "/c", "CASIA_DIR": "/k", "ICT_FACEKIT": "/i", "VGG16": "/v.pth", "BISENET": "/b.pth"}
    cfg = load_pipeline(PIPELINES / "paper.yaml", environ=env)
    tc = pipeline_train_config(cfg)
    assert tc.model.kind == "lap" and tc.model.image_size == 128 and tc.data.max_set == 6
    assert [p.epochs for p in tc.stages.aggregate.phases] == [50, 50]
    assert tc.stages.personalize.phases[0].epochs == 100 and tc.stages.finetune.phases[0].epochs == 50
    assert tc.optim.lr == 1e-4 and tc.vgg_weights == "/v.pth"
    assert [s.kind for s in cfg.steps][:3] == ["build-synthetic", "ingest", "ingest"]


# --------------------------------------------------------------------------------------------- ablations


TINY = {"model.image_size": 32, "model.nf": 8, "model.nf_encoder": 8, "model.zdim": 16, "model.zdim_conf": 8,
        "model.lap.refine_size": 32, "model.lap.refine_nf": 4, "model.lap.target_size": 32, "vgg_weights": None,
        "device": "cpu", "data.workers": 0}


@pytest.mark.parametrize("path", sorted(glob.glob(str(PIPELINES / "ablation-*.yaml"))), ids=lambda p: Path(p).stem)
def test_ablation_configs_build_and_train_a_step(path, tmp_path):
    from lapmodel.io.data import make_loader, expand_shards
    from lapmodel.models.build import build_model

    shards = write_tiny_shards(tmp_path / "data", identities=2, views=2)
    cfg = load_pipeline(path, environ={"VGG16": "/v.pth"})
    trains = [s for s in cfg.steps if s.kind == "train"]
    assert trains, f"{path} has no train step"
    s = trains[-1]
    tc = pipeline_train_config(cfg, {**(s.args.get("set") or {}), **TINY, "batch": 2,
                                     "data.shards": [str(shards)], "data.max_set": 2})
    stem = Path(path).stem
    expect = {"ablation-no-rcl": ("rcl", False), "ablation-average-aggregation": ("adaptive", False),
              "ablation-no-filtered-connection": ("filtered_connection", "none"),
              "ablation-vector-injection": ("injection", "vector")}
    if stem in expect:
        k, v = expect[stem]
        assert getattr(tc.model.lap, k) == v
    if stem == "ablation-unsup3d-re":
        own = pipeline_train_config(cfg, s.args.get("set") or {})  # the recipe itself, without the test's overrides
        assert tc.model.kind == "unsup3d" and own.data.min_set == own.data.max_set == 1, own.data
    if stem == "ablation-no-curriculum":
        assert len(pipeline_train_config(cfg).stages.aggregate.phases) == 1
    model = build_model(tc)
    if tc.model.kind == "lap":
        model.set_stage(s.args["stage"])
    params = model.trainable_parameters()
    opt = torch.optim.Adam(params, lr=1e-4)
    batch = next(make_loader(expand_shards(tc.data.shards), tc.data, 32, 2))
    before = [p.detach().clone() for p in params]
    loss, _ = model.loss(model(batch), batch)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, params))


# --------------------------------------------------------------------------------------------- report


class _Links(html.parser.HTMLParser):
    """Every href / src of a page, and the src of each <model-viewer> and <script>."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.viewers: list[str] = []
        self.scripts: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("href", "src") and v]
        if tag == "model-viewer":
            self.viewers.append(a.get("src"))
        if tag == "script":
            self.scripts.append(a)


def assert_self_contained(report: Path) -> _Links:
    """The report folder links nothing outside itself: every href/src is relative, inside, and exists; the 3D
    views have the model-viewer script and one GLB each."""
    page = (report / "index.html").read_text()
    p = _Links()
    p.feed(page)
    assert p.links, "no links at all"
    for link in p.links:
        if link.startswith("#"):
            continue
        assert "://" not in link and not link.startswith(("/", "..", "data:", "file:")), link
        target = (report / link).resolve()
        assert report.resolve() in target.parents and target.is_file(), link
    if p.viewers:
        assert {"type": "module", "src": "model-viewer.min.js"} in p.scripts
        assert (report / "model-viewer.min.js").stat().st_size > 1_000_000
        for v in p.viewers:
            assert v.startswith("meshes/") and v.endswith(".glb") and (report / v).is_file(), v
        assert len(set(p.viewers)) == len(p.viewers)
    return p


def test_report_folder_is_self_contained(tmp_path):
    from lapdata.core.pictures import depth_colors, image_grid, normal_colors, save_png
    from lapmodel.io import mesh as M
    from lapmodel.recipes.report import git_commit, versions

    run = tmp_path / "run"
    grid = image_grid([[torch.rand(3, 16, 16).numpy(), None], [depth_colors(torch.rand(16, 16).numpy()),
                                                            normal_colors(torch.randn(16, 16, 3).numpy())]],
                      row_labels=["a", "b"], col_labels=["x", "y"])
    pic = save_png(run / "pics" / "g.png", grid)
    y, x = np.meshgrid(np.linspace(1, -1, 9), np.linspace(-1, 1, 9), indexing="ij")
    glb = M.write_glb(run / "m.glb", M.grid_mesh(np.ones((9, 9)), np.stack([x, y, 0 * x], -1),
                                                 texture=np.full((9, 9, 3), 0.5)))
    out = tmp_path / "report"
    folder = ReportFolder(out)
    copied = folder.add(pic, "pictures")
    assert copied == out / "pictures" / "g.png" and folder.add(pic, "pictures") == out / "pictures" / "g-2.png"
    m = folder.add(glb, "meshes", "face one.glb")
    assert m.name == "face_one.glb"
    with pytest.raises(ValueError, match="outside the report folder"):
        write_report(out, "t", [Section("S", images=[(pic, "cap")])])
    page = write_report(out, "t<1>", [Section("S", "text", [(copied, "cap")], tables=[("cap", [{"a": 1.23456}])],
                                              meshes=[Mesh3D(m, "a face", [(m, "GLB")])], blocks=[("cfg", "a: 1")])])
    text = page.read_text()
    assert "t&lt;1&gt;" in text and "1.235" in text and "<pre>a: 1</pre>" in text
    links = assert_self_contained(out)
    assert links.viewers == ["meshes/face_one.glb"] and "pictures/g.png" in links.links
    assert "camera-controls" in text
    assert (out / "model-viewer.LICENSE.txt").is_file()
    sha = git_commit()
    if (REPO / ".git").exists():  # a checkout: the commit this code runs from (HEAD may move meanwhile: any commit)
        import subprocess

        head = sha.split()[0]
        kind = subprocess.run(["git", "cat-file", "-t", head], cwd=REPO, capture_output=True, text=True).stdout
        assert len(head) == 40 and kind.strip() == "commit", sha
    else:  # an installed copy
        assert sha == "unknown"
    v = versions()
    assert set(v) >= {"python", "torch", "numpy", "lap-toolkit"} and v["torch"] == torch.__version__


# --------------------------------------------------------------------------------------------- runner


def _mini_pipeline(tmp_path: Path, shards: Path) -> Path:
    train = {"model": {"kind": "lap", "image_size": 32, "nf": 8, "nf_encoder": 8, "zdim": 16, "zdim_conf": 8,
                       "lap": {"refine_size": 32, "refine_nf": 4, "target_size": 32}},
             "data": {"min_set": 1, "max_set": 2, "workers": 0, "shuffle_buffer": 4, "shuffle_initial": 1},
             "batch": 2, "log_every": 1, "picture_every": 2, "ckpt_every": 100, "device": "cpu", "precision": "fp32",
             "stages": {"aggregate": {"phases": [{"name": "a", "shards": [str(shards)], "steps": 2}]},
                        "personalize": {"phases": [{"name": "b", "shards": [str(shards)], "steps": 1}]}}}
    doc = {"name": "mini", "out": str(tmp_path / "run"), "train": train, "train_set": {"out": "${OUT}/train"},
           "steps": [
               {"name": "stage1", "kind": "train", "args": {"stage": "aggregate"}},
               {"name": "stage2", "kind": "train",
                "args": {"stage": "personalize", "init": "${OUT}/train/aggregate/last.pt"}},
               {"name": "eval", "kind": "evaluate",
                "args": {"checkpoint": "${OUT}/train/personalize/last.pt", "shards": str(shards),
                         "baselines": True, "identity": False, "set_sizes": [1, 2]}},
               {"name": "recon", "kind": "reconstruct",
                "args": {"checkpoint": "${OUT}/train/personalize/last.pt", "shards": str(shards),
                         "identities": 1, "views": 2, "turntable": 2}},
               {"name": "missing", "kind": "ingest", "requires": [str(tmp_path / "nope")],
                "args": {"kind": "folders", "src": str(tmp_path / "nope")}},
               {"name": "report", "kind": "report"},
               {"name": "pack", "kind": "pack",
                "args": {"checkpoint": "${OUT}/train/personalize/last.pt", "evaluations": ["eval"],
                         "data": ["three tiny test identities"], "licence": "test only", "title": "mini model"}}]}
    return _write(tmp_path / "mini.yaml", doc)


@pytest.mark.slow
def test_runner_markers_from_force_and_report(tmp_path):
    shards = write_tiny_shards(tmp_path / "data", identities=3, views=2, depth=True)
    p = _mini_pipeline(tmp_path, shards)
    logs: list[str] = []
    res = run_pipeline(p, progress=False, log=logs.append)
    run = tmp_path / "run"
    assert res["missing"]["status"] == "skipped" and res["report"]["status"] == "done"
    for name in ("stage1", "stage2", "eval", "recon", "report", "pack"):
        assert json.loads((run / "steps" / f"{name}.json").read_text())["status"] == "done"
    # pack: fp16 weights, no optimizer state, loads like any checkpoint; the card quotes the run
    from lapmodel.io.checkpoint import load_checkpoint, load_model

    packed, full = load_checkpoint(run / "pack/default.pt"), load_checkpoint(run / "train/personalize/last.pt")
    assert "optimizer" not in packed and {v.dtype for v in packed["model"].values() if v.is_floating_point()} == \
        {torch.float16}
    assert (run / "pack/default.pt").stat().st_size < 0.6 * (run / "train/personalize/last.pt").stat().st_size
    m = load_model(run / "pack/default.pt")
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v.float(), full["model"][k].float().half().float())
    card = (run / "pack/MODEL_CARD.md").read_text()
    for piece in ("# mini model", "test only", "three tiny test identities", "| stage1 | aggregate | 2 |", "`eval`"):
        assert piece in card, piece
    assert (run / "train/personalize/last.pt").exists()
    html = (run / "report/index.html").read_text()
    for piece in ("pictures/loss-curves.png", "pictures/recon-compare.png", "Metrics", "flat", "ratio model / flat",
                  "git commit", "lap-toolkit", torch.__version__, "run/config-stage2.yaml"):
        assert piece in html, piece
    assert (run / "reconstruct/recon/compare.png").exists()
    glbs = sorted((run / "reconstruct/recon").glob("*/*/*/mesh.glb"))
    assert glbs and list((run / "reconstruct/recon/set").glob("*/*/mesh.obj"))
    links = assert_self_contained(run / "report")
    assert len(links.viewers) == len(glbs)  # a 3D view of every reconstructed mesh
    # a rerun skips every step
    logs.clear()
    run_pipeline(p, progress=False, log=logs.append)
    assert sum("done, skipped" in line for line in logs) == 6
    # --from reruns that step and the later ones (their outputs removed first)
    logs.clear()
    stamp = (run / "steps/stage2.json").stat().st_mtime_ns
    run_pipeline(p, start="recon", progress=False, log=logs.append)
    assert (run / "steps/stage2.json").stat().st_mtime_ns == stamp
    assert any("removing" in line and "reconstruct" in line for line in logs)
    with pytest.raises(LapError, match="no such step"):
        run_pipeline(p, start="nope", progress=False, log=logs.append)


@pytest.mark.slow
def test_quickstart_runs_and_writes_report(tmp_path):
    """The README's main command at its real (toy) scale, as a user runs it with its output in a log file: every
    step done, the report and its pictures exist, and the log is plain lines a person reads (none over 300)."""
    import subprocess
    import sys

    out = tmp_path / "qs"
    log = tmp_path / "quickstart.log"
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "lapmodel", "run", "quickstart", "--out", str(out)],
                              stdout=f, stderr=subprocess.STDOUT, timeout=1500)
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    res = {p.stem: json.loads(p.read_text()) for p in (out / "steps").glob("*.json")}
    assert res and all(d["status"] == "done" for d in res.values()), {k: d["status"] for k, d in res.items()}
    lines = text.splitlines()
    assert "\r" not in text and max(len(ln) for ln in lines) <= 300, max(lines, key=len)[:400]
    assert sum("step " in ln and " loss " in ln for ln in lines) >= 4  # periodic plain progress lines
    assert "pipeline done" in lines[-1]
    assert (out / "pipeline.log").read_text().count("\n") >= 10
    report = out / "report"
    html = (report / "index.html").read_text()
    for piece in ("pictures/loss-curves.png", "pictures/data-synthetic.png", "pictures/masks-synthetic-parse_contact_sheet.png",
                  "pictures/reconstruct-compare.png", "summary.png", "pictures/evaluate-set_size.png",
                  "pictures/evaluate-examples.png", "pictures/depth-colour-bar.png", "Metrics", "ratio model / flat",
                  "2.723", "43.34", "0.793", "16.51", "0.721", "15.53", "different test set", "git commit",
                  "lap-toolkit", "numpy", "run/config-stage3.yaml", "mesh.obj"):
        assert piece in html, piece
    for phase in ("aggregate-synthetic", "aggregate-photos", "personalize-photos", "finetune-photos"):
        assert (report / "pictures" / f"train-{phase}.png").is_file(), phase  # each curriculum phase
    links = assert_self_contained(report)
    glbs = sorted((out / "reconstruct/reconstruct").glob("*/*/*/mesh.glb"))
    assert len(glbs) == 2 * (4 + 1) + 2 and len(links.viewers) == len(glbs)  # 2 sets of 4 + set + 1 alone, each
    assert "image_size: 32" in (report / "run/config-stage1.yaml").read_text()  # the config as trained
    assert (out / "train/finetune/last.pt").exists()
    # the promise of the quickstart: its report shows depth better than a flat plane on held-out identities
    # (measured 2026-12-01: SIDE 0.79x, MAD 0.53x flat; BENCHMARKS.md, quality ladder)
    rows = json.loads((out / "eval/evaluate/eval.json").read_text())["rows"]
    side = rows["model"]["side"]["mean"] / rows["flat"]["side"]["mean"]
    mad = rows["model"]["mad"]["mean"] / rows["flat"]["mad"]["mean"]
    assert side < 1.0 and mad < 0.85, (side, mad)
