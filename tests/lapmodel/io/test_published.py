"""Published weight files (lapmodel.io.published): Unsup3D's released checkpoints and the LAP demo's weights.

The layouts below are facts of the reference implementations (elliottwu/unsup3d ``unsup3d/networks.py`` and
``trainer.py``; TencentYoutuResearch/3DFaceReconstruction-LAP ``demo/networks.py`` and ``demo.py``): key names and
shapes of each network's state dict, as the released files hold them. The files are written as those projects
wrote them (torch 1.2 / 1.3 legacy serialization, optimizer states, ``epoch``, a pickled ``MetricsTrace``), then
loaded strictly and reconstructed through the CLI. The agreement of the outputs with the reference code itself is
measured in BENCHMARKS.md ("Published files checked against their reference implementations").
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lapdata.core.errors import LapError
from lapmodel.io import published
from lapmodel.io.checkpoint import import_published, load_checkpoint, load_model
from lapmodel.models import photogeo
from tests.builders import write_shards


def table(text: str, **replace: str) -> dict[str, tuple[int, ...]]:
    """``"key:d0,d1 key:d0"`` -> {key: shape}; ``replace`` swaps the shape of single keys (key with / for .)."""
    out = {k: tuple(int(d) for d in s.split(",")) for k, s in (t.split(":") for t in text.split())}
    for k, s in replace.items():
        k = k.replace("/", ".")
        assert k in out
        out[k] = tuple(int(d) for d in s.split(","))
    return out


# ----------------------------------------------------------------------------- Unsup3D's 64 px networks (facts)
U_EDDECONV = """
network.0.weight:64,3,4,4 network.1.weight:64 network.1.bias:64 network.3.weight:128,64,4,4 network.4.weight:128
network.4.bias:128 network.6.weight:256,128,4,4 network.7.weight:256 network.7.bias:256
network.9.weight:512,256,4,4 network.11.weight:256,512,4,4 network.13.weight:256,512,4,4
network.15.weight:512,512,3,3 network.17.weight:512,256,4,4 network.18.weight:256 network.18.bias:256
network.20.weight:256,256,3,3 network.21.weight:256 network.21.bias:256 network.23.weight:256,128,4,4
network.24.weight:128 network.24.bias:128 network.26.weight:128,128,3,3 network.27.weight:128
network.27.bias:128 network.29.weight:128,64,4,4 network.30.weight:64 network.30.bias:64
network.32.weight:64,64,3,3 network.33.weight:64 network.33.bias:64 network.36.weight:64,64,3,3
network.37.weight:64 network.37.bias:64 network.39.weight:64,64,5,5 network.40.weight:64 network.40.bias:64
network.42.weight:1,64,5,5"""
U_ENCODER = """
network.0.weight:32,3,4,4 network.2.weight:64,32,4,4 network.4.weight:128,64,4,4 network.6.weight:256,128,4,4
network.8.weight:256,256,4,4 network.10.weight:4,256,1,1"""
U_CONFNET = """
network.0.weight:64,3,4,4 network.1.weight:64 network.1.bias:64 network.3.weight:128,64,4,4 network.4.weight:128
network.4.bias:128 network.6.weight:256,128,4,4 network.7.weight:256 network.7.bias:256
network.9.weight:512,256,4,4 network.11.weight:128,512,4,4 network.13.weight:128,512,4,4
network.15.weight:512,256,4,4 network.16.weight:256 network.16.bias:256 network.18.weight:256,128,4,4
network.19.weight:128 network.19.bias:128 out_net1.0.weight:128,64,4,4 out_net1.1.weight:64 out_net1.1.bias:64
out_net1.3.weight:64,64,4,4 out_net1.4.weight:64 out_net1.4.bias:64 out_net1.6.weight:2,64,5,5
out_net2.0.weight:2,128,3,3"""
UNSUP3D = {"netD": table(U_EDDECONV), "netA": table(U_EDDECONV, **{"network/42/weight": "3,64,5,5"}),
           "netL": table(U_ENCODER), "netV": table(U_ENCODER, **{"network/10/weight": "6,256,1,1"}),
           "netC": table(U_CONFNET)}

# ----------------------------------------------------------------------------- the LAP demo's 128 px networks (facts)
L_AGGREGATION = """
network1.0.weight:64,3,4,4 network1.1.weight:64 network1.1.bias:64 network1.3.weight:64,64,4,4
network1.4.weight:64 network1.4.bias:64 network1.6.weight:128,64,4,4 network1.7.weight:128 network1.7.bias:128
network1.9.weight:256,128,4,4 network1.10.weight:256 network1.10.bias:256 network1.12.weight:512,256,3,3
network1.13.weight:512 network1.13.bias:512 network1.15.weight:256,512,3,3 network1.16.weight:256
network1.16.bias:256 network1.18.weight:512,256,4,4 network1.20.weight:1024,512,3,3 network1.21.weight:1024
network1.21.bias:1024 network1.23.weight:512,1024,3,3 network1.24.weight:512 network1.24.bias:512
network1.26.weight:1024,512,4,4 combine_net.0.weight:512,512,1,1 combine_net.2.weight:512,512,1,1
network.0.weight:512,512,4,4 network.2.weight:512,256,4,4 network.3.weight:256 network.3.bias:256
network.5.weight:256,128,4,4 network.6.weight:128 network.6.bias:128 network.8.weight:128,64,4,4
network.9.weight:64 network.9.bias:64 network.12.weight:64,64,3,3 network.13.weight:64 network.13.bias:64
network.16.weight:64,64,3,3 network.17.weight:64 network.17.bias:64 network.19.weight:64,64,5,5
network.20.weight:64 network.20.bias:64 network.22.weight:1,64,5,5"""
L_REFINING = """
network_consist.0.weight:64,1,4,4 network_consist.1.weight:64 network_consist.1.bias:64
network_consist.3.weight:64,64,4,4 network_consist.4.weight:64 network_consist.4.bias:64
network_consist.6.weight:128,64,4,4 network_consist.7.weight:128 network_consist.7.bias:128
network_consist.9.weight:256,128,4,4 network_consist.10.weight:256 network_consist.10.bias:256
network_consist.12.weight:512,512,3,3 network_consist.13.weight:512 network_consist.13.bias:512
network_consist.15.weight:256,512,3,3 network_consist.16.weight:256 network_consist.16.bias:256
network_consist.18.weight:512,256,4,4 network_consist.20.weight:1024,1024,3,3 network_consist.21.weight:1024
network_consist.21.bias:1024 network_consist.23.weight:512,1024,3,3 network_consist.24.weight:512
network_consist.24.bias:512 network_consist.26.weight:512,512,4,4 network_consist.28.weight:512,1024,1,1
network_consist.30.weight:512,512,1,1 network_inject.0.weight:32,3,4,4 network_inject.1.weight:32
network_inject.1.bias:32 network_inject.3.weight:64,32,4,4 network_inject.4.weight:64 network_inject.4.bias:64
network_inject.6.weight:128,64,4,4 network_inject.7.weight:128 network_inject.7.bias:128
network_inject.9.weight:256,128,4,4 network_inject.10.weight:256 network_inject.10.bias:256
network_inject.12.weight:512,256,4,4 network_inject.14.weight:512,512,4,4 network_decoder.0.weight:512,512,4,4
network_decoder.2.weight:512,256,4,4 network_decoder.3.weight:256 network_decoder.3.bias:256
network_decoder.5.weight:256,128,4,4 network_decoder.6.weight:128 network_decoder.6.bias:128
network_decoder.8.weight:128,64,4,4 network_decoder.9.weight:64 network_decoder.9.bias:64
network_decoder.12.weight:64,64,3,3 network_decoder.13.weight:64 network_decoder.13.bias:64
network_decoder.16.weight:64,64,3,3 network_decoder.17.weight:64 network_decoder.17.bias:64
network_decoder.19.weight:64,64,5,5 network_decoder.20.weight:64 network_decoder.20.bias:64
network_decoder.22.weight:1,64,5,5 fusion2_1.0.weight:64,128,3,3 fusion2_1.1.weight:64 fusion2_1.1.bias:64
fusion2_2.0.weight:64,128,3,3 fusion2_2.1.weight:64 fusion2_2.1.bias:64 fusion3_1.0.weight:64,128,3,3
fusion3_1.1.weight:64 fusion3_1.1.bias:64 fusion3_2.0.weight:64,128,3,3 fusion3_2.1.weight:64
fusion3_2.1.bias:64"""
L_ENCODER = """
network.0.weight:32,3,4,4 network.2.weight:32,32,4,4 network.4.weight:64,32,4,4 network.6.weight:128,64,4,4
network.8.weight:256,128,4,4 network.10.weight:256,256,4,4 network.12.weight:4,256,1,1"""
LAP_DEMO = {"netD": table(L_AGGREGATION), "netA": table(L_AGGREGATION, **{"network/22/weight": "3,64,5,5"}),
            "netL": table(L_ENCODER), "netV": table(L_ENCODER, **{"network/12/weight": "6,256,1,1"}),
            "refine_netD": table(L_REFINING),
            "refine_netA": table(L_REFINING, **{"network_consist/0/weight": "64,3,4,4",
                                                "network_decoder/22/weight": "3,64,5,5"})}


def official_order(keys) -> list[str]:
    """Keys of an official Sequential-based network in forward order (``network.<i>`` by i, then the heads)."""
    head = lambda k: k.split(".")[0]  # noqa: E731
    return sorted(keys, key=lambda k: (head(k) != "network", head(k), int(k.split(".")[1])))  # stable: weight, bias


def metrics_trace_module(monkeypatch) -> type:
    """A class pickled as ``unsup3d.meters.MetricsTrace`` (the object Unsup3D's trainer saves as metrics_trace)."""
    mod = types.ModuleType("unsup3d.meters")

    class MetricsTrace:
        def __init__(self):
            self.data = {"train": [{"loss": 0.25}], "val": [{"loss": 0.5}]}

    MetricsTrace.__module__, MetricsTrace.__qualname__ = "unsup3d.meters", "MetricsTrace"
    mod.MetricsTrace = MetricsTrace
    monkeypatch.setitem(sys.modules, "unsup3d", types.ModuleType("unsup3d"))
    monkeypatch.setitem(sys.modules, "unsup3d.meters", mod)
    return MetricsTrace


def released_unsup3d(path: Path, monkeypatch, nets=("netD", "netA", "netL", "netV", "netC"), seed: int = 0,
                     dense: bool = True) -> dict:
    """Random weights in Unsup3D's released layout, saved as its trainer saves (torch 1.2 legacy format).
    ``dense=False``: one random value per tensor, stored broadcast (a small file with the same layout)."""
    g = torch.Generator().manual_seed(seed)
    rand = (lambda s: torch.randn(s, generator=g) * 0.05) if dense else \
        (lambda s: (torch.randn(1, generator=g) * 0.05).expand(s))  # noqa: E731
    doc: dict = {n: {k: rand(s) for k, s in UNSUP3D[n].items()} for n in nets}
    for n in nets:  # Adam states as torch.optim saves them
        doc[n.replace("net", "optimizer")] = {"state": {}, "param_groups": [
            {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 5e-4, "amsgrad": False,
             "params": list(range(len(doc[n])))}]}
    doc["metrics_trace"] = metrics_trace_module(monkeypatch)()
    doc["epoch"] = 30
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(doc, path, _use_new_zipfile_serialization=False)
    return doc


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        path = tmp_path_factory.mktemp("u3d") / "pretrained_celeba" / "checkpoint030.pth"
        doc = released_unsup3d(path, mp)
    finally:
        mp.undo()
    return path, doc


def square_photo(path: Path, size: int) -> Path:
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([180 * (1 - (x - 0.5) ** 2), 120 + 60 * y, 100 + 50 * x], -1).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


# ----------------------------------------------------------------------------- Unsup3D


def test_unsup3d_release_loads_strictly_into_unsup3d(celeba):
    path, doc = celeba
    ck = load_checkpoint(path)
    model = load_model(path)
    assert type(model).__name__ == "Unsup3D" and ck["step"] == 0
    assert ck["extra"]["published"] == {"source": str(path), "layout": "unsup3d", "experiment": "celeba"}
    ours = model.state_dict()
    assert set(ours) == set(ck["model"]) and len(ours) == sum(len(UNSUP3D[n]) for n in UNSUP3D) == 114
    for n in UNSUP3D:  # the file's tensors in the official forward order are our network's, in our forward order
        theirs = [doc[n][k] for k in official_order(doc[n])]
        mine = [v for k, v in ours.items() if k.startswith(n + ".")]
        assert len(theirs) == len(mine)
        assert all(torch.equal(a, b) for a, b in zip(theirs, mine)), n
    # and a few named places
    assert torch.equal(ours["netD.encoder.stages.4.0.weight"], doc["netD"]["network.11.weight"])
    assert torch.equal(ours["netA.decoder.network.29.weight"], doc["netA"]["network.42.weight"])
    assert torch.equal(ours["netC.network.6.bias"], doc["netC"]["network.19.bias"])
    assert torch.equal(ours["netV.network.10.weight"], doc["netV"]["network.10.weight"])
    c = model.cfg  # the official experiment and mappings
    assert (c.image_size, c.zdim, c.depth_prior, c.depth_init, c.lam_depth_sm, c.uncovered, c.border_columns,
            c.z_translation_range, c.use_conf) == (64, 256, 0.0, "default", 0.0, "ignore", 2, 0.0, True)


def test_unsup3d_reconstructs_a_photo_through_the_cli(celeba, tmp_path):
    from lapmodel.cli import app

    path, _ = celeba
    photo = square_photo(tmp_path / "face.png", 64)
    r = CliRunner().invoke(app, ["reconstruct", str(photo), "--checkpoint", str(path), "--out", str(tmp_path / "o"),
                                 "--no-progress", "--turntable-frames", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    depth = np.load(tmp_path / "o" / "face" / "depth.npy")
    assert depth.shape == (64, 64) and np.isfinite(depth).all()
    assert np.all(depth[:, :2] == np.float32(1.04)) and np.all(depth[:, -2:] == np.float32(1.04))  # official border
    assert 0.9 <= depth[:, 2:-2].min() and depth[:, 2:-2].max() <= 1.1
    for f in ("recon.png", "normal.png", "mesh.obj", "turntable.gif"):
        assert (tmp_path / "o" / "face" / f).stat().st_size > 0


def test_unsup3d_experiment_from_path_or_declared(tmp_path, monkeypatch, caplog):
    cat = tmp_path / "pretrained_cat" / "checkpoint030.pth"
    released_unsup3d(cat, monkeypatch, seed=1, dense=False)
    assert load_model(cat).cfg.z_translation_range == 0.1  # experiments/train_cat.yml
    car = tmp_path / "pretrained_syncar" / "checkpoint100.pth"
    released_unsup3d(car, monkeypatch, nets=("netD", "netA", "netL", "netV"), seed=2, dense=False)  # no netC
    m = load_model(car)
    assert m.netC is None and (m.cfg.border_depth, m.cfg.min_diff_light, m.cfg.lam_depth_sm) == (1.08, 0.5, 0.1)
    plain = tmp_path / "downloads" / "checkpoint030.pth"
    released_unsup3d(plain, monkeypatch, seed=3, dense=False)
    assert load_checkpoint(plain)["extra"]["published"]["experiment"] == "celeba"  # assumed, and said
    assert any("celeba settings assumed" in r.getMessage() for r in caplog.records)
    rep = import_published(published.ImportConfig(str(plain), str(tmp_path / "imp" / "cat.pt"), "cat"))
    assert rep["experiment"] == "cat"
    assert load_model(tmp_path / "imp" / "cat.pt").cfg.z_translation_range == 0.1


@pytest.mark.slow
def test_import_then_finetune_and_evaluate(celeba, tmp_path):
    import dataclasses

    from lapdata.core.config import load_config
    from lapmodel.config import TrainConfig
    from lapmodel.training.train import train

    path, _ = celeba
    rep = import_published(published.ImportConfig(str(path), str(tmp_path / "u3d.pt")))
    cfg = load_config(TrainConfig, rep["config"])  # the official config, init = the imported checkpoint
    assert cfg.init == str(tmp_path / "u3d.pt") and cfg.model.uncovered == "ignore"
    shards = write_shards(tmp_path / "shards", n_shards=1, ids_per_shard=2, views=1, size=64, smooth=True,
                          extras=True)
    cfg = dataclasses.replace(cfg, steps=1, batch=2, device="cpu", out=str(tmp_path / "ft"), perceptual="none",
                              optim=dataclasses.replace(cfg.optim, lr=0.0), picture_every=100, log_every=1,
                              data=dataclasses.replace(cfg.data, shards=tuple(shards), workers=0, shuffle_buffer=2,
                                                       shuffle_initial=1, fields=("image",)))
    res = train(cfg, progress=False)
    after, before = load_checkpoint(res.checkpoint)["model"], load_checkpoint(path)["model"]
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)  # lr 0: unchanged

    from lapmodel.evaluation.evaluate import EvaluateConfig, evaluate_checkpoint

    ev = evaluate_checkpoint(EvaluateConfig(str(path), shards=tuple(shards), out=str(tmp_path / "eval"), identity=False,
                                            device="cpu"), progress=False)
    assert ev.counts == {"identities": 2, "views": 2, "views_with_gt": 2}
    assert math.isfinite(ev.rows["model"]["side"]["mean"]) and (tmp_path / "eval" / "eval.json").exists()


def test_unsup3d_official_mappings_closed_form():
    cfg = published.unsup3d_config("celeba").model
    raw = torch.zeros(1, 64, 64)
    raw[:, :, :32], raw[:, :, 32:] = 0.3, -0.3  # mean 0: d = tanh(+-0.3)
    d = photogeo.map_depth(raw, cfg)
    assert torch.allclose(d[0, 5, 10], torch.tensor(1 + 0.1 * math.tanh(0.3)))
    assert torch.allclose(d[0, 5, 40], torch.tensor(1 - 0.1 * math.tanh(0.3)))
    assert torch.all(d[..., :2] == 0.7 * 1.1 + 0.3 * 0.9) and torch.all(d[..., -2:] == 0.7 * 1.1 + 0.3 * 0.9)
    assert d[0, 5, 2] != d[0, 5, 1]  # only 2 columns pinned
    light = photogeo.map_light(torch.tensor([[0.2, -0.4, 0.5, -0.5]]), cfg)
    torch.testing.assert_close(light, torch.tensor([[0.6, 0.3, 0.5, -0.5]]))
    car = published.unsup3d_config("syncar").model
    torch.testing.assert_close(photogeo.map_light(torch.tensor([[0.2, -0.4, 0.5, -0.5]]), car),
                               torch.tensor([[0.6, 0.5 + 0.5 * 0.3, 0.5, -0.5]]))
    raw_view = torch.tensor([[0.5, -0.5, 0.25, 1.0, -1.0, 0.5]])
    r30, r15 = math.radians(30), math.radians(15)
    torch.testing.assert_close(photogeo.map_view(raw_view, cfg), torch.tensor([[r30, -r30, r15, 0.1, -0.1, 0.0]]))
    torch.testing.assert_close(photogeo.map_view(raw_view, published.unsup3d_config("cat").model),
                               torch.tensor([[r30, -r30, r15, 0.1, -0.1, 0.05]]))


def test_lap_demo_border_and_corner_closed_form():
    cfg = published.lap_demo_config().model
    d = photogeo.map_depth(torch.zeros(1, 1, 128, 128), cfg)  # tanh(0) = 0 -> the middle of the range
    pinned = torch.zeros(128, 128, dtype=torch.bool)
    pinned[:, :2] = pinned[:, -2:] = True
    pinned[-20:, :15] = True  # demo.py: canon_depth[:, -20:, :15] = border_depth
    assert torch.all(d[0][pinned] == 1.05) and torch.allclose(d[0][~pinned], torch.tensor(1.0))


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("edit, message", [
    (lambda doc: doc.update(netZ={"w": torch.zeros(1)}), r"unrecognised entry \['netZ'\]"),
    (lambda doc: doc["netL"].update({"network.10.weight": torch.zeros(5, 256, 1, 1)}),
     r"netL\.network\.10\.weight has shape \(5, 256, 1, 1\)"),
    (lambda doc: doc["netD"].pop("network.42.weight"), r"netD lacks 1 weight"),
    (lambda doc: doc["netA"].update({"network.43.weight": torch.zeros(3)}), r"netA has key 'network\.43\.weight'"),
    (lambda doc: doc["netC"].update({"out_net3.0.weight": torch.zeros(3)}), r"netC has key 'out_net3\.0\.weight'"),
])
def test_unrecognised_layouts_are_one_line_errors(tmp_path, edit, message):
    doc = {n: {k: torch.zeros(s) for k, s in UNSUP3D[n].items()} for n in UNSUP3D}
    edit(doc)
    path = tmp_path / "checkpoint030.pth"
    torch.save(doc, path)
    with pytest.raises(LapError, match=message) as e:
        load_model(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_lap_demo_without_a_refiner_is_refused(tmp_path):
    doc = {n: {k: torch.zeros(1).expand(s) for k, s in LAP_DEMO[n].items()} for n in LAP_DEMO if n != "refine_netA"}
    path = tmp_path / "checkpoint300.pth"
    torch.save(doc, path)
    with pytest.raises(LapError, match=r"checkpoint300\.pth: no refine_netA state dict"):
        load_checkpoint(path)


def test_other_files_are_refused_without_running_code(tmp_path, monkeypatch):
    plain = tmp_path / "dict.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    with pytest.raises(LapError, match="nor a published Unsup3D / LAP demo file"):
        load_checkpoint(plain)
    mod = types.ModuleType("evil")

    class Payload:
        def __reduce__(self):
            return (print, ("ran code from the file",))

    mod.Payload = Payload
    Payload.__module__, Payload.__qualname__ = "evil", "Payload"
    monkeypatch.setitem(sys.modules, "evil", mod)
    bad = tmp_path / "evil.pth"
    torch.save({"netD": {}, "netA": {}, "netL": {}, "netV": {}, "x": Payload()}, bad)
    with pytest.raises(LapError, match=r"evil\.pth: cannot be read as a checkpoint \(UnpicklingError"):
        load_checkpoint(bad)


# ----------------------------------------------------------------------------- LAP demo


@pytest.mark.slow
def test_lap_demo_loads_strictly_and_reconstructs_through_the_cli(tmp_path):
    """The demo's checkpoint300.pth layout (six networks, 258 tensors, 145 M weights) with one distinct value per
    tensor (stored broadcast, so the file stays small) -> LAPModel(arch official): every tensor in its place."""
    from lapmodel.cli import app

    values, doc = {}, {}
    for i, (n, tab) in enumerate((n, t) for n, t in LAP_DEMO.items()):
        doc[n] = {}
        for j, (k, s) in enumerate(tab.items()):
            v = (1 + 1000 * i + j) * 1e-6
            doc[n][k] = torch.full((1,), v).expand(s)
            values[(n, k)] = v
    path = tmp_path / "demo" / "checkpoint300.pth"
    path.parent.mkdir()
    torch.save(doc, path, _use_new_zipfile_serialization=False)
    model = load_model(path)
    assert type(model).__name__ == "LAPModel" and model.cfg.lap.arch == "official" and bool(model.refiner_trained)
    ours = model.state_dict()
    prefix = {"netD": "depth_agg", "netA": "albedo_agg", "netL": "light_net", "netV": "view_net",
              "refine_netA": "refiner.albedo", "refine_netD": "refiner.depth"}
    assert len(ours) == 1 + sum(len(t) for t in LAP_DEMO.values()) == 259  # + refiner_trained
    for (n, k), v in values.items():
        t = ours[f"{prefix[n]}.{k}"]
        assert t.shape == LAP_DEMO[n][k] and torch.all(t == torch.tensor(v)), (n, k)
    del model, ours
    photo = square_photo(tmp_path / "face.png", 128)
    r = CliRunner().invoke(app, ["reconstruct", str(photo), "--checkpoint", str(path), "--out", str(tmp_path / "o"),
                                 "--no-progress", "--turntable-frames", "0", "--no-mesh", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    depth = np.load(tmp_path / "o" / "face" / "depth.npy")
    assert depth.shape == (128, 128) and np.isfinite(depth).all() and np.all(depth[-20:, :15] == np.float32(1.05))
