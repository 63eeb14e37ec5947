"""lapdata.core.pictures (the one picture module) with hand-computed values, lapmodel.viz.pictures (turntables) and
lapmodel.viz.curves (training curves)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lapdata.core import pictures as P

# matplotlib's viridis ends: viridis(1.0) = (0.993248, 0.906157, 0.143936), viridis(0.0) = (0.267004, 0.004874,
# 0.329415); x 255 + 0.5, floored
NEAR_RGB = (253, 231, 37)
FAR_RGB = (68, 1, 84)


def test_to_uint8_layouts():
    assert P.to_uint8(torch.ones(3, 5, 4)).shape == (5, 4, 3)
    assert P.to_uint8(np.zeros((5, 4))).shape == (5, 4, 3)
    a = P.to_uint8(np.array([[0.0, 0.5, 1.0, 2.0, np.nan, -1.0]]))
    assert a[0, :, 0].tolist() == [0, 128, 255, 255, 0, 0]  # round(x * 255), clipped, NaN -> 0
    u = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert np.array_equal(P.to_uint8(u), u)
    with pytest.raises(ValueError):
        P.to_uint8(np.zeros((2, 3, 4, 5)))


def test_depth_colormap_endpoints_and_grey_background():
    assert P.DEPTH_CMAP == "viridis"
    d = np.array([[1.0, 2.0, 3.0], [np.nan, 2.0, 5.0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
    col = P.depth_colors(d, mask, vrange=(1.0, 3.0))
    assert col.dtype == np.uint8 and col.shape == (2, 3, 3)
    assert tuple(col[0, 0]) == NEAR_RGB  # near = bright
    assert tuple(col[0, 2]) == FAR_RGB  # far = dark
    assert tuple(col[1, 0]) == P.BACKGROUND == (128, 128, 128)  # NaN: no surface
    assert tuple(col[1, 2]) == P.BACKGROUND  # outside the mask
    assert np.array_equal(col[0, 1], col[1, 1])  # the middle, twice
    assert sum(col[0, 0].astype(int)) > sum(col[0, 1].astype(int)) > sum(col[0, 2].astype(int))  # monotone lightness
    # default range: the 1st..99th percentile of the valid pixels; beyond it clipped to the ends
    ramp = np.linspace(1.0, 2.0, 101)[None]
    auto = P.depth_colors(ramp)
    assert tuple(auto[0, 0]) == NEAR_RGB and tuple(auto[0, -1]) == FAR_RGB
    assert P.depth_range(ramp) == pytest.approx((1.01, 1.99))
    assert (P.depth_colors(np.full((2, 2), np.nan)) == 128).all()  # nothing valid: all grey
    assert P.depth_colors(torch.ones(4, 4)).shape == (4, 4, 3)  # a constant depth: no division by zero


def test_normal_colors():
    n = np.zeros((2, 2, 3))
    n[..., 2] = -1.0  # facing the camera
    n[0, 1] = (1.0, 0.0, 0.0)
    mask = np.array([[1, 1], [1, 0]], bool)
    img = P.normal_colors(n, mask)
    assert tuple(img[0, 0]) == (128, 128, 0)  # round((n + 1) * 127.5)
    assert tuple(img[0, 1]) == (255, 128, 128)
    assert tuple(img[1, 1]) == P.BACKGROUND
    chw = P.normal_colors(torch.from_numpy(n).permute(2, 0, 1))
    assert tuple(chw[0, 0]) == (128, 128, 0)
    n[0, 0] = np.nan
    assert tuple(P.normal_colors(n)[0, 0]) == P.BACKGROUND


def test_grid_size_with_labels():
    a = np.zeros((20, 20, 3), np.uint8)
    plain = P.image_grid([[a, a, a], [a, None]], pad=2)
    assert plain.shape == (2 * 20 + 3 * 2, 3 * 20 + 4 * 2, 3)  # 2 rows, 3 columns, pad around and between
    assert (plain[:2] == 255).all()  # white pad
    fs = 12
    lh = P.line_height(P.font(fs))
    lab = P.image_grid([[a, a, a], [a, None]], col_labels=["x", "y", "z"], row_labels=["r0", "r1"], font_size=fs)
    left = max(P.text_width("r0", P.font(fs)), P.text_width("r1", P.font(fs))) + 8
    assert lab.shape == (plain.shape[0] + lh + 4, plain.shape[1] + left, 3)
    big = P.image_grid([[np.zeros((10, 10))]], cell=30)
    assert big.shape[:2] == (34, 34)  # cells scaled to ``cell`` px
    wide = P.image_grid([[np.zeros((10, 20, 3))]], cell=10)
    assert wide.shape[:2] == (14, 24)  # aspect kept
    with pytest.raises(ValueError):
        P.image_grid([[None]])


def _text_columns(img: np.ndarray) -> np.ndarray:
    """Columns of a white strip that hold dark (text) pixels."""
    return np.nonzero((img.min(-1) < 128).any(0))[0]


def test_long_labels_are_not_cut():
    fnt = P.font(12)
    a = np.full((64, 64, 3), 200, np.uint8)
    long_col = "a rather long column label"
    g = P.image_grid([[a, a]], col_labels=[long_col, "b"], font_size=12)
    short = P.image_grid([[a, a]], col_labels=["a", "b"], font_size=12)
    lines = P.wrap_text(long_col, fnt, 64)
    assert " ".join(lines) == long_col and len(lines) >= 3 and all(P.text_width(x, fnt) <= 64 for x in lines)
    assert g.shape[1] == short.shape[1]  # the label wraps between words ...
    assert g.shape[0] == short.shape[0] + (len(lines) - 1) * P.line_height(fnt)  # ... onto more lines
    a = a[:32, :32]
    word = P.image_grid([[a]], col_labels=["supercalifragilistic"], font_size=12)
    assert word.shape[1] >= P.text_width("supercalifragilistic", fnt) + 4  # one long word widens its column
    head = word[: P.line_height(fnt)]
    cols = _text_columns(head)
    assert cols.min() > 0 and cols.max() < word.shape[1] - 1  # the whole word is inside the sheet
    name = "procedural-s0-000007_0 (a held-out identity, photo 0)"
    row = P.image_grid([[a]], row_labels=[name], font_size=12)
    wrapped = P.wrap_text(name, fnt, 160)  # widened for the label up to max(2 cell, 160) px, then wrapped
    assert len(wrapped) >= 2 and " ".join(wrapped) == name
    assert row.shape[1] == max(P.text_width(x, fnt) for x in wrapped) + 8 + 32 + 4
    assert row.shape[0] == len(wrapped) * P.line_height(fnt) + 4  # the row grew to hold every line
    label = row[:, : row.shape[1] - 36]
    assert _text_columns(label).max() < label.shape[1] - 1
    assert P.wrap_text("aaaaaaaa", fnt, P.text_width("aaa", fnt)) == ["aaa", "aaa", "aa"]  # broken only if it must


def test_captions_and_colorbar():
    a = np.zeros((48, 48, 3), np.uint8)
    g = P.image_grid([[a, a]], captions=[["yaw -45", None]], font_size=11)
    assert g.shape[0] == 48 + P.line_height(P.font(11)) + 4  # one line under the row
    narrow = P.image_grid([[a[:16, :16]]], captions=[["yaw -45"]], font_size=11)
    assert narrow.shape[0] == 16 + 2 * P.line_height(P.font(11)) + 4  # wrapped under a narrow picture
    bar = P.depth_colorbar(width=100, height=10)
    assert tuple(bar[5, 2]) == FAR_RGB and tuple(bar[5, 101]) == NEAR_RGB  # far (left) -> near (right)
    assert (bar == 128).all(-1).any()  # the no-surface swatch


def test_png_roundtrip_and_gif(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    p = P.save_png(tmp_path / "sub" / "x.png", img)
    assert np.array_equal(P.load_png(p), img)
    f = P.save_png(tmp_path / "f.png", torch.full((3, 2, 2), 0.5))
    assert (P.load_png(f) == 128).all()
    assert not list(tmp_path.rglob("*.tmp"))
    frames = np.random.default_rng(0).random((7, 3, 12, 12)).astype(np.float32)
    assert P.gif_frame_count(P.write_gif(tmp_path / "t.gif", frames, fps=10)) == 7
    from PIL import Image

    seq = [np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8), np.full((8, 8, 3), (255, 0, 0), np.uint8)]
    with Image.open(P.write_gif(tmp_path / "c.gif", seq, fps=20)) as im:  # the frames come back, in order
        back = []
        for i in range(im.n_frames):
            im.seek(i)
            back.append(np.asarray(im.convert("RGB")))
        assert im.info["duration"] == 50 and im.info.get("loop") == 0
    assert len(back) == 3 and all(np.array_equal(a, b) for a, b in zip(back, seq))
    with pytest.raises(ValueError):
        P.write_gif(tmp_path / "v.gif", [])


def test_curves_and_logs(tmp_path):
    from lapmodel.viz import curves as C

    logs = {"p1": [{"step": 5, "loss": 2.0}, {"step": 10, "loss": 1.0}],
            "p2": [{"step": 5, "loss": 0.5}, {"step": 10, "loss": 0.4, "x_l1": 3.0}]}
    panels, marks = C.log_panels(logs, ["loss", "x_l1", "absent"])
    assert list(panels) == ["loss", "x_l1"] and marks == [(0, "p1"), (10, "p2")]
    assert panels["loss"][1].x == [15, 20]  # steps continue across the logs
    g = {"a": [{"step": 5, "global_step": 105, "loss": 1.0}]}
    assert C.log_panels(g, ["loss"])[0]["loss"][0].x == [105]  # the trainer's global step when it is there
    png = C.curves_png(tmp_path / "c.png", panels, marks=marks)
    assert png is not None and P.load_png(png).shape[1] > P.load_png(png).shape[0]
    assert C.curves_png(tmp_path / "none.png", {}) is None and not (tmp_path / "none.png").exists()
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 1}\n{"step": 2, "lo')  # a log being written
    assert C.read_jsonl(tmp_path / "log.jsonl") == [{"step": 1, "loss": 1}]
    assert C.read_jsonl(tmp_path / "missing.jsonl") == []


def test_turntable_frames():
    from lapmodel.viz.pictures import turntable_frames

    y, x = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), indexing="ij")
    d = (1.0 - 0.1 * np.sqrt(np.clip(1 - x**2 - y**2, 0, 1))).astype(np.float32)
    img = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    frames = turntable_frames(d, img, n_frames=5)
    assert frames.shape == (5, 16, 16, 3) and frames.dtype == np.uint8
    # the loop starts at yaw 0: the identity view gives the canonical image back (to a rounding level)
    assert np.abs(frames[0].astype(int) - P.to_uint8(img)).max() <= 1
    assert np.abs(frames[1].astype(int) - frames[0]).mean() > 10  # then it turns (yaw 45 sin 72 deg)
    both = turntable_frames(d, img, n_frames=3, shape=True)
    assert both.shape == (3, 16, 32, 3)
    assert np.array_equal(both[0, :, :16], frames[0])  # left half: the textured face (yaw 0 in both)
    shape_half = both[0, :, 16:].astype(int)  # right half: grey albedo under white light, so R = G = B
    assert (np.abs(shape_half - shape_half[..., :1]) <= 1).all() and shape_half.std() > 1
