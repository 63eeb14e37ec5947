"""Metrics against hand-computed values (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from lapmodel.evaluation import metrics
def _sphere(b=2, s=16, dtype=torch.float64):
    y, x = torch.meshgrid(torch.linspace(-1, 1, s, dtype=dtype), torch.linspace(-1, 1, s, dtype=dtype), indexing="ij")
    r2 = (x**2 + y**2).clamp(max=0.99)
    d = 2.0 - 0.5 * torch.sqrt(1 - r2)
    return d.expand(b, s, s).clone()


def test_side_zero_for_scaled_pred():
    gt = _sphere()
    for c in (1.0, 0.37, 5.0):
        assert torch.allclose(metrics.side(c * gt, gt), torch.zeros(2, dtype=torch.float64), atol=1e-7)


def test_side_hand_computed():
    gt = torch.ones(1, 2, 2, dtype=torch.float64)
    pred = torch.tensor([[[1.0, math.e], [1.0, math.e]]], dtype=torch.float64)  # d = [0, 1, 0, 1]
    # mean(d^2) = 0.5, mean(d)^2 = 0.25 -> sqrt(0.25) = 0.5
    assert metrics.side(pred, gt).item() == pytest.approx(0.5, abs=1e-12)
    # masking keeps only the first column -> d = [0, 0] -> 0
    mask = torch.tensor([[[True, False], [True, False]]])
    assert metrics.side(pred, gt, mask).item() == pytest.approx(0.0, abs=1e-12)


def test_side_per_image_and_dtype():
    gt = _sphere(b=3)
    pred = gt.clone()
    pred[1] = pred[1] ** 2
    out = metrics.side(pred.float(), gt.float())
    assert out.shape == (3,) and out.dtype == torch.float64
    assert out[0] < 1e-6 and out[2] < 1e-6 and out[1] > 1e-3


def test_mad_values():
    n = torch.zeros(2, 4, 4, 3, dtype=torch.float64)
    n[..., 2] = -1
    assert torch.allclose(metrics.mad(n, n), torch.zeros(2, dtype=torch.float64), atol=1e-6)
    o = torch.zeros_like(n)
    o[..., 0] = 1
    assert torch.allclose(metrics.mad(n, o), torch.full((2,), 90.0, dtype=torch.float64))
    assert torch.allclose(metrics.mad(n, -n), torch.full((2,), 180.0, dtype=torch.float64))
    # half the pixels orthogonal, mask keeps all -> 45
    m = n.clone()
    m[:, :, :2] = o[:, :, :2]
    assert torch.allclose(metrics.mad(m, n), torch.full((2,), 45.0, dtype=torch.float64))
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :, 2:] = True
    assert torch.allclose(metrics.mad(m, n, mask), torch.zeros(2, dtype=torch.float64), atol=1e-6)


def test_ssim_identical_and_different():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 24, 24, generator=g)
    assert torch.allclose(metrics.ssim(a, a), torch.ones(2, dtype=torch.float64))
    b = torch.rand(2, 3, 24, 24, generator=g)
    s = metrics.ssim(a, b)
    assert (s < 0.2).all()
    mask = torch.zeros(2, 24, 24, dtype=torch.bool)
    mask[:, 4:20, 4:20] = True
    c = a.clone()
    c[..., :2] = 0.0  # only outside the masked region (after the window's reach)
    assert metrics.ssim(a, c, mask).sub(1).abs().max() < 0.05
    assert metrics.ssim(a, c).sub(1).abs().max() > metrics.ssim(a, c, mask).sub(1).abs().max()


def test_ssim_constant_images_closed_form():
    # constant images x, y: SSIM = (2xy + c1) / (x^2 + y^2 + c1)
    x, y = 0.3, 0.6
    a = torch.full((1, 1, 16, 16), x)
    b = torch.full((1, 1, 16, 16), y)
    c1 = 0.01**2
    want = (2 * x * y + c1) / (x * x + y * y + c1)
    assert metrics.ssim(a, b).item() == pytest.approx(want, rel=1e-6)


def test_depth_correlation():
    gt = _sphere()
    assert torch.allclose(metrics.depth_correlation(3 * gt + 1, gt), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(metrics.depth_correlation(-gt, gt), -torch.ones(2, dtype=torch.float64))
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64)
    b = torch.tensor([[[1.0, 3.0], [2.0, 5.0]]], dtype=torch.float64)
    # hand: a - 2.5 = [-1.5,-.5,.5,1.5], b - 2.75 = [-1.75,.25,-.75,2.25]; cov = 2.625+(-.125)+(-.375)+3.375 = 5.5
    # |a|^2 = 5, |b|^2 = 3.0625+.0625+.5625+5.0625 = 8.75 -> r = 5.5 / sqrt(43.75)
    assert metrics.depth_correlation(a, b).item() == pytest.approx(5.5 / math.sqrt(43.75), rel=1e-12)


def test_identity_cosine():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    out = metrics.identity_cosine(a, b)
    assert torch.allclose(out, torch.tensor([1.0, 1 / math.sqrt(2), 0.0], dtype=torch.float64))


def test_erode_and_eval_mask():
    m = torch.zeros(1, 7, 7, dtype=torch.bool)
    m[:, 1:6, 1:6] = True  # 5x5 block
    e1 = metrics.erode_mask(m, 1)
    assert e1.sum().item() == 9 and e1[0, 2:5, 2:5].all()
    assert metrics.erode_mask(m, 2).sum().item() == 1
    assert metrics.erode_mask(m, 0).sum().item() == 25
    full = torch.ones(1, 7, 7, dtype=torch.bool)
    assert metrics.erode_mask(full, 1).sum().item() == 25  # image border counts as outside
    assert metrics.eval_mask(full, m, 1).sum().item() == 9


def test_empty_mask_is_nan():
    gt = _sphere(b=1)
    assert torch.isnan(metrics.side(gt, gt, torch.zeros(1, 16, 16, dtype=torch.bool))).all()


# --------------------------------------------------------------------------------------------- evaluate on shards

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from lapmodel.models.outputs import Reconstruction  # noqa: E402

S = 32


def _scene(kind: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 (S,S,3), depth float32 NaN outside, mask bool) for a sphere or a tilted plane."""
    y, x = np.meshgrid(np.linspace(-1, 1, S), np.linspace(-1, 1, S), indexing="ij")
    r2 = x**2 + y**2
    mask = r2 < 0.75
    if kind == "sphere":
        d = 1.0 - 0.15 * np.sqrt(np.clip(1 - r2, 0, 1))
    else:
        d = 1.0 + 0.1 * x + 0.05 * (k % 3) * y
    d = np.where(mask, d, np.nan).astype(np.float32)
    rng = np.random.default_rng(k)
    img = (rng.random((S, S, 3)) * 200 + 20).astype(np.uint8)
    return img, d, mask


def _write_shards(root: Path, identities: int = 4, views: int = 3) -> tuple[str, dict]:
    import webdataset as wds

    from lapdata.dataset.sample import IdentitySample, View, encode_sample

    table = {}
    root.mkdir(parents=True, exist_ok=True)
    url = str(root / "test-000000.tar")
    with wds.TarWriter(url) as tw:
        for i in range(identities):
            vs = []
            for v in range(views):
                kind = "sphere" if i % 2 == 0 else "plane"
                img, d, m = _scene(kind, 10 * i + v)
                table[img.tobytes()] = (d, m)
                vs.append(View(image=img, depth=d, mask=m, meta={"photo_id": f"{i}-{v}", "pose": [10.0 * v, 0.0, 0.0]}))
            tw.write(encode_sample(IdentitySample(key=f"id{i}-00000000-000", identity=f"id{i}", split="test",
                                                  views=vs), image_ext="png"))
    return url, table


class _DepthModel(torch.nn.Module):
    """Stand-in: looks the input up and returns its true depth (``mode='true'``) or a wrong one."""

    image_size = S
    accepts_sets = True

    def __init__(self, table: dict, mode: str = "true"):
        super().__init__()
        self.table, self.mode = table, mode
        self.set_calls: list[int] = []

    def _one(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy().tobytes()
        d, m = self.table[key]
        d = torch.from_numpy(np.nan_to_num(d, nan=1.2))
        if self.mode == "wrong":  # inverted relief + a slope
            xs = torch.linspace(-1, 1, S).view(1, S)
            d = 2.0 - d + 0.3 * xs
        return d, torch.from_numpy(m).float()

    def reconstruct(self, images: torch.Tensor, as_set: bool = False) -> Reconstruction:
        if as_set:
            self.set_calls.append(len(images))
        b = len(images)
        dm = [self._one(x) for x in images]
        d = torch.stack([a for a, _ in dm])
        m = torch.stack([c for _, c in dm])
        z = torch.zeros(b, S, S, 3)
        return Reconstruction(canon_depth=d, canon_albedo=images, canon_normal=z, canon_shading=torch.ones(b, 1, S, S),
                              canon_image=images, view=torch.zeros(b, 6), light=torch.zeros(b, 4),
                              recon_image=images.clone(), recon_depth=d, recon_mask=m, fov_deg=10.0)


def test_evaluate_true_vs_wrong_depth(tmp_path):
    from lapmodel.evaluation.evaluate import EvaluateConfig, evaluate_checkpoint, format_table

    url, table = _write_shards(tmp_path / "shards")
    good = evaluate_checkpoint(EvaluateConfig("x.pt", shards=url, out=str(tmp_path / "good"), baselines=True, identity=False,
                                              set_sizes=(1, 2, 3)), model=_DepthModel(table), progress=False)
    row = good.rows["model"]
    assert row["side"]["n"] == 12 and good.counts == {"identities": 4, "views": 12, "views_with_gt": 12}
    assert row["side"]["mean"] < 0.01  # x1e-2 units: 16-bit quantisation only
    assert row["mad"]["mean"] < 0.5
    assert row["depth_corr"]["mean"] > 0.999
    assert row["ssim"]["mean"] == pytest.approx(1.0)
    assert good.rows["gt"]["side"]["mean"] < 1e-6 and good.rows["gt"]["mad"]["mean"] < 1e-3
    assert good.rows["flat"]["side"]["mean"] > 0.5 and good.rows["flat"]["mad"]["mean"] > 3.0
    assert sorted(good.set_size) == [1, 2, 3] and good.set_size[3]["sets"]["n"] == 4
    assert good.set_size[2]["side"]["mean"] < 0.01
    doc = json.loads((tmp_path / "good" / "eval.json").read_text())
    assert set(doc["rows"]) == {"model", "flat", "mean_face", "gt"}
    mf = doc["rows"]["mean_face"]  # every view: the other 3 identities' gt in the same pose, not its own depth
    assert mf["side"]["n"] == 12 and mf["side"]["mean"] > 10 * row["side"]["mean"]
    assert set(doc["canon_spread"]) == {"identities", "views"} and doc["canon_spread"]["identities"] > 0
    for f in ("set_size.png", "set_size.json", "examples.png"):
        assert (tmp_path / "good" / f).exists(), f
    assert format_table(good).row_count == 7  # model, flat, mean face, gt, sets of 1, 2, 3

    bad = evaluate_checkpoint(EvaluateConfig("x.pt", shards=url, out=str(tmp_path / "bad"), identity=False, set_sizes=(1, 4)),
                              model=_DepthModel(table, "wrong"), progress=False)
    assert any("no identity has 4 views" in n for n in bad.notes)
    assert bad.set_size[1]["side"]["n"] == 4 and bad.set_size[4]["side"]["n"] == 0
    assert bad.rows["model"]["side"]["mean"] > 2.0
    assert bad.rows["model"]["mad"]["mean"] > 10.0
    assert bad.rows["model"]["side"]["mean"] > 100 * row["side"]["mean"]


def test_evaluate_single_image_model_and_identity(tmp_path):
    from lapmodel.evaluation.evaluate import EvaluateConfig, evaluate_model
    from lapmodel.evaluation.evalset import iter_evalsets

    url, table = _write_shards(tmp_path / "shards", identities=2, views=2)

    class Single(_DepthModel):
        accepts_sets = False

    import importlib.util

    res = evaluate_model(Single(table), iter_evalsets(url, S), EvaluateConfig(shards=(url,), out=str(tmp_path / "o"),
                                                                              set_sizes=(1, 2), identity=True),
                         progress=False)
    assert res.set_size == {} and any("single images" in n for n in res.notes)
    idc = res.rows["model"]["id_cos"]
    # the identity embedder is dlib (the optional 'faces' extra): with it installed every view must be scored
    if all(importlib.util.find_spec(m) is not None for m in ("dlib", "face_recognition_models")):
        assert idc["n"] == 4 and idc["mean"] == pytest.approx(1.0, abs=1e-5), res.notes  # re-render = input
        assert not any("identity cosine skipped" in n for n in res.notes)
    else:
        assert idc["n"] == 0 and any("identity cosine skipped" in n for n in res.notes)


def test_evaluate_errors(tmp_path):
    from lapdata.core.errors import LapError
    from lapmodel.evaluation.evaluate import EvaluateConfig, evaluate_checkpoint

    with pytest.raises(LapError, match="checkpoint not found"):
        evaluate_checkpoint(EvaluateConfig(str(tmp_path / "none.pt"), shards="x.tar", out=str(tmp_path)))
    with pytest.raises(LapError, match="does not exist"):
        evaluate_checkpoint(EvaluateConfig("x.pt", shards=str(tmp_path / "missing.tar"), out=str(tmp_path)), model=_DepthModel({}),
                            progress=False)
    with pytest.raises(LapError, match="batch_size must be >= 1"):
        EvaluateConfig("x.pt", shards="x.tar", out=str(tmp_path), batch_size=0)


def test_evaluate_cli(tmp_path):
    from typer.testing import CliRunner

    from lapmodel.cli import app

    r = CliRunner().invoke(app, ["evaluate", "--checkpoint", "x.pt", "--shards", "x.tar", "--out", str(tmp_path),
                                 "--set-sizes", "1,a"])
    assert r.exit_code == 2 and "--set-sizes" in r.output
    from lapmodel.io import checkpoint as ckm
    from lapmodel.config import ModelConfig, TrainConfig
    from lapmodel.models.build import build_model

    cfg = TrainConfig(model=ModelConfig(image_size=64, nf=8, nf_encoder=8, zdim=16, zdim_conf=8))
    ck = ckm.save_checkpoint(tmp_path / "tiny.pt", model=build_model(cfg, training=False), config=cfg, step=0)
    url, _ = _write_shards(tmp_path / "shards", identities=2, views=2)  # 32 px shards, resized to 64
    r = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(ck), "--shards", url, "--out", str(tmp_path / "o"),
                                 "--baselines", "--no-identity", "--set-sizes", "1,2"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert doc["counts"]["views_with_gt"] == 4
    assert doc["rows"]["gt"]["side"]["mean"] < 1e-6
    assert any("single images" in n for n in doc["notes"])  # Unsup3D: no set-size curve


def test_evaluate_cli_lap_set_sizes(tmp_path):
    from typer.testing import CliRunner

    from lapmodel.io import checkpoint as ckm
    from lapmodel.cli import app
    from lapmodel.config import ModelConfig, TrainConfig
    from lapmodel.models.build import build_model

    cfg = TrainConfig(model=ModelConfig(kind="lap", image_size=64, nf=8, nf_encoder=8, zdim=16, zdim_conf=8))
    model = build_model(cfg, training=False)
    ck = ckm.save_checkpoint(tmp_path / "lap.pt", model=model, config=cfg, step=0)
    url, _ = _write_shards(tmp_path / "shards", identities=2, views=3)
    r = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(ck), "--shards", url, "--out", str(tmp_path / "o"),
                                 "--no-identity", "--set-sizes", "1,2,3"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "o" / "set_size.json").read_text())
    assert sorted(doc) == ["1", "2", "3"] and doc["3"]["sets"]["n"] == 2 and doc["3"]["side"]["n"] == 6
    assert (tmp_path / "o" / "set_size.png").exists()


def test_set_order():
    from lapmodel.evaluation.evalset import set_order

    a = set_order("alice", 6)
    assert sorted(a) == list(range(6)) and a == set_order("alice", 6)
    orders = {tuple(set_order(f"id{i}", 6)) for i in range(8)}
    assert len(orders) >= 4 and tuple(range(6)) not in orders  # seeded by the name: identities get their own order
