"""LAP model: stages, RCL weights, frozen parameters in stage 2, reconstruct from a set or one photo, training on
tiny shards through lapmodel.training.train (CPU, 32 px, tiny widths)."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lapdata.core.config import load_config
from lapdata.core.errors import LapError
from lapmodel.config import LAP_STAGES, StagesConfig, TrainConfig
from lapmodel.io.data import Batch
from lapmodel.models.lap import LAPModel
from tests.builders import write_tiny_shards

TINY_MODEL = {"kind": "lap", "image_size": 32, "nf": 8, "nf_encoder": 8, "zdim": 16, "zdim_conf": 8,
              "lap": {"refine_size": 32, "refine_nf": 4, "target_size": 32}}


def tiny_cfg(**over) -> TrainConfig:
    base = {"model": TINY_MODEL, "batch": 2, "steps": 2, "log_every": 1, "picture_every": 1000, "ckpt_every": 1000,
            "device": "cpu", "precision": "fp32",
            "data": {"min_set": 1, "max_set": 3, "workers": 0, "shuffle_buffer": 4, "shuffle_initial": 1,
                     "fields": ["image", "seg"]}}
    return load_config(TrainConfig, base, over)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_tiny_shards(tmp_path_factory.mktemp("lap_shards") / "data", identities=4, views=3)


def _batch(b=2, n=3, s=32, seg=True, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    valid = torch.zeros(b, n, dtype=torch.bool)
    for i in range(b):
        valid[i, : 1 + i % n] = True
    return Batch(images=torch.rand(b, n, 3, s, s, generator=g) * valid[:, :, None, None, None], valid=valid,
                 seg=torch.randint(0, 19, (b, n, s, s), generator=g) if seg else None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------- unit


def test_stage_parameters_partition():
    m = LAPModel(tiny_cfg().model)
    assert LAP_STAGES == ("aggregate", "personalize", "finetune") == tuple(f.name for f in fields(StagesConfig))
    agg, pers, fine = (set(map(id, m.trainable_parameters(s))) for s in LAP_STAGES)
    ref = set(map(id, m.refiner.parameters()))
    assert pers == ref and not (agg & ref) and fine == agg | ref
    m.set_stage("personalize")
    assert all(p.requires_grad == (id(p) in ref) for p in m.parameters())
    with pytest.raises(LapError, match="unknown LAP stage"):
        m.set_stage("stage2")
    no_ref = LAPModel(tiny_cfg(**{"model.lap.refiner": False}).model)
    assert no_ref.refiner is None
    with pytest.raises(LapError, match="needs the refiner"):
        no_ref.set_stage("personalize")


def test_rcl_weights_from_seg_hard_and_switch():
    m = LAPModel(tiny_cfg().model)
    b = _batch(seg=False)
    seg = torch.zeros(2, 3, 32, 32, dtype=torch.int64)
    seg[..., :16] = 1  # skin -> 1
    seg[..., 16:20] = 4  # l_eye -> 0.3
    seg[..., 20:] = 13  # hair -> 0
    seg[1, 1] = 0  # a view without labels keeps weight 1
    b.seg = seg
    b.hard = torch.zeros(2, 3, dtype=torch.bool)
    b.hard[1, 0] = True
    w, frac = m._loss_weights(b.images, b.valid, b.seg, b.hard)
    assert w.shape == (3, 32, 32)  # valid views: (0,0), (1,0), (1,1)
    torch.testing.assert_close(w[0, 0, :16], torch.ones(16))
    torch.testing.assert_close(w[0, 0, 16:20], torch.full((4,), 0.3))
    torch.testing.assert_close(w[0, 0, 20:], torch.zeros(12))
    assert (w[1] == 0).all()  # hard view skipped
    assert (w[2] == 1).all()  # no labels
    assert frac == pytest.approx(2 / 3)
    off = LAPModel(tiny_cfg(**{"model.lap.rcl": False}).model)
    w_off, frac_off = off._loss_weights(b.images, b.valid, b.seg, None)
    assert (w_off == 1).all() and frac_off == 0.0


def test_rcl_with_all_face_masks_equals_plain_eq3():
    torch.manual_seed(1)
    m = LAPModel(tiny_cfg().model)
    off = LAPModel(tiny_cfg(**{"model.lap.rcl": False}).model)
    off.load_state_dict(m.state_dict())
    b = _batch(b=2, n=2)
    b.seg = torch.ones_like(b.seg)  # all skin: M_re = 1
    l_rcl, _ = m.loss(m(b), b)
    l_off, _ = off.loss(off(b), b)
    torch.testing.assert_close(l_rcl, l_off)
    b.seg[..., :8] = 13  # hair on the left: the RCL loss now differs
    assert not torch.allclose(m.loss(m(b), b)[0], l_off)


def test_forward_shapes_and_losses_per_stage():
    m = LAPModel(tiny_cfg().model)
    b = _batch(b=2, n=2)
    mv = int(b.valid.sum())
    for stage in LAP_STAGES:
        m.set_stage(stage)
        out = m(b)
        assert out.canon_albedo.shape == (2, 3, 32, 32) and out.canon_depth.shape == (2, 32, 32)
        assert out.view.shape == (mv, 6) and out.light.shape == (mv, 4) and out.images.shape == (mv, 3, 32, 32)
        assert (out.agg is None) == (stage == "personalize")
        assert (out.ref is None) == (stage == "aggregate")
        loss, logs = m.loss(out, b)
        assert torch.isfinite(loss)
        assert ("agg_l1" in logs) == (stage != "personalize") and ("ref_l1" in logs) == (stage != "aggregate")
        loss.backward()
        grads = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert any(n.startswith("refiner.") for n in grads) == (stage != "aggregate")
        assert any(n.startswith("albedo_agg.") for n in grads) == (stage != "personalize")
        m.zero_grad(set_to_none=True)
    from lapmodel.viz.pictures import picture_grid, picture_panels

    panels = picture_panels(m, out, yaws=(0,))
    assert [n for n, _ in panels][:2] == ["input", "recon set"] and "recon pers." in [n for n, _ in panels]
    assert all(t.shape[1:] == (3, 32, 32) for _, t in panels)
    grid = picture_grid(panels)
    assert grid.dtype.name == "uint8" and grid.shape[0] > 2 * 32 and grid.shape[1] > len(panels) * 32


def test_reconstruct_set_and_single():
    m = LAPModel(tiny_cfg().model).eval()
    imgs = torch.rand(3, 3, 48, 48)
    rs = m.reconstruct(imgs, as_set=True)
    r1 = m.reconstruct(imgs, as_set=False)
    for r in (rs, r1):
        assert r.canon_depth.shape == (3, 32, 32) and r.recon_image.shape == (3, 3, 32, 32)
        assert r.canon_normal.shape == (3, 32, 32, 3) and r.view.shape == (3, 6) and r.recon_mask.shape == (3, 32, 32)
    # one identity from the set: the canonical maps are shared by its photos (no refiner trained yet). Checked on
    # the albedo: the depth starts flat (the prior for every photo, set or not), so it cannot tell the paths apart
    for i in (1, 2):
        torch.testing.assert_close(rs.canon_albedo[i], rs.canon_albedo[0])
        torch.testing.assert_close(rs.canon_depth[i], rs.canon_depth[0])
    assert not torch.allclose(r1.canon_albedo[0], r1.canon_albedo[2])  # single photos: their own albedo
    assert all((rs.canon_albedo[0] - r1.canon_albedo[i]).abs().max() > 1e-2 for i in range(3))  # the set's own
    torch.testing.assert_close(m.reconstruct(imgs[[2, 0, 1]], as_set=True).canon_albedo, rs.canon_albedo)  # order
    # a set of one is the single-image path
    one = m.reconstruct(imgs[:1], as_set=True)
    torch.testing.assert_close(one.canon_albedo, r1.canon_albedo[:1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one.canon_depth, r1.canon_depth[:1], rtol=1e-4, atol=1e-5)
    assert not bool(m.refiner_trained)


def test_bad_image_size():
    m = LAPModel(tiny_cfg().model)
    with pytest.raises(LapError, match="px"):
        m(_batch(s=16))


# --------------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_three_stages_train_on_tiny_shards(shards, tmp_path):
    from lapmodel.io.checkpoint import load_checkpoint, load_model
    from lapmodel.training.curriculum import train_stage

    phases = {"aggregate": {"phases": [{"name": "synthetic", "shards": [str(shards)], "steps": 2},
                                       {"name": "real", "shards": [str(shards)], "steps": 2}]},
              "personalize": {"phases": [{"name": "real", "steps": 2}]},
              "finetune": {"phases": [{"name": "real", "steps": 1}], "max_set": 2}}
    cfg = tiny_cfg(**{"out": str(tmp_path / "run"), "data.shards": [str(shards)], "stages": phases})
    logs: list[str] = []
    r1 = train_stage(cfg, "aggregate", progress=False, log=logs.append)
    assert r1.checkpoint == tmp_path / "run" / "aggregate" / "last.pt" and r1.checkpoint.exists()
    assert (tmp_path / "run/aggregate/synthetic/done.json").exists()
    assert (tmp_path / "run/aggregate/real/log.jsonl").exists()
    assert any("initialised" in line for line in logs)  # phase 2 starts from phase 1
    # a rerun skips the finished phases
    logs.clear()
    train_stage(cfg, "aggregate", progress=False, log=logs.append)
    assert sum("skipped" in line for line in logs) == 2

    # stage 2: frozen parameters stay bit-identical, the refiner changes
    before = load_checkpoint(r1.checkpoint)["model"]
    r2 = train_stage(replace(cfg, init=str(r1.checkpoint)), "personalize", progress=False, log=logs.append)
    after = load_checkpoint(r2.checkpoint)["model"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("refiner.") or k == "refiner_trained" for k in changed)
    assert any(k.startswith("refiner.") for k in changed)
    assert bool(after["refiner_trained"])

    r3 = train_stage(replace(cfg, init=str(r2.checkpoint)), "finetune", progress=False, log=logs.append)
    after3 = load_checkpoint(r3.checkpoint)["model"]
    assert not torch.equal(after3["albedo_agg.weight_head.0.weight"], after["albedo_agg.weight_head.0.weight"])
    rows = [json.loads(x) for x in (tmp_path / "run/finetune/real/log.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)

    model = load_model(r3.checkpoint)
    rec = model.reconstruct(torch.rand(3, 3, 32, 32), as_set=True)  # personalised (refiner trained)
    assert rec.recon_image.shape == (3, 3, 32, 32)
    assert not torch.allclose(rec.canon_depth[0], rec.canon_depth[1])  # per-photo refined depth


def test_train_stage_errors(tmp_path):
    from lapmodel.training.curriculum import train_stage

    cfg = tiny_cfg(out=str(tmp_path))
    with pytest.raises(LapError, match="unknown LAP stage"):
        train_stage(cfg, "stage1")
    with pytest.raises(LapError, match="no shards"):
        train_stage(cfg, "aggregate")
    with pytest.raises(LapError, match="model.kind: lap"):
        train_stage(replace(cfg, model=replace(cfg.model, kind="unsup3d")), "aggregate")


def test_train_command_stage_option(shards, tmp_path):
    """`lapmodel train --config X --stage aggregate` runs the stage's phases (CLI -> pipeline.train_stage)."""
    import yaml
    from typer.testing import CliRunner

    from lapdata.core.config import to_dict
    from lapmodel.cli import app

    cfg = tiny_cfg(**{"stages.aggregate.phases": [{"name": "only", "steps": 1}]})
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(to_dict(cfg)))
    res = CliRunner().invoke(app, ["train", "--config", str(p), "--stage", "aggregate", "--shards", str(shards),
                                   "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run/aggregate/only/done.json").exists() and (tmp_path / "run/aggregate/last.pt").exists()
    from lapmodel.io.checkpoint import load_checkpoint

    ck = load_checkpoint(tmp_path / "run/aggregate/last.pt")  # the stage's one phase, as the options said
    assert ck["step"] == 1 and ck["config"]["model"]["lap"]["stage"] == "aggregate"
    assert ck["config"]["data"]["shards"] == [str(shards)]
    assert json.loads((tmp_path / "run/aggregate/only/done.json").read_text())["step"] == 1
    res = CliRunner().invoke(app, ["train", "--config", str(p), "--stage", "stage9", "--shards", str(shards),
                                   "--out", str(tmp_path / "run")], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "'stage9' is not one of 'aggregate', 'personalize', 'finetune'" in res.output
