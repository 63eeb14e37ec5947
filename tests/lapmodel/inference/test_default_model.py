"""The model shipped in the package (lapmodel/weights/default.pt, made by pipelines/photos.yaml's pack step):
``lapmodel reconstruct photo.jpg`` with no --checkpoint reconstructs a real photo offline, on CPU."""

from __future__ import annotations

import json
import re

import numpy as np
import torch
from typer.testing import CliRunner

from lapmodel.cli import app
from lapmodel.io import pretrained
from lapmodel.io.checkpoint import load_checkpoint, load_model

REPO = pretrained.WEIGHTS_DIR.parents[1]


def test_the_packaged_model_is_small_loads_strictly_and_has_its_card():
    ck = pretrained.DEFAULT_CHECKPOINT
    assert ck.is_file() and ck.stat().st_size <= 25 * 2**20
    doc = load_checkpoint(ck)
    assert all(v.dtype == torch.float16 for v in doc["model"].values() if v.is_floating_point())
    assert "optimizer" not in doc
    model = load_model(ck)  # strict
    assert model.cfg.image_size == 64
    card = pretrained.MODEL_CARD.read_text()
    assert "research use only" in card and re.search(r"keypoint depth correlation \*\*0\.\d{3}\*\*", card)


def test_reconstruct_a_real_photo_with_no_checkpoint(tmp_path):
    """docs/samples/astronaut.jpg (a public-domain portrait): detected, aligned, reconstructed; in the photo's view
    the nose tip is nearer than both cheeks (larger depth = farther), as no flat or random depth would be."""
    photo = REPO / "docs" / "samples" / "astronaut.jpg"
    r = CliRunner().invoke(app, ["reconstruct", str(photo), "--out", str(tmp_path / "out"), "--turntable-frames", "4"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "out" / "reconstruct.json").read_text())
    assert rep["checkpoint"] == str(pretrained.DEFAULT_CHECKPOINT) and rep["done"] == 1
    face = tmp_path / "out" / "astronaut"
    assert (face / "turntable.gif").is_file() and (face / "mesh.glb").is_file()
    d = np.load(face / "view_depth.npy")
    s = d.shape[-1]
    nose, left, right = d[int(0.55 * s), s // 2], d[int(0.6 * s), int(0.2 * s)], d[int(0.6 * s), int(0.8 * s)]
    lo, hi = np.nanmin(d), np.nanmax(d)
    assert nose < min(left, right) - 0.1 * (hi - lo), (nose, left, right, lo, hi)
