"""The ICT-FaceKit model files: OBJ parsing, folder validation, the morphable model and its .npz cache.

See :mod:`lapdata.synthetic.ict` for the folder layout; :func:`load_model` is what the backend calls."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lapdata.core.atomic import atomic_path
from lapdata.core.errors import LapError

NEUTRAL = "generic_neutral_mesh.obj"
INDICES = "vertex_indices.json"
ARKIT = (
    "browDown_L browDown_R browInnerUp_L browInnerUp_R browOuterUp_L browOuterUp_R cheekPuff_L cheekPuff_R "
    "cheekSquint_L cheekSquint_R eyeBlink_L eyeBlink_R eyeLookDown_L eyeLookDown_R eyeLookIn_L eyeLookIn_R "
    "eyeLookOut_L eyeLookOut_R eyeLookUp_L eyeLookUp_R eyeSquint_L eyeSquint_R eyeWide_L eyeWide_R jawForward "
    "jawLeft jawOpen jawRight mouthClose mouthDimple_L mouthDimple_R mouthFrown_L mouthFrown_R mouthFunnel mouthLeft "
    "mouthLowerDown_L mouthLowerDown_R mouthPress_L mouthPress_R mouthPucker mouthRight mouthRollLower "
    "mouthRollUpper mouthShrugLower mouthShrugUpper mouthSmile_L mouthSmile_R mouthStretch_L mouthStretch_R "
    "mouthUpperUp_L mouthUpperUp_R noseSneer_L noseSneer_R"
).split()
KEEP_MATERIALS = ("M_Face", "M_BackHead", "M_GumsTongue", "M_Teeth", "M_ScleraLeft", "M_IrisLeft", "M_ScleraRight",
                  "M_IrisRight")
FACE_AREA = 9409  # vertices 0..9408: ICT's "full face area"
# mild expressions: name -> std of its weight (others 0); symmetric pairs get correlated weights
MILD = {"mouthSmile": 0.25, "jawOpen": 0.08, "browInnerUp": 0.2, "browDown": 0.12, "eyeSquint": 0.15,
        "mouthFrown": 0.12, "eyeWide": 0.12, "cheekSquint": 0.12, "mouthPucker": 0.1, "eyeBlink": 0.1}
CACHE_VERSION = 2


# --------------------------------------------------------------------------------------------------- OBJ parsing


@dataclass
class ObjMesh:
    v: np.ndarray  # (V, 3) float64
    vt: np.ndarray  # (T, 2)
    polys: list[list[tuple[int, int]]]  # per face: [(v, vt), ...] 0-based (vt -1 when absent)
    mats: list[str]  # material per face ("" when none)
    mtllib: str | None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError as e:
        raise LapError(f"{path}: cannot read ({e.strerror})") from None


def read_obj_vertices(path: Path) -> np.ndarray:
    """Only the ``v`` lines of an OBJ -> (V, 3) float64."""
    lines = [ln[2:] for ln in _read_lines(path) if ln.startswith("v ")]
    try:
        arr = np.array(" ".join(lines).split(), dtype=np.float64)
        return arr.reshape(-1, 3)
    except ValueError:
        raise LapError(f"{path}: malformed vertex lines (expected 'v x y z')") from None


def read_obj(path: Path) -> ObjMesh:
    """Vertices, UVs, polygons (any arity) with their materials."""
    lines = _read_lines(path)
    v = read_obj_vertices(path)
    vts = [ln[3:] for ln in lines if ln.startswith("vt ")]
    try:
        vt = np.array(" ".join(" ".join(s.split()[:2]) for s in vts).split(), dtype=np.float64).reshape(-1, 2)
    except ValueError:
        raise LapError(f"{path}: malformed texture coordinate lines") from None
    polys, mats, mat, mtllib = [], [], "", None
    for ln in lines:
        if ln.startswith("f "):
            poly = []
            for tok in ln.split()[1:]:
                parts = tok.split("/")
                try:
                    vi = int(parts[0])
                    ti = int(parts[1]) if len(parts) > 1 and parts[1] else 0
                except ValueError:
                    raise LapError(f"{path}: malformed face line {ln.strip()!r}") from None
                vi = vi - 1 if vi > 0 else len(v) + vi
                ti = (ti - 1 if ti > 0 else len(vt) + ti) if ti else -1
                poly.append((vi, ti))
            polys.append(poly)
            mats.append(mat)
        elif ln.startswith("usemtl"):
            mat = ln.split(maxsplit=1)[1].strip() if len(ln.split()) > 1 else ""
        elif ln.startswith("mtllib"):
            mtllib = ln.split(maxsplit=1)[1].strip() if len(ln.split()) > 1 else None
    return ObjMesh(v=v, vt=vt, polys=polys, mats=mats, mtllib=mtllib)


def _count_prefix(path: Path, prefix: str) -> int:
    n = 0
    with open(path, "rb") as f:
        for ln in f:
            if ln.startswith(prefix.encode()):
                n += 1
    return n


# --------------------------------------------------------------------------------------------------- the model


@dataclass
class ICTModel:
    """The loaded, compacted model (kept vertices only; K identity modes, E expressions).

    neutral (Vk, 3); id_basis (K, Vk, 3) and expr_basis (E, Vk, 3) deltas from the neutral; expr_names (E,);
    faces (F, 3) over kept vertices; rfaces (F, 3) over render vertices (a kept vertex per distinct UV);
    rv (Rv,) kept vertex of each render vertex; ruv (Rv, 2) its UV; tri_mat (F,) material index into mat_names;
    vmat (Vk,) a material of each kept vertex; face_area (Vk,) bool (ICT face area); landmarks (68,) kept indices
    (-1 unknown). Units: centimetres, y up, z out of the face."""

    neutral: np.ndarray
    id_basis: np.ndarray
    expr_basis: np.ndarray
    expr_names: list[str]
    faces: np.ndarray
    rfaces: np.ndarray
    rv: np.ndarray
    ruv: np.ndarray
    tri_mat: np.ndarray
    vmat: np.ndarray
    mat_names: list[str]
    face_area: np.ndarray
    landmarks: np.ndarray

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no suffix
            np.savez(
                f, version=np.array(CACHE_VERSION), neutral=self.neutral, id_basis=self.id_basis,
                expr_basis=self.expr_basis, expr_names=np.array(self.expr_names, dtype=str), faces=self.faces,
                rfaces=self.rfaces, rv=self.rv, ruv=self.ruv, tri_mat=self.tri_mat, vmat=self.vmat,
                mat_names=np.array(self.mat_names, dtype=str), face_area=self.face_area, landmarks=self.landmarks,
            )

    @classmethod
    def load(cls, path: Path) -> "ICTModel":
        with np.load(path) as z:
            if int(z["version"]) != CACHE_VERSION:
                raise ValueError("old cache")
            return cls(
                neutral=z["neutral"], id_basis=z["id_basis"], expr_basis=z["expr_basis"],
                expr_names=[str(s) for s in z["expr_names"]], faces=z["faces"], rfaces=z["rfaces"], rv=z["rv"],
                ruv=z["ruv"], tri_mat=z["tri_mat"], vmat=z["vmat"], mat_names=[str(s) for s in z["mat_names"]],
                face_area=z["face_area"], landmarks=z["landmarks"],
            )


@dataclass(frozen=True)
class ICTFiles:
    folder: Path
    identities: tuple[Path, ...]
    expressions: tuple[Path, ...]

    def fingerprint(self) -> str:
        h = hashlib.sha1(str(CACHE_VERSION).encode())
        for p in (self.folder / NEUTRAL, *self.identities, *self.expressions):
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)};".encode())
        return h.hexdigest()[:16]


def validate_folder(folder: str | Path) -> ICTFiles:
    """Check an ICT-FaceKit FaceXModel folder's files and topology (vertex/face counts) -> its files.

    Raises one LapError naming the folder or file and the fault."""
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise LapError(f"{d}: ICT-FaceKit model folder does not exist (give the FaceXModel folder with --model)")
    neutral = d / NEUTRAL
    if not neutral.is_file():
        raise LapError(f"{d}: not an ICT-FaceKit FaceXModel folder: {NEUTRAL} is missing")
    ids = []
    k = 0
    while (d / f"identity{k:03d}.obj").is_file():
        ids.append(d / f"identity{k:03d}.obj")
        k += 1
    if not ids:
        raise LapError(f"{d}: not an ICT-FaceKit FaceXModel folder: identity000.obj is missing")
    stray = sorted(p.name for p in d.glob("identity*.obj") if p not in ids)
    if stray:
        raise LapError(f"{d}: identity files are not numbered contiguously from identity000.obj ({stray[0]} after a gap)")
    idx = d / INDICES
    if idx.is_file():
        try:
            names = json.loads(idx.read_text())["expressions"]
        except (ValueError, KeyError, TypeError):
            raise LapError(f"{idx}: not a valid ICT vertex_indices.json (no 'expressions' list)") from None
        missing = [n for n in names if not (d / f"{n}.obj").is_file()]
        if missing:
            raise LapError(f"{d}: expression blendshape {missing[0]}.obj is missing ({len(missing)} of {len(names)} missing)")
    else:
        names = [n for n in ARKIT if (d / f"{n}.obj").is_file()]
    exprs = tuple(d / f"{n}.obj" for n in names)
    # topology: counts of v and f lines must match the neutral mesh
    nv, nf = _count_prefix(neutral, "v "), _count_prefix(neutral, "f ")
    if nv == 0 or nf == 0:
        raise LapError(f"{neutral}: no {'vertices' if nv == 0 else 'faces'} found (not an OBJ mesh?)")
    if _count_prefix(neutral, "vt ") == 0:
        raise LapError(f"{neutral}: no texture coordinates (vt lines); the ICT neutral mesh has UVs")
    for p in (*ids, *exprs):
        pv = _count_prefix(p, "v ")
        if pv != nv:
            raise LapError(f"{p}: wrong topology: {pv} vertices, expected {nv} like {NEUTRAL}")
        pf = _count_prefix(p, "f ")
        if pf and pf != nf:
            raise LapError(f"{p}: wrong topology: {pf} faces, expected {nf} like {NEUTRAL}")
    with open(neutral, "rb") as f:
        for ln in f:
            if ln.startswith(b"mtllib"):
                mtl = ln.split(maxsplit=1)[1].strip().decode(errors="replace")
                if not (d / mtl).is_file():
                    raise LapError(f"{d}: material file {mtl} (named by {NEUTRAL}) is missing")
                break
    return ICTFiles(folder=d, identities=tuple(ids), expressions=exprs)


def build_model(files: ICTFiles, progress: bool = False) -> ICTModel:
    """Parse the folder into the compact model."""
    neutral = read_obj(files.folder / NEUTRAL)
    if len(neutral.vt) == 0:
        raise LapError(f"{files.folder / NEUTRAL}: no texture coordinates")
    has_mats = any(neutral.mats)
    keep = [i for i, m in enumerate(neutral.mats) if (m in KEEP_MATERIALS) or not has_mats]
    if not keep:
        raise LapError(f"{files.folder / NEUTRAL}: none of the materials {KEEP_MATERIALS} is used")
    mat_names = sorted({neutral.mats[i] for i in keep})
    tris_v, tris_t, tri_mat = [], [], []
    for i in keep:
        poly = neutral.polys[i]
        if len(poly) < 3:
            continue
        for k in range(1, len(poly) - 1):  # fan: quads -> 2 triangles
            a, b, c = poly[0], poly[k], poly[k + 1]
            tris_v.append((a[0], b[0], c[0]))
            tris_t.append((a[1], b[1], c[1]))
            tri_mat.append(mat_names.index(neutral.mats[i]))
    tv = np.asarray(tris_v, np.int64)
    tt = np.asarray(tris_t, np.int64)
    if tv.max() >= len(neutral.v) or tt.max() >= len(neutral.vt):
        raise LapError(f"{files.folder / NEUTRAL}: a face refers to a vertex or UV that does not exist")
    used = np.unique(tv)
    remap = -np.ones(len(neutral.v), np.int64)
    remap[used] = np.arange(len(used))
    faces = remap[tv]
    pairs = np.stack([tv.reshape(-1), tt.reshape(-1)], -1)
    uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
    rfaces = inv.reshape(-1, 3)
    rv = remap[uniq[:, 0]]
    ruv = np.where(uniq[:, 1:2] >= 0, neutral.vt[np.maximum(uniq[:, 1], 0)], 0.0)
    base = neutral.v
    it = list(files.identities) + list(files.expressions)
    bases = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(it), desc="parsing ICT-FaceKit", unit="mesh", dynamic_ncols=True, disable=None)
    for p in it:
        bases.append((read_obj_vertices(p) - base)[used].astype(np.float32))
        if bar:
            bar.update()
    if bar:
        bar.close()
    K = len(files.identities)
    vmat = np.zeros(len(used), np.int64)
    vmat[faces.reshape(-1)] = np.repeat(np.asarray(tri_mat), 3)
    lms = -np.ones(68, np.int64)
    idx = files.folder / INDICES
    if idx.is_file():
        try:
            lm = np.asarray(json.loads(idx.read_text()).get("idx_to_landmark_verts", []), np.int64)
            if len(lm) == 68 and lm.max() < len(remap):
                lms = remap[lm]
        except (ValueError, TypeError):
            pass
    return ICTModel(
        neutral=base[used].astype(np.float32),
        id_basis=np.stack(bases[:K]) if K else np.zeros((0, len(used), 3), np.float32),
        expr_basis=np.stack(bases[K:]) if len(bases) > K else np.zeros((0, len(used), 3), np.float32),
        expr_names=[p.stem for p in files.expressions],
        faces=faces,
        rfaces=rfaces,
        rv=rv,
        ruv=ruv.astype(np.float32),
        tri_mat=np.asarray(tri_mat, np.int64),
        vmat=vmat,
        mat_names=mat_names,
        face_area=used < FACE_AREA if len(neutral.v) > FACE_AREA else np.ones(len(used), bool),
        landmarks=lms,
    )


ARCHIVES = (".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar")  # a FaceXModel folder packed as one file


def load_model(folder: str | Path, cache_dir: str | Path | None = None, progress: bool = False) -> ICTModel:
    """Validate ``folder`` and load the model, from ``cache_dir/ict-<fingerprint>.npz`` when present.

    ``folder`` may also be a tar archive holding the FaceXModel folder (``FaceXModel.tar.xz``): it is unpacked into
    a temporary folder (under ``cache_dir``), read, and removed; the cache is keyed by the archive's name, size and
    mtime, so later loads never unpack it again."""
    src = Path(folder).expanduser()
    if src.is_file() and src.name.lower().endswith(ARCHIVES):
        return _load_archive(src, cache_dir, progress)
    files = validate_folder(src)
    return _cached(Path(cache_dir) / f"ict-{files.fingerprint()}.npz" if cache_dir else None,
                   lambda: build_model(files, progress=progress))


def _cached(cache: Path | None, build) -> ICTModel:
    if cache is not None and cache.is_file():
        try:
            return ICTModel.load(cache)
        except (ValueError, KeyError, OSError):
            pass
    model = build()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        model.save(cache)
    return model


def _load_archive(src: Path, cache_dir: str | Path | None, progress: bool) -> ICTModel:
    import hashlib
    import tarfile
    import tempfile

    st = src.stat()
    key = hashlib.sha1(f"{src.name}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:16]

    def build() -> ICTModel:
        if cache_dir:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir or None, prefix=".ict-unpack-") as tmp:
            try:
                with tarfile.open(src) as tf:
                    tf.extractall(tmp, filter="data")
            except (tarfile.TarError, OSError, EOFError) as e:
                raise LapError(f"{src}: cannot unpack the archive ({type(e).__name__}: {e})") from None
            hits = sorted(Path(tmp).rglob(NEUTRAL))
            if len(hits) != 1:
                raise LapError(f"{src}: the archive holds {len(hits)} ICT-FaceKit FaceXModel folders ({NEUTRAL}), "
                               "expected one")
            return build_model(validate_folder(hits[0].parent), progress=progress)

    return _cached(Path(cache_dir) / f"ict-archive-{key}.npz" if cache_dir else None, build)
