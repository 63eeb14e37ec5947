"""3D face keypoints of photos, the ground truth of the real-photo depth protocol (Unsup3D's / LAP's Table 3).

One in-memory form, :class:`KeypointSet`, read from the formats users have:

* ``.npz`` written by ``keypoints3d.py`` (MediaPipe Face Mesh, 468 points; ``files`` relative to the folder the tool
  ran in, ``points`` (N, 468, 3) with x, y in the photo's pixels, pixel centres at +0.5, z smaller = nearer, NaN rows
  where no face was found, ``size`` (N, 2));
* an AFLW2000-3D folder: ``imageXXXXX.jpg`` beside ``imageXXXXX.mat`` holding ``pt3d_68`` (3, 68);
* a 3DFAW folder of ``<id>_lm.csv`` files (66 rows ``x,y,z``, DepthNet's reader), the photo ``<id>.jpg`` beside it
  or in the sibling ``<split>_img/`` folder.

Conventions after reading: x, y in the photo's pixels with the origin at the centre of the top-left pixel (as
``lapdata.faces.align``), z oriented so that **larger = farther** (the model's depth), found from the face itself: the
nose tip is nearer the camera than the face outline (the median over the set decides, so one odd annotation
cannot flip a dataset). Identities: the photo's parent folder for the ``.npz`` (``celebrity-sets/<name>/x.jpg``),
else every photo is its own.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lapdata.core.errors import LapError

# nose tip and face-outline indices of each layout (facts of the layouts, used only to orient z)
LAYOUTS: dict[int, tuple[int, tuple[int, ...]]] = {
    468: (1, (10, 152, 234, 454, 127, 356, 172, 397)),  # MediaPipe Face Mesh: nose tip, forehead, chin, cheeks
    68: (30, tuple(range(17))),  # iBUG 68: nose tip 31 (1-based), jaw line 1..17
    66: (30, tuple(range(17))),  # 3DFAW 66 (iBUG without the inner mouth corners 61, 65)
}


@dataclass
class KeypointSet:
    """Photos with 3D keypoints. files: (N,) photo paths; points: (N, K, 3) float64 (x, y pixels, z larger =
    farther; NaN rows = no annotation); identities: (N,) names; source: the file or folder read."""

    files: list[Path]
    points: np.ndarray
    identities: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_points(self) -> int:
        return int(self.points.shape[1])

    def subset(self, idx: list[int]) -> "KeypointSet":
        return KeypointSet([self.files[i] for i in idx], self.points[idx], [self.identities[i] for i in idx],
                           self.source)


def orient_z(points: np.ndarray) -> np.ndarray:
    """(N, K, 3) -> the same with z negated when the set's nose tips are farther than its outlines (larger z must
    mean farther). Layouts other than those of ``LAYOUTS`` are returned unchanged."""
    k = points.shape[1]
    if k not in LAYOUTS:
        return points
    nose, outline = LAYOUTS[k]
    found = np.isfinite(points[:, list(outline), 2]).all(1) & np.isfinite(points[:, nose, 2])  # photos with no face: NaN
    gap = points[found][:, list(outline), 2].mean(1) - points[found, nose, 2]  # > 0: nose nearer (larger = farther)
    if len(gap) and np.median(gap) < 0:
        points = points.copy()
        points[..., 2] *= -1
    return points


def read_npz(path: Path, photo_root: Path | None) -> KeypointSet:
    """The ``keypoints3d.py`` format; ``files`` resolve against ``photo_root`` (default: the npz's folder)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files, points = z["files"], np.asarray(z["points"], np.float64)
    except (OSError, ValueError, KeyError) as e:
        raise LapError(f"{path}: not a keypoints3d .npz with 'files' and 'points' ({type(e).__name__}: {e})") from None
    if points.ndim != 3 or points.shape[2] != 3 or len(files) != len(points):
        raise LapError(f"{path}: 'points' must be (N, K, 3) with one row per file, got {points.shape} for "
                       f"{len(files)} files")
    root = photo_root if photo_root is not None else path.parent
    rel = [Path(str(f)) for f in files]
    pts = points.copy()
    pts[..., :2] -= 0.5  # pixel centres at +0.5 -> at integers
    return KeypointSet([root / f for f in rel], orient_z(pts), [f.parent.name or f.stem for f in rel], str(path))


def read_aflw2000(folder: Path) -> KeypointSet:
    """AFLW2000-3D: every ``*.mat`` with ``pt3d_68`` (3, 68) and the ``.jpg`` of the same stem."""
    from scipy.io import loadmat

    files, pts = [], []
    for mat in sorted(folder.glob("*.mat")):
        try:
            p = np.asarray(loadmat(str(mat))["pt3d_68"], np.float64)
        except (OSError, ValueError, KeyError) as e:
            raise LapError(f"{mat}: not an AFLW2000-3D annotation with pt3d_68 ({type(e).__name__})") from None
        if p.shape != (3, 68):
            raise LapError(f"{mat}: pt3d_68 must be (3, 68), got {p.shape}")
        files.append(mat.with_suffix(".jpg"))
        pts.append(p.T)
    if not files:
        raise LapError(f"{folder}: no AFLW2000-3D .mat files")
    return KeypointSet(files, orient_z(np.stack(pts)), [f.stem for f in files], str(folder))


def _read_csv_points(path: Path) -> np.ndarray:
    try:
        with open(path, newline="") as fh:
            rows = [[float(v) for v in r[:3]] for r in csv.reader(fh) if r]
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise LapError(f"{path}: not a 3DFAW keypoint file of x,y,z rows ({type(e).__name__})") from None
    if len(rows) != 66 or any(len(r) != 3 for r in rows):
        raise LapError(f"{path}: a 3DFAW keypoint file has 66 rows x,y,z, got {len(rows)} rows")
    return np.asarray(rows, np.float64)


def read_3dfaw(folder: Path) -> KeypointSet:
    """3DFAW: ``<id>_lm.csv`` files; the photo is ``<id>.jpg`` beside them or in ``<split>_img/``."""
    csvs = sorted(folder.glob("*_lm.csv"))
    if not csvs:
        raise LapError(f"{folder}: no 3DFAW *_lm.csv keypoint files")
    img_dir = folder.parent / (folder.name[: -len("_lm")] + "_img") if folder.name.endswith("_lm") else folder
    files, pts = [], []
    for c in csvs:
        stem = c.name[: -len("_lm.csv")]
        beside = folder / f"{stem}.jpg"
        files.append(beside if beside.exists() else img_dir / f"{stem}.jpg")
        pts.append(_read_csv_points(c))
    return KeypointSet(files, orient_z(np.stack(pts)), [f.stem for f in files], str(folder))


def read_keypoints(path: str | Path, photo_root: str | Path | None = None) -> KeypointSet:
    """A keypoint file or folder in any supported format (see the module doc) -> KeypointSet."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LapError(f"{p}: keypoint file or folder does not exist")
    root = Path(photo_root).expanduser() if photo_root else None
    if p.is_file():
        if p.suffix.lower() != ".npz":
            raise LapError(f"{p}: keypoint files are keypoints3d .npz; give AFLW2000-3D / 3DFAW as their folder")
        return read_npz(p, root)
    if any(p.glob("*_lm.csv")):
        return read_3dfaw(p)
    if any(p.glob("*.mat")):
        return read_aflw2000(p)
    raise LapError(f"{p}: no keypoints found (a keypoints3d .npz, an AFLW2000-3D folder of .mat files, or a 3DFAW "
                   "folder of *_lm.csv files)")


def select(kps: KeypointSet, identities: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
           max_per_identity: int | None = None) -> KeypointSet:
    """The photos of ``identities`` (all when empty) minus ``exclude``, at most ``max_per_identity`` each (evenly
    spaced in file order, so a subset is deterministic and spans the collection)."""
    known = set(kps.identities)
    unknown = [i for i in (*identities, *exclude) if i not in known]
    if unknown:
        raise LapError(f"{kps.source}: unknown identities {unknown[:5]} (known: {sorted(known)[:8]} ...)")
    by_id: dict[str, list[int]] = {}
    for i, name in enumerate(kps.identities):
        if (not identities or name in identities) and name not in exclude:
            by_id.setdefault(name, []).append(i)
    keep: list[int] = []
    for name in sorted(by_id):
        idx = by_id[name]
        if max_per_identity is not None and len(idx) > max_per_identity:
            idx = [idx[j] for j in np.linspace(0, len(idx) - 1, max_per_identity).round().astype(int)]
        keep.extend(idx)
    return kps.subset(keep)
