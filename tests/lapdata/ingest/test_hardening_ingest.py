"""Issue 11 (hardening), the ingest side: every bad input is one row or one line, never a traceback or a lost record.

Each test builds its own bad input in tmp_path and fails on the code before the fix it covers (see the names).
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lapdata.dataset.audit.run import audit_dataset
from lapdata.core.errors import LapError
from lapdata.ingest.config import IngestConfig
from lapdata.ingest.run import run_ingest
from lapdata.dataset.sample import decode_sample
from lapdata.dataset.reader import iter_samples
from lapdata.dataset.manifests import read_dataset
from tests.builders import huge_png, ingest_cfg, make_aligned_folders, pattern, save_jpeg



def rows_by_path(out) -> dict:
    return {r["path"]: r for r in read_dataset(out).to_pylist()}


def stored_images(out) -> dict:
    """photo path -> the stored (decoded) face of every written view."""
    got = {}
    for d in iter_samples(out):
        for v in decode_sample(d).views:
            got[v.meta["path"]] = v.image
    return got


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ 2: image modes


def test_every_pil_mode_is_decoded_or_refused_by_name(tmp_path):
    """A 16-bit grey PNG was stored all white with status ok (convert("RGB") clips I;16); now every mode decodes to
    the right pixels (grey16 / 257, alpha over white, F in [0, 1] x 255) or is one error row naming the mode."""
    def flat(v, dtype):  # uniform images: the pre-aligned crop rule keeps their value exactly
        return np.full((112, 112), v, dtype)

    want = {}  # file -> expected value of the stored face (up to JPEG)
    files = {
        "i16.png": (encode(Image.fromarray(flat(40000, np.uint16))), 40000 / 257),
        "i32.tif": (encode(Image.fromarray(flat(20000, np.int32)), "TIFF"), 20000 / 257),
        "f01.tif": (encode(Image.fromarray(flat(0.25, np.float32)), "TIFF"), 0.25 * 255),
        "l.png": (encode(Image.fromarray(flat(90, np.uint8))), 90.0),
        "p.png": (encode(Image.fromarray(pattern(6)).convert("P")), None),
        "la.png": (encode(Image.fromarray(np.stack([flat(90, np.uint8), flat(255, np.uint8)], -1), "LA")), 90.0),
        "cmyk.jpg": (encode(Image.new("CMYK", (112, 112), (0, 0, 0, 0)), "JPEG"), 255.0),
        "one.png": (encode(Image.new("1", (112, 112), 0)), 0.0),
        "rgba.png": (encode(Image.fromarray(np.zeros((112, 112, 4), np.uint8))), 255.0),  # transparent: white
        "fbig.tif": (encode(Image.fromarray(flat(5000.0, np.float32)), "TIFF"), "refused"),
    }
    person = tmp_path / "src" / "modes"
    person.mkdir(parents=True)
    for name, (data, mean) in files.items():
        (person / name).write_bytes(data)
        want[f"modes/{name}"] = mean
    out = tmp_path / "out"
    st = run_ingest(ingest_cfg(tmp_path / "src", out, min_images=1, dedup=False, size=112))
    rows = rows_by_path(out)
    assert len(rows) == len(files)
    faces = stored_images(out)
    for path, mean in want.items():
        r = rows[path]
        if mean == "refused":
            assert r["status"] == "error" and "mode F" in r["error"] and path not in faces
            continue
        assert r["status"] == "ok", r
        if mean is not None:
            assert abs(faces[path].astype(float).mean() - mean) < 4, (path, faces[path].mean(), mean)
    assert faces["modes/i16.png"].max() < 200  # not the all-white clip
    assert st["status_counts"] == {"error": 1, "ok": len(files) - 1}


# ------------------------------------------------------------------------------------------------ 3: bad names


def test_non_utf8_names_are_one_row_each_and_rerun_cleanly(tmp_path):
    """A non-UTF-8 file name failed its whole shard on every rerun (60 photos in, 9 rows out) and a non-UTF-8
    identity folder gave a traceback; now each is a row with the name backslash-escaped and name_escaped set."""
    src = make_aligned_folders(tmp_path / "src", n_ids=3, per_id=6, faults=False)
    bad_dir = os.fsencode(src) + b"/caf\xe9"
    os.mkdir(bad_dir)
    for j in range(6):
        save_jpeg(Path(os.fsdecode(bad_dir + f"/{j}.jpg".encode())), pattern(7000 + j))
    bad_file = os.fsencode(src / "person0") + b"/\xff\xfe.jpg"
    with open(bad_file, "wb") as f:
        f.write(encode(Image.fromarray(pattern(8000)), "JPEG"))
    out = tmp_path / "out"
    st = run_ingest(ingest_cfg(src, out, samples_per_shard=64))
    rows = read_dataset(out).to_pylist()
    assert len(rows) == 3 * 6 + 6 + 1 and not st["failed"]
    esc = {r["path"]: r for r in rows if r["name_escaped"]}
    assert set(esc) == {f"caf\\xe9/{j}.jpg" for j in range(6)} | {"person0/\\xff\\xfe.jpg"}
    assert all(r["status"] == "ok" for r in rows)
    assert {r["identity"] for r in esc.values()} == {"caf\\xe9", "person0"}
    again = run_ingest(ingest_cfg(src, out, samples_per_shard=64))
    assert again["run"]["written"] == 0 and not again["failed"] and audit_dataset(out).ok


# ------------------------------------------------------------------------------------------------ 5: pixel budget


def test_pixel_budget_skips_huge_photos_unread(tmp_path):
    """A 144-megapixel PNG cost 2.9 GB in ingest; photos over --max-pixels are skipped (too_large) from the header,
    with PIL's decompression-bomb guard caught as the same row."""
    src = make_aligned_folders(tmp_path / "src", n_ids=1, per_id=3, faults=False)
    huge_png(src / "person0" / "big.png", 400, 300)  # 120000 pixels: over our cap, under 2x PIL's
    huge_png(src / "person0" / "bomb.png", 1000, 1000)  # over twice the cap: PIL's own DecompressionBombError
    out = tmp_path / "out"
    run_ingest(ingest_cfg(src, out, min_images=1, max_pixels=100_000))
    rows = rows_by_path(out)
    big, bomb = rows["person0/big.png"], rows["person0/bomb.png"]
    assert (big["status"], big["reason"], big["orig_width"], big["orig_height"]) == ("skipped", "too_large", 400, 300)
    assert bomb["status"] == "skipped" and bomb["reason"] == "too_large" and "max-pixels" in bomb["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == 3
    with pytest.raises(LapError, match="max-pixels"):
        IngestConfig(kind="folders", src="a", out="b", max_pixels=0)


# ------------------------------------------------------------------------------------------------ 6: sources


def test_folder_symlinks_loops_and_empty_folders_each_get_a_row(tmp_path):
    """A top-level symlink to the source became a phantom identity holding every photo; a self-looping symlink and
    an empty identity folder left no row. Now: the phantom is refused (one error row), the loop is an error row,
    the empty folder a skipped row (empty_folder); a symlink to a folder outside the source is followed."""
    src = make_aligned_folders(tmp_path / "src", n_ids=2, per_id=6, faults=False)
    (src / "alias").symlink_to(src, target_is_directory=True)
    (src / "person0" / "loop.jpg").symlink_to("loop.jpg")
    (src / "nobody").mkdir()
    outside = tmp_path / "elsewhere"
    for j in range(6):
        save_jpeg(outside / f"{j}.jpg", pattern(5000 + j))
    (src / "linked").symlink_to(outside, target_is_directory=True)
    out = tmp_path / "out"
    run_ingest(ingest_cfg(src, out))
    rows = rows_by_path(out)
    assert rows["alias/"]["status"] == "error" and "phantom" in rows["alias/"]["error"]
    assert not any(p.startswith("alias/") and p != "alias/" for p in rows)
    assert rows["person0/loop.jpg"]["status"] == "error" and "cannot read" in rows["person0/loop.jpg"]["error"]
    assert (rows["nobody/"]["status"], rows["nobody/"]["reason"]) == ("skipped", "empty_folder")
    assert Counter(r["identity"] for r in rows.values() if r["status"] == "ok") == {"person0": 6, "person1": 6,
                                                                                     "linked": 6}
    assert len(rows) == 2 * 6 + 1 + 1 + 1 + 6
    assert audit_dataset(out).ok


def test_csv_repeats_escapes_and_missing_cells_are_rows(tmp_path):
    """The csv source gave duplicate photo_ids for a repeated path (ingest exit 0, its own audit failed) and read
    paths outside the CSV's folder (``../``: read and hashed); now a repeat is an error row with its own id, an
    escaping path is an error row that is never read, a half-empty line is an error row."""
    src = make_aligned_folders(tmp_path / "photos", n_ids=2, per_id=6, faults=False)
    secret = tmp_path / "secret.jpg"
    save_jpeg(secret, pattern(1))
    lines = ["file,identity"] + [f"person{i}/{j}.jpg,p{i}" for i in range(2) for j in range(6)]
    lines += ["person0/0.jpg,p0", "person0/1.jpg,p1", "../secret.jpg,p0", f"{secret},p0", "person1/2.jpg,", ","]
    (src / "list.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    st = run_ingest(ingest_cfg(src / "list.csv", out, kind="csv"))
    rows = read_dataset(out).to_pylist()
    assert len(rows) == 12 + 5  # the blank line is nothing; everything else one row
    assert len({r["photo_id"] for r in rows}) == len(rows)
    repeats = [r for r in rows if "listed again" in (r["error"] or "")]
    assert len(repeats) == 2 and all(r["status"] == "error" for r in repeats)
    escaping = [r for r in rows if "leaves the CSV's folder" in (r["error"] or "")]
    assert {r["path"] for r in escaping} == {"../secret.jpg", str(secret)} and all(r["sha256"] is None for r in escaping)
    assert any("no 'identity' cell" in (r["error"] or "") for r in rows)
    assert st["status_counts"] == {"error": 5, "ok": 12} and audit_dataset(out).ok
    # --csv-root widens the allowed folder: the absolute path inside it is read
    (tmp_path / "list2.csv").write_text(f"file,identity\n{secret},x\n")
    run_ingest(ingest_cfg(tmp_path / "list2.csv", tmp_path / "out2", kind="csv", min_images=1, csv_root=str(tmp_path)))
    assert read_dataset(tmp_path / "out2").to_pylist()[0]["status"] == "ok"


# ------------------------------------------------------------------------------------------------ 8: resume


def test_rerun_with_another_source_is_refused(tmp_path):
    """An ingest into an existing output from a different source with the same options exited 0, ingested nothing
    and rewrote stats.json's input (a killed first run left no stats.json to compare); now one LapError naming
    both sources. The same source resumes."""
    a = make_aligned_folders(tmp_path / "a", n_ids=3, per_id=6, faults=False)
    b = make_aligned_folders(tmp_path / "b", n_ids=2, per_id=6, faults=False)
    out = tmp_path / "out"
    run_ingest(ingest_cfg(a, out))
    (out / "stats.json").unlink()  # as after a run killed before finalize
    before = (out / "ingest.json").read_text()
    with pytest.raises(LapError, match=r"another source .*/a: 18 photos of 3 identities; now .*/b: 12 photos"):
        run_ingest(ingest_cfg(b, out))
    assert (out / "ingest.json").read_text() == before and not (out / "stats.json").exists()
    assert run_ingest(ingest_cfg(a, out))["run"]["skipped_finished"] > 0


# ------------------------------------------------------------------------------------------------ 9, 10: one line


def test_cli_bad_inputs_are_one_line(tmp_path):
    """--out on an existing file (ingest, merge), a non-UTF-8 CSV, a split manifest that is not parquet, a
    non-UTF-8 YAML config: each was a traceback; now `error: ...` on one line and exit 2."""
    from typer.testing import CliRunner

    from lapdata.cli import app

    src = make_aligned_folders(tmp_path / "src", n_ids=2, per_id=6, faults=False)
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("file,identity\nperson0/0.jpg,Jos\xe9\n".encode("latin-1"))
    notpq = tmp_path / "split.parquet"
    notpq.write_text("identity,split\n")
    yml = tmp_path / "c.yaml"
    yml.write_bytes(b"parse_masks:\n  parser: caf\xe9\n")
    cases = {
        "out is a file": (["ingest", "folders", str(src), "--out", str(afile)], "exists and is not a folder"),
        "merge out is a file": (["merge", str(src), "--out", str(afile)], "exists and is not a folder"),
        "non-UTF-8 CSV": (["ingest", "csv", str(latin), "--out", str(tmp_path / "o1")], "not UTF-8"),
        "split manifest": (["ingest", "folders", str(src), "--out", str(tmp_path / "o2"), "--split-manifest",
                            str(notpq)], "not a parquet split manifest"),
        "non-UTF-8 YAML": (["parse-masks", str(tmp_path), "--config", str(yml)], "not UTF-8"),
        "size 0": (["ingest", "folders", str(src), "--out", str(tmp_path / "o3"), "--size", "0"], "--size 0"),
        "size -5": (["ingest", "folders", str(src), "--out", str(tmp_path / "o3"), "--size", "-5"], "--size -5"),
        "id threshold 5": (["ingest", "folders", str(src), "--out", str(tmp_path / "o3"), "--id-threshold", "5"],
                           "--id-threshold 5"),
        "samples per shard 0": (["ingest", "folders", str(src), "--out", str(tmp_path / "o3"),
                                 "--samples-per-shard", "0"], "--samples-per-shard 0"),
        "synthetic part": (["build-synthetic", "--out", str(tmp_path / "s"), "--part", "3/2"], "--part 3/2"),
        "synthetic quality": (["build-synthetic", "--out", str(tmp_path / "s"), "--quality", "0"], "--quality 0"),
        "synthetic workers": (["build-synthetic", "--out", str(tmp_path / "s"), "--workers", "0"], "--workers 0"),
        "parse batch 0": (["parse-masks", str(tmp_path), "--batch-size", "0"], "--batch-size"),
        "parse input size": (["parse-masks", str(tmp_path), "--input-size", "8"], "--input-size 8"),
    }
    for name, (args, msg) in cases.items():
        r = CliRunner().invoke(app, args)
        err = r.stderr if hasattr(r, "stderr") else r.output
        assert r.exit_code == 2, (name, r.exit_code, r.output)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], (name, err)


def test_ingest_config_ranges():
    for kw, msg in [({"size": 0}, "--size 0"), ({"size": -5}, "--size -5"), ({"id_threshold": 5.0}, "--id-threshold"),
                    ({"samples_per_shard": 0}, "--samples-per-shard"), ({"fractions": (0, 0, 0)}, "--fractions"),
                    ({"part": (2, 2)}, "--part"), ({"quality": 0}, "--quality")]:
        with pytest.raises(LapError, match=msg):
            IngestConfig(kind="folders", src="a", out="b", **kw)


def test_stats_manifest_checksums_are_written(tmp_path):
    """stats.json lists a sha256 per parquet manifest (duplicates.parquet included) and each shard json its
    parquet's, as audit verifies them."""
    from lapdata.dataset.manifests import sha256_file

    out = tmp_path / "out"
    run_ingest(ingest_cfg(make_aligned_folders(tmp_path / "src", n_ids=2, per_id=6, faults=False), out))
    st = json.loads((out / "stats.json").read_text())
    assert set(st["manifests"]) == {"photos.parquet", "identities.parquet", "shards.parquet", "duplicates.parquet"}
    assert all(sha256_file(out / k) == v for k, v in st["manifests"].items())
    for js in (out / "shards").glob("*.json"):
        assert json.loads(js.read_text())["parquet_sha256"] == sha256_file(js.with_suffix(".parquet"))
    assert pq.read_table(out / "photos.parquet").schema.field("name_escaped").type == "bool"
