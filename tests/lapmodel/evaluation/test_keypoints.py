"""The real-photo keypoint protocol: keypoint formats, z orientation, crop mapping, the metrics in closed form, and
`lapmodel evaluate --keypoints` end to end with a stand-in model whose depth is the ground truth."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lapdata.core.errors import LapError
from lapmodel.evaluation import metrics
from lapmodel.evaluation.keypoints import LAYOUTS, orient_z, read_keypoints, select

S = 32


def _face_points(k: int = 68, n: int = 3, seed: int = 0, near_small: bool = True) -> np.ndarray:
    """(n, k, 3) keypoints with the nose tip nearer than the outline (smaller z when near_small)."""
    rng = np.random.default_rng(seed)
    p = np.zeros((n, k, 3))
    p[..., :2] = rng.uniform(8, 24, (n, k, 2))
    p[..., 2] = rng.uniform(0, 1, (n, k))
    nose, outline = LAYOUTS[k]
    p[:, list(outline), 2] = 5.0
    p[:, nose, 2] = -5.0
    if not near_small:
        p[..., 2] *= -1
    return p


def test_orient_z_by_the_nose():
    near_small = _face_points(near_small=True)
    np.testing.assert_array_equal(orient_z(near_small), near_small)  # already larger = farther
    flipped = orient_z(_face_points(near_small=False))
    np.testing.assert_allclose(flipped, near_small)  # nose nearer than the outline after orientation
    odd = np.zeros((2, 5, 3))
    assert orient_z(odd) is odd  # unknown layout: unchanged


def test_read_npz_pixel_centres_identities_and_root(tmp_path):
    pts = _face_points(468, n=2, near_small=True).astype(np.float16)
    files = np.array(["sets/alice/0.jpg", "sets/bob/1.jpg"])
    np.savez(tmp_path / "kp.npz", files=files, points=pts, size=np.array([[32, 32], [32, 32]], np.int32))
    k = read_keypoints(tmp_path / "kp.npz", tmp_path / "photos")
    assert k.identities == ["alice", "bob"] and k.files[0] == tmp_path / "photos" / "sets/alice/0.jpg"
    np.testing.assert_allclose(k.points[..., :2], pts[..., :2].astype(np.float64) - 0.5)  # +0.5 centres -> integers
    np.testing.assert_allclose(k.points[..., 2], pts[..., 2].astype(np.float64))
    assert read_keypoints(tmp_path / "kp.npz").files[1] == tmp_path / "sets/bob/1.jpg"  # default root: its folder
    assert select(k, identities=("bob",)).identities == ["bob"]
    with pytest.raises(LapError, match="unknown identities"):
        select(k, identities=("carol",))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(LapError, match="bad.npz"):
        read_keypoints(tmp_path / "bad.npz")


def test_read_aflw2000_and_3dfaw(tmp_path):
    from scipy.io import savemat

    a = tmp_path / "AFLW2000"
    a.mkdir()
    p = _face_points(68, n=2, near_small=False)  # AFLW2000-3D: larger z = nearer
    for i in range(2):
        savemat(a / f"image{i:05d}.mat", {"pt3d_68": p[i].T})
    k = read_keypoints(a)
    assert [f.name for f in k.files] == ["image00000.jpg", "image00001.jpg"]
    np.testing.assert_allclose(k.points[..., 2], -p[..., 2])  # oriented: larger = farther
    f = tmp_path / "valid_lm"
    f.mkdir()
    (tmp_path / "valid_img").mkdir()
    q = _face_points(66, n=1, near_small=True)[0]
    (f / "x1_lm.csv").write_text("".join(f"{x},{y},{z}\n" for x, y, z in q))
    k = read_keypoints(f)
    assert k.files == [tmp_path / "valid_img" / "x1.jpg"] and k.points.shape == (1, 66, 3)
    (f / "x2_lm.csv").write_text("1,2,3\n")
    with pytest.raises(LapError, match="x2_lm.csv: a 3DFAW keypoint file has 66 rows"):
        read_keypoints(f)


def test_sample_at_points_is_bilinear_and_masks():
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    plane = (0.5 * xs + 2.0 * ys + 1.0)[None]  # bilinear interpolation of a plane is exact
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    pts = torch.tensor([[[2.25, 3.5], [0.0, 0.0], [6.9, 1.1]]])
    got = metrics.sample_at_points(plane, valid, pts)
    want = 0.5 * pts[0, :, 0] + 2.0 * pts[0, :, 1] + 1.0
    torch.testing.assert_close(got[0], want.double())
    valid[0, 3, 2] = False  # a neighbour of (2.25, 3.5) has no surface -> NaN
    got = metrics.sample_at_points(plane, valid, torch.tensor([[[2.25, 3.5], [-0.6, 4.0]]]))
    assert torch.isnan(got).all()  # and a point off the frame


def test_keypoint_correlation_and_depthnet_score():
    g = torch.randn(5, 66, generator=torch.Generator().manual_seed(0)).double()
    pred = 3.0 * g + torch.arange(5.0).view(5, 1)  # per-photo scale and offset: still perfect
    torch.testing.assert_close(metrics.keypoint_correlation(pred, g), torch.ones(5, dtype=torch.float64))
    score, per = metrics.depthnet_score(g, g)
    assert score == pytest.approx(66.0) and per.shape == (66,)
    const = g.mean(0, keepdim=True).expand_as(g)  # the same depths for every photo: no keypoint varies
    assert metrics.depthnet_score(const, g)[0] == pytest.approx(0.0)
    assert metrics.depthnet_score(-g, g)[0] == pytest.approx(66.0)  # DepthNet takes |corr|
    assert torch.isnan(metrics.keypoint_correlation(g[:, :4], g[:, :4])).all()  # fewer than 8 points: no score


def test_prealigned_matrix_maps_points_like_the_crop():
    """A dot drawn at a photo point lands, after crop_prealigned, where prealigned_matrix maps the point."""
    from lapdata.faces.align import crop_prealigned, prealigned_matrix, transform_points

    for w, h, rule in ((112, 112, "arcface112"), (90, 70, "resize")):
        img = np.zeros((h, w, 3), np.uint8)
        pt = np.array([[50.0, 40.0]])
        img[40, 50] = 255
        crop, _ = crop_prealigned(img, 224, rule)
        q = transform_points(prealigned_matrix(rule, w, h, 224), pt)[0]
        ys, xs = np.nonzero(crop[..., 0] > 40)
        wts = crop[ys, xs, 0].astype(float)
        centre = np.array([(xs * wts).sum() / wts.sum(), (ys * wts).sum() / wts.sum()])
        assert np.abs(centre - q).max() < 0.6, (rule, centre, q)


class _LookupModel(torch.nn.Module):
    """Stand-in: the input's ground-truth view depth, looked up by its pixels (canonical = view)."""

    image_size = S
    accepts_sets = False

    def __init__(self, table: dict, cfg):
        super().__init__()
        self.table, self.cfg = table, cfg

    def reconstruct(self, images: torch.Tensor, as_set: bool = False):
        from lapmodel.models.outputs import Reconstruction

        d = torch.stack([self.table[(x.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy().tobytes()]
                         for x in images])
        b = len(images)
        return Reconstruction(canon_depth=d, canon_albedo=images, canon_normal=torch.zeros(b, S, S, 3),
                              canon_shading=torch.ones(b, 1, S, S), canon_image=images, view=torch.zeros(b, 6),
                              light=torch.zeros(b, 4), recon_image=images, recon_depth=d, recon_mask=torch.ones(b, S, S))


def _photo_set(tmp_path: Path, n: int = 6):
    """n photos of 2 identities (S x S, crop = identity), depth = a bump that moves with a per-photo 'yaw'; 468
    keypoints sampled from that depth (pixel centres at +0.5 as keypoints3d writes them, z smaller = nearer)."""
    rng = np.random.default_rng(1)
    ys, xs = np.meshgrid(np.arange(S, dtype=np.float64), np.arange(S, dtype=np.float64), indexing="ij")
    table, files, pts = {}, [], []
    for i in range(n):
        cx = S / 2 + (i - n / 2) * 1.5
        depth = 1.0 - 0.1 * np.exp(-((xs - cx) ** 2 + (ys - S / 2) ** 2) / 40.0)
        img = rng.integers(0, 255, (S, S, 3), dtype=np.uint8)
        rel = f"set/{'ann' if i % 2 else 'bo'}/{i}.png"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / rel)
        table[img.tobytes()] = torch.from_numpy(depth).float()
        p = rng.uniform(4, S - 5, (468, 2))
        p[1] = (cx, S / 2)  # the nose tip on the bump's peak, the outline far
        z = 1.0 - 0.1 * np.exp(-((p[:, 0] - cx) ** 2 + (p[:, 1] - S / 2) ** 2) / 40.0)
        pts.append(np.concatenate([p + 0.5, 100 * (z[:, None] - 1.0)], 1))
        files.append(rel)
    np.savez(tmp_path / "kp.npz", files=np.array(files), points=np.stack(pts).astype(np.float32),
             size=np.full((n, 2), S, np.int32))
    return table


def test_evaluate_keypoints_end_to_end(tmp_path):
    from lapmodel.config import ModelConfig
    from lapmodel.evaluation.evaluate import EvaluateConfig, evaluate_checkpoint
    from lapmodel.evaluation.photos import format_keypoint_table

    table = _photo_set(tmp_path)
    model = _LookupModel(table, ModelConfig(image_size=S))
    res = evaluate_checkpoint(EvaluateConfig("x.pt", out=str(tmp_path / "e"), keypoints=str(tmp_path / "kp.npz"),
                                             aligned=True), model=model, progress=False)
    k = res.keypoints
    assert k["counts"] == {"photos": 6, "scored": 6, "skipped": 0, "identities": 2}
    assert k["rows"]["model"]["kp_corr"]["mean"] > 0.999  # the true depth: float16 keypoints only
    assert k["rows"]["model"]["depthnet"]["score"] > 0.9 * 468
    assert k["rows"]["mean_template"]["depthnet"]["score"] == pytest.approx(0.0, abs=1e-6)
    assert k["rows"]["prior"]["kp_corr"]["mean"] < k["rows"]["model"]["kp_corr"]["mean"]
    assert k["canon_spread"]["photos"] > 0  # the bump moves from photo to photo
    doc = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert doc["keypoints"]["rows"]["model"]["kp_corr"]["n"] == 6
    lines = (tmp_path / "e" / "keypoints.csv").read_text().splitlines()
    assert len(lines) == 7 and lines[0].startswith("file,identity")
    assert (tmp_path / "e" / "keypoints_examples.png").is_file()
    assert format_keypoint_table(k).row_count == 3
    only = evaluate_checkpoint(EvaluateConfig("x.pt", out=str(tmp_path / "o"), keypoints=str(tmp_path / "kp.npz"),
                                              identities=("ann",), aligned=True), model=model, progress=False)
    assert only.keypoints["counts"]["scored"] == 3
    with pytest.raises(LapError, match="photo-root"):
        evaluate_checkpoint(EvaluateConfig("x.pt", out=str(tmp_path / "m"), keypoints=str(tmp_path / "kp.npz"),
                                           photo_root=str(tmp_path / "nowhere")), model=model, progress=False)
    with pytest.raises(LapError, match="--shards .* --keypoints"):
        EvaluateConfig("x.pt", out=str(tmp_path / "x"))


def test_mean_face_is_the_other_identities_mean_in_the_same_pose():
    from lapmodel.evaluation.baselines import MeanFace

    mf = MeanFace()
    s = 4
    for ident, level in enumerate((1.0, 2.0, 4.0)):
        d = torch.full((2, s, s), level)
        d[1] += 10.0  # pose 30 is a different depth for everyone
        m = torch.ones(2, s, s, dtype=torch.bool)
        mf.add(ident, [0.0, 30.0], d, m)
    mf.add(3, [-60.0], torch.ones(1, s, s), torch.ones(1, s, s, dtype=torch.bool))  # a pose nobody else has
    pred, pmask, gt, gmask = mf.predictions()
    assert pred.shape == (6, s, s) and bool(pmask.all()) and bool(gmask.all())
    torch.testing.assert_close(pred[:, 0, 0], torch.tensor([3.0, 13.0, 2.5, 12.5, 1.5, 11.5], dtype=torch.float64))
    torch.testing.assert_close(gt[:, 0, 0], torch.tensor([1.0, 11.0, 2.0, 12.0, 4.0, 14.0], dtype=torch.float64))


def test_canon_spread_zero_for_one_map_and_scale_free():
    from lapmodel.evaluation.baselines import canon_spread

    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    base = 1.0 - 0.1 * (1 - xs**2 - ys**2).clamp(min=0)
    assert canon_spread(base.expand(5, -1, -1)) == pytest.approx(0.0, abs=1e-12)
    noisy = base + 0.01 * torch.randn(5, 16, 16, generator=torch.Generator().manual_seed(0))
    sp = canon_spread(noisy)
    assert sp > 0.01
    assert canon_spread(1.0 + 3 * (noisy - 1.0)) == pytest.approx(sp, rel=1e-5)  # relief and spread scale together
    assert math.isnan(canon_spread(base[None]))
