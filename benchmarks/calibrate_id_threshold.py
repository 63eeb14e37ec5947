"""Calibrate the dlib identity threshold so it accepts/rejects like ArcFace cosine 0.6 (docs/id-threshold.md).

Procedure (reproduces the numbers in docs/id-threshold.md):
 1. celebrity-sets (ArcFace-aligned 112 crops, 12 identities, noisy labels): take up to --per-identity photos per
    identity (evenly spaced in sorted file order), crop with crop_prealigned(rule arcface112, size 128), embed.
 2. Clean the labels (they contain other people): a photo is "clean" when its cosine to its own identity's robust
    centre is >= --clean (dlib) AND its own centre is the nearest of the 12 centres.
 3. Impostor pairs = all pairs of clean photos with different labels; genuine pairs = same label.
    The threshold at a false-accept rate F is the (1 - F) quantile of impostor cosines. Report F = 1e-3, 1e-4,
    1e-5 with the genuine accept rate (TAR) at each, on clean and on raw (uncleaned) labels, and the spread over
    leave-one-identity-out resamples.
 4. Robust-centre filter threshold for ingest: cosine of each clean photo to its own centre (genuine) vs to the
    other 11 centres (impostor); threshold at photo FAR 1e-3.
 5. Second check on wild-photos (detect + align with DlibDetector, largest face): identities.csv pairs and
    master.csv (Yes/No) pairs: accept rates at the chosen thresholds.

  python benchmarks/calibrate_id_threshold.py [--data ../shared/data/faces] [--cache /tmp/calib.npz] [--arcface w600k_r50.onnx]
With --arcface the same procedure runs for an ArcFace model too (then the FAR of ArcFace at 0.6 is measured
directly and the dlib threshold can be matched to it instead of to the target FAR).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lapdata.faces.align import align_face, crop_prealigned, largest_face

from lapdata.faces.detectors import DlibDetector
from lapdata.faces.idfilter import robust_centre

REPO = Path(__file__).resolve().parents[1]


def load_celeb(root: Path, per_identity: int):
    names, files = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        fs = sorted(d.glob("*.jpg"), key=lambda p: (len(p.stem), p.stem))
        if per_identity and len(fs) > per_identity:
            idx = np.linspace(0, len(fs) - 1, per_identity).round().astype(int)
            fs = [fs[i] for i in idx]
        files += fs
        names += [d.name] * len(fs)
    return names, files


def embed_files(embedder, files, rule="arcface112", size=128, batch=64):
    out = []
    for i in range(0, len(files), batch):
        crops = [crop_prealigned(np.asarray(Image.open(f).convert("RGB")), size, rule)[0] for f in files[i : i + batch]]
        out.append(embedder(crops))
        print(f"  embedded {min(i + batch, len(files))}/{len(files)}", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    return np.concatenate(out)


def pair_scores(emb, labels):
    labels = np.asarray(labels)
    s = emb @ emb.T
    iu = np.triu_indices(len(emb), 1)
    same = labels[iu[0]] == labels[iu[1]]
    return s[iu][same], s[iu][~same]


def thr_at_far(imp, far):
    """Smallest threshold t with (#impostor >= t) / #impostor <= far."""
    imp = np.sort(imp)[::-1]
    k = int(np.floor(far * len(imp)))  # number of impostors allowed at or above t
    if k >= len(imp):
        return float(imp[-1])
    return float(np.nextafter(imp[k], np.float32(2)))  # just above the (k+1)-th highest


def clean_labels(emb, labels, clean_thr):
    labels = np.asarray(labels)
    names = sorted(set(labels))
    centres = np.stack([robust_centre(emb[labels == n]) for n in names])
    s = emb @ centres.T
    own = np.array([names.index(l) for l in labels])
    own_s = s[np.arange(len(emb)), own]
    clean = (own_s >= clean_thr) & (s.argmax(1) == own)
    return clean, centres, own, s


def rates(gen, imp, t):
    return float((gen >= t).mean()) if len(gen) else float("nan"), float((imp >= t).mean()) if len(imp) else float("nan")


def calibrate(emb, labels, fars, clean_thr, check=(), centre_check=()):
    labels = np.asarray(labels)
    clean, centres, own, s = clean_labels(emb, labels, clean_thr)
    res = {"n_photos": int(len(emb)), "n_clean": int(clean.sum()), "clean_threshold": clean_thr}
    for tag, mask in (("clean", clean), ("raw", np.ones(len(emb), bool))):
        gen, imp = pair_scores(emb[mask], labels[mask])
        rows = []
        for far in fars:
            t = thr_at_far(imp, far)
            tar, f = rates(gen, imp, t)
            rows.append({"far_target": far, "threshold": round(t, 4), "tar": round(tar, 4), "far_measured": f})
        at = {}
        for t in check:
            tar, f = rates(gen, imp, t)
            at[str(t)] = {"tar": round(tar, 4), "far": f}
        res[tag] = {"n_genuine": int(len(gen)), "n_impostor": int(len(imp)),
                    "genuine_mean": float(gen.mean()), "impostor_mean": float(imp.mean()),
                    "impostor_max": float(imp.max()), "by_far": rows, "at": at}
    # leave-one-identity-out spread of the threshold (clean labels)
    names = sorted(set(labels))
    loo = {far: [] for far in fars}
    for n in names:
        m = clean & (labels != n)
        _, imp = pair_scores(emb[m], labels[m])
        for far in fars:
            loo[far].append(thr_at_far(imp, far))
    res["loo"] = {str(far): [round(min(v), 4), round(max(v), 4)] for far, v in loo.items()}
    # centre filter: clean photo to own centre vs every photo to other identities' centres
    own_s = s[np.arange(len(emb)), own]
    other = s.copy()
    other[np.arange(len(emb)), own] = np.nan
    imp_c = other[clean][~np.isnan(other[clean])]
    gen_c = own_s[clean]
    res["centre"] = {}
    for far in (1e-2, 1e-3):
        t = thr_at_far(imp_c, far)
        res["centre"][str(far)] = {"threshold": round(t, 4), "tar": round(float((gen_c >= t).mean()), 4)}
    res["centre"]["genuine_quantiles"] = [round(float(q), 4) for q in np.quantile(gen_c, [0.01, 0.05, 0.5])]
    res["centre"]["impostor_max"] = round(float(imp_c.max()), 4)
    for t in centre_check:
        res["centre"][f"at_{t}"] = {"tar_clean": round(float((gen_c >= t).mean()), 4), "far_photo": round(float((imp_c >= t).mean()), 5),
                                    "raw_dropped_fraction": round(float((own_s < t).mean()), 4)}
    return res


def wild_check(embedder, root: Path, thresholds):
    det = DlibDetector(upsample=1)
    rows = list(csv.DictReader(open(root / "identities.csv")))
    embs, labels, files = [], [], []
    for r in rows:
        img = np.asarray(Image.open(root / r["file"]).convert("RGB"))
        f = largest_face(det(img))
        if f is None:
            continue
        crop, _ = align_face(img, f, 128)
        embs.append(embedder([crop])[0])
        labels.append(r["identity"])
        files.append(r["file"])
    emb = np.stack(embs)
    gen, imp = pair_scores(emb, labels)
    out = {"n_photos": len(rows), "n_faces": len(files), "n_genuine": int(len(gen)), "n_impostor": int(len(imp)),
           "genuine_mean": float(gen.mean()), "impostor_mean": float(imp.mean()), "impostor_max": float(imp.max()), "at": {}}
    for t in thresholds:
        tar, far = rates(gen, imp, t)
        out["at"][str(t)] = {"tar": round(tar, 4), "far": round(far, 4)}
    master = root / "master.csv"
    if master.exists():
        pos = {f: i for i, f in enumerate(files)}
        yes, no = [], []
        for r in csv.DictReader(open(master)):
            a, b = pos.get(r["file_x"]), pos.get(r["file_y"])
            if a is None or b is None:
                continue
            (yes if r["Decision"].strip() == "Yes" else no).append(float(emb[a] @ emb[b]))
        yes, no = np.array(yes), np.array(no)
        out["master"] = {"n_yes": int(len(yes)), "n_no": int(len(no)),
                         "at": {str(t): {"tar": round(float((yes >= t).mean()), 4), "far": round(float((no >= t).mean()), 4)} for t in thresholds}}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "faces"))
    ap.add_argument("--per-identity", type=int, default=0, help="photos per identity (0 = all, ~30 min on 2 cores; 100 = ~3 min)")
    ap.add_argument("--cache", default=None, help="npz file to cache embeddings in")
    ap.add_argument("--target-far", type=float, default=1e-4)
    ap.add_argument("--clean", type=float, default=None, help="clean-label centre cosine (default: embedder-specific)")
    ap.add_argument("--arcface", default=None, help="ArcFace ONNX: calibrate it the same way too")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    data = Path(args.data)
    from lapdata.faces.embed import ArcFaceEmbedder, DlibEmbedder

    embedders = [DlibEmbedder()]
    if args.arcface:
        embedders.append(ArcFaceEmbedder(args.arcface))
    names, files = load_celeb(data / "celebrity-sets", args.per_identity)
    fars = [1e-3, args.target_far, 1e-5] if args.target_far not in (1e-3, 1e-5) else [1e-3, 1e-4, 1e-5]
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()} {os.cpu_count()} cpu", "per_identity": args.per_identity, "results": {}}
    for emb_model in embedders:
        t0 = time.time()
        cache = Path(f"{args.cache}.{emb_model.name.replace(':', '_')}.npz") if args.cache else None
        if cache and cache.exists():
            emb = np.load(cache)["emb"]
        else:
            emb = embed_files(emb_model, files)
            if cache:
                np.savez(cache, emb=emb)
        clean_thr = args.clean if args.clean is not None else (0.88 if emb_model.name.startswith("dlib") else 0.35)
        is_dlib = emb_model.name.startswith("dlib")
        res = calibrate(emb, names, fars, clean_thr, check=(0.92, 0.93, 0.94) if is_dlib else (0.3, 0.5, 0.6),
                        centre_check=(0.86, 0.87, 0.88, 0.89, 0.90, 0.91, 0.92, 0.93) if is_dlib else (0.35, 0.45, 0.55))
        chosen = next(r["threshold"] for r in res["clean"]["by_far"] if r["far_target"] == args.target_far)
        res["chosen_threshold"] = chosen
        if emb_model.name.startswith("arcface"):
            gen, imp = pair_scores(emb[clean_labels(emb, names, clean_thr)[0]], np.asarray(names)[clean_labels(emb, names, clean_thr)[0]])
            res["far_at_0.6"] = float((imp >= 0.6).mean())
        res["wild"] = wild_check(emb_model, data / "wild-photos", sorted({chosen, 0.9, 0.92, 0.93, 0.94, 0.95}) if is_dlib else [0.3, 0.5, 0.6])
        res["seconds"] = round(time.time() - t0, 1)
        report["results"][emb_model.name] = res
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
