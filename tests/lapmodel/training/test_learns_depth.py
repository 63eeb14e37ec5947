"""A tiny rung 1 of the quality ladder (benchmarks/quality.py): Unsup3D-re trained on a few procedural identities
must predict depth that beats a flat plane on them, through the same commands a user runs (build-synthetic ->
train -> evaluate). This is the test that failed for every model of the first landing (depth worse than flat)."""

from __future__ import annotations

import pytest
import torch

from lapdata.core.config import load_config
from lapdata.synthetic.build import SynthConfig, run_synthetic
from lapmodel.config import TrainConfig
from lapmodel.evaluation.evaluate import EvaluateConfig, evaluate_checkpoint
from lapmodel.training.train import train

IDS, POSES, SIZE, STEPS = 4, 9, 32, 300
# Measured (BENCHMARKS.md, "quality ladder", CI rung; ~85 CPU-s, one thread): MAD 0.85 / 0.75 and SIDE 0.84 / 1.00
# of flat for seeds 0 / 1; the first landing's models scored MAD 1.9x and SIDE 2.5x flat on 4 procedural identities
# at 32 px. The normals must beat flat by 10 %; SIDE (sensitive to the relief's amplitude, which still varies by seed
# at this budget) must stay within 1.25x flat. One thread: the trajectory of so small a run depends on the float
# summation order, so the thread count is fixed for a reproducible result.
MAX_MAD_RATIO = 0.9
MAX_SIDE_RATIO = 1.25

TINY_U3D = {"model.kind": "unsup3d", "model.image_size": SIZE, "model.nf": 16, "model.nf_encoder": 16,
            "model.zdim": 64, "model.zdim_conf": 32, "model.lam_perc": 0.0, "vgg_weights": None,
            "model.depth_prior": 0.5,  # procedural heads: ~2/3 of the relief of scanned faces, as in the quickstart
            "data.workers": 0, "data.fields": ["image"], "data.shuffle_buffer": 64, "data.shuffle_initial": 16,
            "optim.lr": 5e-4, "batch": 16, "device": "cpu", "precision": "fp32", "log_every": 50,
            "picture_every": 10_000, "ckpt_every": 10_000, "keep_every": None}


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    out = tmp_path_factory.mktemp("faces")
    run_synthetic(SynthConfig(backend="procedural", out=str(out), identities=IDS, poses=POSES, size=SIZE, seed=3,
                              fractions=(1.0, 0.0, 0.0), id_filter="none", device="cpu", image_ext="png",
                              progress=False))
    return str(out / "shards")


def run(tmp_path, shards, steps: int, **over):
    cfg = load_config(TrainConfig, {}, overrides={**TINY_U3D, "data.shards": [shards], "steps": steps,
                                                  "out": str(tmp_path / "run"), **over})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = train(cfg, progress=False, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    r = evaluate_checkpoint(EvaluateConfig(str(res.checkpoint), shards=shards, out=str(tmp_path / "eval"), baselines=True,
                                           identity=False), progress=False)
    m, f = r.rows["model"], r.rows["flat"]
    return m["side"]["mean"] / f["side"]["mean"], m["mad"]["mean"] / f["mad"]["mean"]


@pytest.mark.slow
def test_tiny_unsup3d_beats_a_flat_plane(tmp_path, faces):
    side_ratio, mad_ratio = run(tmp_path, faces, steps=STEPS)
    assert mad_ratio < MAX_MAD_RATIO and side_ratio < MAX_SIDE_RATIO, (side_ratio, mad_ratio)
