"""The report step of a recipe: ONE self-contained folder ``OUT/report/`` a person can zip and open elsewhere.

    index.html             metrics (n, std, ratio to the flat baseline, the papers' reference numbers), 3D meshes,
                           reconstructions, training curves and pictures, data, steps, config, commit and versions
    model-viewer.min.js    the vendored <model-viewer> (copied by lapmodel.viz.report: the 3D views work offline)
    pictures/              copies of every picture the page shows (one depth colour map: lapdata.core.pictures)
    meshes/NAME.glb        one per reconstructed mesh (the page's 3D views), meshes/NAME/ its OBJ + MTL + PNG, PLY
    run/                   the resolved training config of each train step (YAML) and the resolved recipe

Every link is relative and inside the folder (`lapmodel.viz.report.write_report` refuses any other).
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from lapdata.core import pictures
from lapdata.core.errors import LapError
from lapmodel.recipes.recipe import PipelineConfig, StepConfig, pipeline_train_config
from lapmodel.recipes.steps import StepContext, load_identity_sets, out_of, read_marker, step_output
from lapmodel.training.curriculum import stage_dir
from lapmodel.viz.curves import curves_png, log_panels, read_jsonl
from lapmodel.viz.report import Mesh3D, ReportFolder, Section, write_report

# SIDE (x1e-2) and MAD (degrees) on the BFM synthetic faces of Unsup3D (CVPR 2020, Table 2; LAP, CVPR 2021)
PAPER_BFM = (("flat (constant depth)", 2.723, 43.34), ("Unsup3D", 0.793, 16.51), ("LAP", 0.721, 15.53))
METRICS = (("side", "SIDE x1e-2"), ("mad", "MAD (deg)"), ("ssim", "SSIM"), ("depth_corr", "depth corr"),
           ("id_cos", "ID cosine"))
MANAGED = ("pictures", "meshes", "run")  # the report's own subfolders, rebuilt on every run


def run_report(step: StepConfig, ctx: StepContext) -> dict:
    """args: out (default OUT/report), title. Gathers the run's pictures, meshes and numbers into index.html."""
    out = out_of(step, ctx, "report")
    path = build_report(ctx.cfg, ctx.out, out, title=step.args.get("title"))
    return {"report": str(path)}


def build_report(cfg: PipelineConfig, run_out: Path, out: Path, title: str | None = None) -> Path:
    """Copy the run's metrics, meshes, pictures, curves, data sheets, configs into ``out`` and write index.html."""
    out.mkdir(parents=True, exist_ok=True)
    for sub in MANAGED:
        shutil.rmtree(out / sub, ignore_errors=True)
    folder = ReportFolder(out)
    ctx = StepContext(cfg, run_out)
    markers = {s.name: read_marker(run_out, s.name) for s in cfg.steps}
    steps = {k: [s for s in cfg.steps if s.kind == k] for k in {s.kind for s in cfg.steps}}
    sections: list[Section] = []
    later: list[Section] = []
    for s in steps.get("evaluate", []):  # the numbers first, then the 3D views, then the pictures
        tables, pics = metrics_sections(s, step_output(s, ctx), folder)
        sections += tables
        later += pics
    for s in steps.get("reconstruct", []):
        sections += reconstruction_sections(s, step_output(s, ctx), folder, len(steps["reconstruct"]) > 1)
    sections += later
    sections += training_sections(cfg, folder)
    sections += data_sections(cfg, ctx, markers, folder)
    sections.append(run_section(cfg, run_out, markers, folder))
    folder.text("", "README.txt", "Open index.html through a local web server (browsers refuse the 3D viewer's "
                "module script on file:// pages):\n\n    python3 -m http.server 8000   # in this folder\n\nthen "
                "http://localhost:8000/ . Everything the page shows is in this folder.\n")
    return write_report(out, title or f"LAP toolkit: {cfg.name}", sections,
                        meta=f"run folder {run_out.resolve()} - generated {time.strftime('%Y-%m-%d %H:%M:%S')}")


# --------------------------------------------------------------------------------------------- metrics


def _cell(st: Mapping[str, Any] | None) -> str:
    if not st or not st.get("n"):
        return "-"
    return f"{st['mean']:.3f} ± {st['std']:.3f}"


def metrics_sections(step: StepConfig, d: Path, folder: ReportFolder) -> tuple[list[Section], list[Section]]:
    """This run's metrics (mean ± std over n views; model / flat) against the papers' BFM reference numbers, and
    the evaluation's pictures (set-size curve, examples): ([tables], [pictures])."""
    ej = d / "eval.json"
    if not ej.exists():
        return [], []
    doc = json.loads(ej.read_text())
    kp = keypoint_sections(step, d, doc.get("keypoints"), folder)
    if not doc.get("rows"):
        return kp
    rows = doc.get("rows", {})
    shown = [(k, lab) for k, lab in METRICS if any((r.get(k) or {}).get("n") for r in rows.values())]
    table = []
    for name, summ in rows.items():
        row: dict[str, Any] = {"method": name}
        row.update({lab: _cell(summ.get(k)) for k, lab in shown})
        row["n (views)"] = max((summ.get(k) or {}).get("n", 0) for k, _ in shown) if shown else 0
        table.append(row)
    ratio: dict[str, str] = {}  # model / flat, "-" where flat is 0 (a flat ground truth)
    model, flat = rows.get("model", {}), rows.get("flat", {})
    for k in ("side", "mad"):
        m, f = (model.get(k) or {}), (flat.get(k) or {})
        if m.get("n") and f.get("n"):
            ratio[k] = f"{m['mean'] / f['mean']:.3f}" if f["mean"] else "-"
    if ratio:
        table.append({"method": "ratio model / flat", **{lab: ratio[k] for k, lab in shown if k in ratio}})
    paper = [{"method": f"{n} (paper, BFM)", "SIDE x1e-2": f"{s:.3f}", "MAD (deg)": f"{a:.2f}",
              "SIDE / flat": f"{s / PAPER_BFM[0][1]:.3f}", "MAD / flat": f"{a / PAPER_BFM[0][2]:.3f}"}
             for n, s, a in PAPER_BFM]
    if ratio:
        paper.append({"method": "this run: model (its own test set)", "SIDE x1e-2": _cell(model.get("side")),
                      "MAD (deg)": _cell(model.get("mad")), "SIDE / flat": ratio.get("side", "-"),
                      "MAD / flat": ratio.get("mad", "-")})
    c = doc.get("counts", {})
    text = (f"Evaluation '{step.name}': {c.get('identities', '?')} held-out identities, {c.get('views', '?')} views "
            f"({c.get('views_with_gt', '?')} with ground-truth depth). SIDE (x1e-2) and MAD (degrees) on the ground-"
            "truth depth (Unsup3D protocol), SSIM of the re-render on the face; mean ± std over the n views. 'flat' "
            "is a constant depth at the median of the ground truth, 'gt' the ground truth itself (sanity: 0). The "
            "papers' numbers are on the BFM synthetic faces of Unsup3D; ours are on a different test set (this "
            "run's held-out identities, at its image size), so compare the ratios to flat, not the values.")
    imgs = [(folder.add(d / png, "pictures", f"{step.name}-{png}"), f"{step.name}: {cap}")
            for png, cap in (("set_size.png", "quality against the set size N (mean ± std; paper Fig. 7a)"),
                             ("examples.png", "input | re-render | normals and depth (in the input's view) of "
                              "prediction and ground truth on the evaluated pixels"))
            if (d / png).exists()]
    notes = [("notes of the evaluation", "\n".join(doc["notes"]))] if doc.get("notes") else []
    sp = doc.get("canon_spread") or {}
    if sp:
        text += (f" Canonical depth spread (std over relief, near 0 = one map for everyone): across identities "
                 f"{sp.get('identities', float('nan')):.4f}, across views {sp.get('views', float('nan')):.4f}.")
    return [Section(f"Metrics: {step.name}", text,
                    tables=[("this run", table), ("reference: the papers on BFM synthetic faces", paper)],
                    blocks=notes)] + kp[0], ([Section(f"Evaluation pictures: {step.name}", "", imgs)] if imgs else []) + kp[1]


# the papers' Table 3 (3DFAW, 66 keypoints; DepthNet's summed depth correlation, 66 = ground truth)
PAPER_3DFAW = (("ground truth", 66.0), ("Unsup3D", 54.64), ("LAP", 57.92))


def keypoint_sections(step: StepConfig, d: Path, kp: Mapping[str, Any] | None, folder: ReportFolder
                      ) -> tuple[list[Section], list[Section]]:
    """The real-photo protocol (``lapmodel.evaluation.photos``): model against the prior and the keypoints' mean
    template, DepthNet's score on Table 3's scale, the canonical-depth spread, the set-size curve and examples."""
    if not kp:
        return [], []
    table = []
    for name, r in [*kp["rows"].items(), *((f"set of {n}", v) for n, v in kp.get("set_size", {}).items())]:
        k = r["kp_corr"]
        table.append({"method": name.replace("_", " "), "kp depth corr (mean)": f"{k['mean']:.3f}",
                      "median": f"{k['median']:.3f}", "photos": k["n"],
                      "DepthNet score (x66/K)": f"{r['depthnet']['table3_scale']:.2f}"})
    paper = [{"method": f"{n} (paper, 3DFAW)", "DepthNet score (66 keypoints)": f"{v:.2f}"} for n, v in PAPER_3DFAW]
    sp, c = kp["canon_spread"], kp["counts"]
    text = (f"Real photos with 3D keypoints ({kp['source']}, {kp['keypoints_per_photo']} per photo): "
            f"{c['scored']} of {c['photos']} photos of {c['identities']} identities scored. Per photo, the Pearson "
            "correlation between the model's depth in the photo's view at the keypoints and their depth (the photo "
            "cropped exactly as reconstruct crops it); DepthNet's score sums, over the keypoints, the correlation "
            "across photos (Unsup3D's / LAP's Table 3 protocol, shown scaled to 66 keypoints). 'prior' is the "
            "untrained model, 'mean template' the keypoints' own average face, not posed: a model below it has not "
            f"learned face shape. Canonical depth spread: across photos {sp['photos']:.4f}, across identities "
            f"{sp['identities']:.4f} (near 0 = one map for everyone).")
    imgs = [(folder.add(d / "keypoints_examples.png", "pictures", f"{step.name}-keypoints_examples.png"),
             f"{step.name}: photo with its keypoints coloured by depth | the model's view depth | canonical depth "
             "| normals (r = the photo's keypoint depth correlation)")] if (d / "keypoints_examples.png").exists() else []
    return ([Section(f"Real photos: {step.name}", text, tables=[("this run", table), ("reference: Table 3", paper)])],
            [Section(f"Real-photo pictures: {step.name}", "", imgs)] if imgs else [])


# --------------------------------------------------------------------------------------------- reconstructions


def _mesh_name(rel: Path) -> tuple[str, str, int]:
    """reconstruct folder layout -> (name, caption, sort key): set/ID/set, set/ID/ID_i, single/ID/ID_0."""
    sub, ident, view = rel.parts[0], rel.parts[1], rel.parts[2]
    if view == "set":
        return f"{ident}-set", f"{ident}: the identity from the whole set", 0
    i = view.rsplit("_", 1)[-1]
    if sub == "single":
        return f"{view}-alone", f"{ident}: photo {i} alone", 2
    return f"{view}-in-set", f"{ident}: photo {i} with the set", 1


def reconstruction_sections(step: StepConfig, d: Path, folder: ReportFolder, prefix: bool) -> list[Section]:
    """3D views of every mesh of a reconstruct step, then its pictures (comparison, summaries, turntables)."""
    meshes = []
    for glb in sorted(d.glob("*/*/*/mesh.glb")):
        name, cap, key = _mesh_name(glb.parent.relative_to(d))
        name = f"{step.name}-{name}" if prefix else name
        dst = folder.add(glb, "meshes", f"{name}.glb")
        extra = [(folder.add(glb.with_name(f), f"meshes/{dst.stem}", f), f.split(".")[-1].upper())
                 for f in ("mesh.obj", "mesh.ply") if glb.with_name(f).exists()]
        for f in ("mesh.mtl", "mesh_texture.png"):  # what the OBJ refers to, by these names
            if glb.with_name(f).exists():
                folder.add(glb.with_name(f), f"meshes/{dst.stem}", f)
        meshes.append((cap.split(":")[0], key, Mesh3D(dst, cap, [(dst, "GLB")] + extra)))
    meshes.sort(key=lambda m: (m[0], m[1], m[2].caption))
    out = []
    if meshes:
        out.append(Section(f"3D meshes: {step.name}", "Every reconstructed mesh: the canonical depth as a grid mesh "
                           "textured with the canonical albedo. Drag to turn, scroll to zoom. The viewer "
                           "(model-viewer.min.js) is in this folder; open the page through a local server (README.txt)."
                           , meshes=[m for *_, m in meshes]))
    bar = folder.path("pictures", "depth-colour-bar.png")
    pictures.save_png(bar, pictures.depth_colorbar())
    imgs = [(bar, f"depth colours of every picture ({pictures.DEPTH_CMAP}): near = bright, far = dark; grey = no "
             "surface. Each picture spans its own 1st..99th percentile of depth.")]
    if (d / "compare.png").exists():
        imgs.append((folder.add(d / "compare.png", "pictures", f"{step.name}-compare.png"),
                     "per identity: inputs, re-render from the whole set and from each photo alone, view depth "
                     "(set / single / ground truth), canonical normals (set / single)"))
    for sub, what in (("set", "from the set"), ("single", "from one photo")):
        for summ in sorted((d / sub).glob("*/summary.png")):
            imgs.append((folder.add(summ, "pictures", f"{step.name}-{sub}-{summ.parent.name}-summary.png"),
                         f"{what}: {summ.parent.name} (input | recon | albedo | depth | normals | shading)"))
    for g in sorted(d.glob("*/*/*/turntable.gif")):
        name, cap, _ = _mesh_name(g.parent.relative_to(d))
        imgs.append((folder.add(g, "pictures", f"{step.name}-{name}-turntable.gif"),
                     f"turntable of {cap} (textured | shape)"))
    out.append(Section(f"Reconstructions: {step.name}", "Held-out identities reconstructed by the final model.", imgs))
    return out


# --------------------------------------------------------------------------------------------- training, data


def _train_dirs(cfg: PipelineConfig, s: StepConfig) -> list[tuple[str, Path]]:
    tc = pipeline_train_config(cfg, s.args.get("set"))
    st = s.args.get("stage")
    if st:
        return [(f"{st}/{p.name}", stage_dir(tc.out, st) / p.name) for p in getattr(tc.stages, st).phases]
    return [(s.name, Path(tc.out))]


def training_sections(cfg: PipelineConfig, folder: ReportFolder) -> list[Section]:
    """Loss curves of every stage and phase on one step axis, and each phase's last training picture grid."""
    logs: dict[str, list] = {}
    pics = []
    for s in cfg.steps:
        if s.kind != "train":
            continue
        for name, d in _train_dirs(cfg, s):
            rows = read_jsonl(d / "log.jsonl")
            if rows:
                logs[name] = rows
            grids = sorted((d / "pictures").glob("step-*.png"))
            if grids:
                pics.append((folder.add(grids[-1], "pictures", f"train-{name.replace('/', '-')}.png"),
                             f"{name}: training pictures at the last step ({grids[-1].stem})"))
    if not logs and not pics:
        return []
    keys = ["loss"] + sorted({k for rows in logs.values() for r in rows for k in r
                              if k.endswith("l1") and isinstance(r.get(k), (int, float))})
    panels, marks = log_panels(logs, keys[:4])
    curve = curves_png(folder.path("pictures", "loss-curves.png"), panels, marks=marks,
                       xlabel="step (all stages and phases)")
    imgs = [(curve, "loss per logged step; each stage and curriculum phase continues the step axis (dotted: "
             "where a phase starts)")] if curve else []
    return [Section("Training", "Loss curves of every stage and curriculum phase (from each phase's log.jsonl) and "
                    "each phase's picture grid at its last step (input, reconstructions, canonical albedo / depth / "
                    "normals, turntable).", imgs + pics)]


def data_sections(cfg: PipelineConfig, ctx: StepContext, markers: dict, folder: ReportFolder) -> list[Section]:
    out = []
    for s in cfg.steps:
        if markers.get(s.name, {}).get("status") != "done":
            continue
        if s.kind in ("build-synthetic", "ingest"):
            d = step_output(s, ctx)
            if (d / "contact_sheet.png").exists():
                p = folder.add(d / "contact_sheet.png", "pictures", f"data-{s.name}.png")
                cap = f"contact sheet of {s.name}: identities (rows) across their views, with their depth"
            else:
                try:
                    sets = load_identity_sets(str(d), 6, 6, 64)
                except LapError:
                    continue
                grid = pictures.image_grid([[im.numpy() for im in imgs] for _, imgs, _ in sets],
                                           row_labels=[i for i, _, _ in sets])
                p = pictures.save_png(folder.path("pictures", f"data-{s.name}.png"), grid)
                cap = f"contact sheet of {s.name}: the first identities (rows) and their views"
            out.append(Section(f"Data: {s.name}", f"First identities of {d.name} (one row per identity).", [(p, cap)]))
        elif s.kind == "parse-masks":
            d = Path(s.args["dataset"])
            imgs = [(folder.add(d / f, "pictures", f"{s.name}-{f}"), cap) for f, cap in
                    (("parse_contact_sheet.png", "photo | labels on photo | labels | M_re (RCL mask)"),
                     ("parse_face_fraction.png", "face fraction of the views and the hard-sample threshold"))
                    if (d / f).exists()]
            if imgs:
                out.append(Section(f"Masks: {s.name}", f"Face-parsing label maps of {d.name}.", imgs))
    return out


# --------------------------------------------------------------------------------------------- the run


def git_commit() -> str:
    """``git rev-parse HEAD`` of the repository this package runs from (+ a note on uncommitted changes), else
    "unknown" (an installed package, no git)."""
    pkg = Path(__file__).resolve().parents[1]
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=pkg, capture_output=True, text=True,
                             timeout=20)
        if top.returncode or (Path(top.stdout.strip()) / "lapmodel").resolve() != pkg:
            return "unknown"
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=pkg, capture_output=True, text=True, timeout=20)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=pkg,
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = head.stdout.strip() if head.returncode == 0 else ""
    return (sha + (" (with uncommitted changes)" if dirty.stdout.strip() else "")) if sha else "unknown"


def versions() -> dict[str, str]:
    """Python, the toolkit and the libraries that shape the numbers and pictures."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("lap-toolkit", "torch", "numpy", "pillow", "matplotlib", "trimesh", "webdataset"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def run_section(cfg: PipelineConfig, run_out: Path, markers: dict, folder: ReportFolder) -> Section:
    """Steps (status, seconds), git commit, versions, and the resolved configs as YAML (copied into run/)."""
    import yaml

    from lapdata.core.config import to_dict

    steps = [{"step": s.name, "kind": s.kind,
              "status": markers.get(s.name, {}).get("status", "this page" if s.kind == "report" else "not run"),
              "seconds": markers.get(s.name, {}).get("seconds", "")} for s in cfg.steps]
    produced = [{"what": "git commit", "value": git_commit()}] + [{"what": k, "value": v} for k, v in versions().items()]
    links, blocks = [], []
    for s in cfg.steps:
        if s.kind != "train":
            continue
        found = [d / "config.yaml" for _, d in _train_dirs(cfg, s) if (d / "config.yaml").exists()]
        text = found[-1].read_text() if found else yaml.safe_dump(to_dict(pipeline_train_config(cfg, s.args.get("set"))),
                                                                  sort_keys=False)
        p = folder.text("run", f"config-{s.name}.yaml", text)
        links.append((p, f"training config of {s.name} (YAML)"))
        blocks.append((f"training config of {s.name} ({'as trained' if found else 'from the recipe'})", text))
    if (run_out / "pipeline.json").exists():
        p = folder.add(run_out / "pipeline.json", "run", "pipeline.json")
        links.append((p, "the resolved recipe (JSON)"))
    return Section("Run", f"Pipeline {cfg.name}: {cfg.description}",
                   tables=[("steps", steps), ("produced by", produced)], links=links, blocks=blocks)
