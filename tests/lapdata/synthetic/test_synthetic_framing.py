"""GAN views framed like photos (lapdata.synthetic.framing): a face generated at FFHQ framing is written at the lap
framing, with its rule in the manifest; a view without a face is a counted error row.

Facts used: FFHQ's alignment puts the eyes 0.241 of the side apart, their midpoint 0.469 from the top; the lap
template (lapdata.faces.align) 0.35 apart at 0.33. A view resized as it comes therefore has its eyes ~14 px low and 31 px
apart at 128 px instead of 45.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.builders import shared_path
from lapdata.dataset.audit.run import audit_dataset
from lapdata.faces.align import Face, estimate_similarity, five_points, lap_template, transform_points, warp_affine
from lapdata.dataset.sample import decode_sample
from lapdata.dataset.reader import iter_samples
from lapdata.synthetic.base import IdentityParams, SynthView
from lapdata.synthetic.build import SynthConfig, run_synthetic
from lapdata.synthetic.framing import SOURCE_FRAMINGS, render_size

SIZE = 128
FFHQ_IOD, FFHQ_EYE_Y = 0.241, 0.469


class FFHQProcedural:
    """The procedural face placed at FFHQ framing (a stand-in for an FFHQ StyleGAN); its projected 5 points are
    kept in ``truth`` by image hash (what a perfect detector would answer) and in the view json."""

    name = "ffhq-procedural"
    has_geometry = False
    framing = "ffhq"

    def __init__(self):
        from lapdata.synthetic.procedural import ProceduralBackend, ProceduralConfig

        self.inner = ProceduralBackend(ProceduralConfig(iod=FFHQ_IOD, eye_y=FFHQ_EYE_Y, light="frontal",
                                                        expression_scale=0.0, background="gray"))
        self.truth: dict[str, np.ndarray] = {}
        self.images: dict[str, np.ndarray] = {}
        self.sizes: list[int] = []

    def sample_identity(self, rng):
        return self.inner.sample_identity(rng)

    def render_views(self, params, poses, size, rng):
        self.sizes.append(size)
        out = []
        for v in self.inner.render_views(params, poses, size, rng):
            h = hashlib.sha1(v.image.tobytes()).hexdigest()
            self.truth[h], self.images[h] = v.landmarks, v.image
            out.append(SynthView(image=v.image, pose=v.pose, meta={"truth5": v.landmarks.tolist(), "generated": h}))
        return out

    def describe(self):
        return {"backend": self.name}


class EyesDetector:
    """A perfect detector for FFHQProcedural views: the 5 points of the lap template placed on the true eyes."""

    name = "truth-eyes"

    def __init__(self, backend: FFHQProcedural):
        self.backend = backend

    def __call__(self, image):
        lm = self.backend.truth[hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()]
        tpl = lap_template(SIZE)
        pts = transform_points(estimate_similarity(tpl[:2], lm[:2]), tpl)
        return [Face(box=np.r_[pts.min(0) - 20, pts.max(0) + 20], landmarks=pts, score=1.0)]


def _cfg(tmp_path, **kw):
    base = dict(backend="stylegan", out=str(tmp_path / "out"), identities=2, poses=3, size=SIZE, id_filter="none",
                progress=False, yaw_range=(-20.0, 20.0))
    return SynthConfig(**{**base, **kw})


def _written(out):
    """photo_id -> (row, view json, image) of the written views."""
    rows = {r["photo_id"]: r for r in pq.read_table(out / "photos.parquet").to_pylist()}
    views = {}
    for d in iter_samples(out):
        for v in decode_sample(d, fields=("image",)).views:
            views[v.meta["photo_id"]] = (rows[v.meta["photo_id"]], v.meta, v.image)
    return rows, views


def _rule_matrix(row) -> np.ndarray:
    """The similarity the manifest row's rule names: its landmarks (source pixels) -> the lap template of its size."""
    lm = np.asarray(row["landmarks"], np.float64).reshape(-1, 2)
    return estimate_similarity(five_points(lm), lap_template(row["size"]))


def test_render_size_and_framings():
    assert (SOURCE_FRAMINGS["ffhq"].iod, SOURCE_FRAMINGS["ffhq"].eye_y) == (FFHQ_IOD, FFHQ_EYE_Y)
    assert render_size(128, "ffhq") == 186 and render_size(256, "ffhq") == 372  # ceil(size * 0.35 / 0.241)
    assert render_size(128, "approx-lap") == 128


def test_ffhq_view_is_written_at_the_lap_framing(tmp_path):
    backend = FFHQProcedural()
    out = tmp_path / "out"
    stats = run_synthetic(_cfg(tmp_path), backend=backend, detector=EyesDetector(backend))
    assert stats["status_counts"] == {"ok": 6} and audit_dataset(out).ok
    assert set(backend.sizes) == {186}  # generated large enough for a 128 px lap crop
    tpl_eyes = lap_template(SIZE)[:2]
    rows, views = _written(out)
    for pid, (row, meta, img) in views.items():
        assert row["crop_rule"] == ("synthetic:ffhq-procedural:ffhq-frame,render=186;truth-eyes;"
                                    "sim5:template=lap,iod=0.35,eye_y=0.33,size=128,border=replicate")
        assert (row["orig_width"], row["orig_height"], row["num_faces"]) == (186, 186, 1)
        assert meta["crop_rule"] == row["crop_rule"] and meta["det_score"] == 1.0
        truth = np.asarray(meta["truth5"])  # the face's true 5 points in the generated view
        # as generated, resized to 128 px: eyes ~31 px apart and ~18 px below the template's
        resized = truth[:2] * SIZE / 186
        assert np.linalg.norm(resized - tpl_eyes, axis=1).min() > 10
        # written: the rule of the manifest maps the true eyes onto the template's, within 1 px
        m = _rule_matrix(row)
        assert np.abs(transform_points(m, truth[:2]) - tpl_eyes).max() < 1.0
        np.testing.assert_allclose(np.asarray(meta["landmarks"])[:2], transform_points(m, five_points(
            np.asarray(row["landmarks"]).reshape(-1, 2)))[:2], atol=0.01)
        # and the written pixels are the generated view warped by that rule (JPEG q95)
        want = warp_affine(backend.images[meta["generated"]], m, SIZE)
        assert np.abs(img.astype(float) - want).mean() < 2.0


def test_real_detector_on_an_ffhq_procedural_face(tmp_path):
    """The toolkit's default detector (dlib) on the procedural face at FFHQ framing: found, framed near the lap
    template (dlib's points on a procedural face are not its true points, so a few px, not 1)."""
    pytest.importorskip("dlib")
    backend = FFHQProcedural()
    stats = run_synthetic(_cfg(tmp_path, identities=2, poses=1), backend=backend)
    assert stats["status_counts"] == {"ok": 2}
    rows, views = _written(tmp_path / "out")
    for row, meta, img in views.values():
        assert ";dlib-hog;sim5:template=lap" in row["crop_rule"] and len(row["landmarks"]) == 136
        eyes = transform_points(_rule_matrix(row), np.asarray(meta["truth5"])[:2])
        iod, mid = np.linalg.norm(eyes[1] - eyes[0]), eyes.mean(0)
        assert abs(iod / SIZE - 0.35) < 0.035 and abs(mid[1] / SIZE - 0.33) < 0.03 and abs(mid[0] / SIZE - 0.5) < 0.03


class PastedPhotos:
    """Real lap-framed photos (../shared lap-demo, 256 px) pasted into an FFHQ-framed canvas of the requested size
    (a stand-in for a StyleGAN FFHQ generator): identity i is photo i."""

    name = "ffhq-photos"
    has_geometry = False
    framing = "ffhq"

    def __init__(self, photos):
        self.photos = photos
        self.drawn = 0

    def sample_identity(self, rng):
        self.drawn += 1
        return IdentityParams(seed=0, coeffs={"photo": (self.drawn - 1) % len(self.photos)})

    def to_canvas(self, side: int, size: int) -> np.ndarray:
        """(2, 3) similarity: the photo's lap framing (side px) -> FFHQ framing of a size-px canvas."""
        return estimate_similarity(lap_template(side), lap_template(size, FFHQ_IOD, FFHQ_EYE_Y))

    def render_views(self, params, poses, size, rng):
        img = self.photos[params.coeffs["photo"]]
        canvas = warp_affine(img, self.to_canvas(img.shape[0], size), size, "replicate")
        return [SynthView(image=canvas, pose=p, meta={"photo": params.coeffs["photo"]}) for p in poses]

    def describe(self):
        return {"backend": self.name}


@pytest.mark.shared
def test_real_photos_at_ffhq_framing_are_written_like_ingest(tmp_path):
    """dlib on real faces pasted at FFHQ framing: the written view puts the eyes within 1 px of where the lap
    template alignment puts them for the original photo (what lapdata ingest writes for it)."""
    pytest.importorskip("dlib")
    from PIL import Image

    from lapdata.faces.detectors import DlibDetector

    files = sorted(shared_path("faces", "lap-demo").glob("*.png"))[:8]
    photos = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    backend = PastedPhotos(photos)
    stats = run_synthetic(_cfg(tmp_path, identities=4, poses=1), backend=backend)
    assert stats["status_counts"] == {"ok": 4}
    det = DlibDetector()
    tpl = lap_template(SIZE)
    errors = []
    for row, meta, img in _written(tmp_path / "out")[1].values():
        photo = photos[meta["photo"]]
        p = det(photo)[0].points5()  # the original photo's 5 points, as ingest finds them
        ingest_eyes = transform_points(estimate_similarity(p, tpl), p)[:2]
        truth = transform_points(backend.to_canvas(photo.shape[0], 186), p)  # the same points in the canvas
        errors.append(np.abs(transform_points(_rule_matrix(row), truth[:2]) - ingest_eyes).max())
    assert len(errors) == 4 and max(errors) < 1.0, errors


def test_identity_filter_embeds_the_generated_view_with_its_detected_points(tmp_path):
    """The ArcFace/dlib filter aligns each view from the full-resolution generated image and the detected points
    (its own template, as insightface does), not from the written lap crop."""
    from lapdata.synthetic.frontal import IdentityFilter

    class Recorder:
        calls: list = []

        def __call__(self, crops):  # pragma: no cover - must not be used for views with landmarks
            raise AssertionError("embedded a crop without landmarks")

        def embed_image(self, image, landmarks):
            self.calls.append((image.shape, np.asarray(landmarks[0])))
            return np.ones((1, 4), np.float32) / 2

    backend = FFHQProcedural()
    det = EyesDetector(backend)
    rec = Recorder()
    stats = run_synthetic(_cfg(tmp_path, identities=1), backend=backend, detector=det,
                          filt=IdentityFilter(rec, 0.6, "recorder"))
    assert stats["status_counts"] == {"ok": 3}
    assert [c[0] for c in rec.calls] == [(186, 186, 3)] * 3
    for (_, lm), img in zip(rec.calls, backend.images.values()):
        np.testing.assert_allclose(lm, det(img)[0].landmarks)


def test_a_failing_detector_is_an_error_row_per_view(tmp_path):
    class Broken:
        name = "broken"

        def __call__(self, image):
            raise RuntimeError("detector exploded\nsecond line")

    stats = run_synthetic(_cfg(tmp_path, identities=1, poses=2), backend=FFHQProcedural(), detector=Broken())
    assert stats["status_counts"] == {"error": 2} and stats["reason_counts"] == {"face_crop_failed": 2}
    rows = pq.read_table(tmp_path / "out" / "photos.parquet").to_pylist()
    assert {r["error"] for r in rows} == {"face_crop_failed: RuntimeError: detector exploded"}
