"""Issue 21, defect 0: what ingest writes passes the audit. A held-out photo that duplicates another split's is removed
from its shard by ingest and by merge (the same rule, ``lapdata.dataset.duplicates``), and parse-masks refuses a dataset whose
final audit must fail before it parses anything."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest
from PIL import Image

from lapdata.dataset import duplicates
from lapdata.dataset.audit.run import audit_dataset
from lapdata.core.errors import LapError
from lapdata.ingest.run import run_ingest
from lapdata.dataset.split import split_of
from tests.builders import ingest_cfg, pattern, save_jpeg


def leaky_source(root):
    """Two identities in different splits, the second holding a re-encoded copy of the first's photo 0."""
    names = [f"person{i}" for i in range(40)]
    a = names[0]
    b = next(n for n in names if split_of(n, 0, (0.75, 0.125, 0.125)) != split_of(a, 0, (0.75, 0.125, 0.125)))
    for k, name in enumerate((a, b, *names[1:4])):
        for j in range(6):
            save_jpeg(root / name / f"{j}.jpg", pattern(100 * k + j))
    Image.open(root / a / "0.jpg").save(root / b / "copy.jpg", format="JPEG", quality=70)
    return root


def test_merge_applies_the_rule_across_parts(tmp_path):
    """Parts cannot see each other's photos: merge removes the held-out copy as a whole run does."""
    from lapdata.dataset.merge import merge_datasets

    src = leaky_source(tmp_path / "src")
    whole = run_ingest(ingest_cfg(src, tmp_path / "whole", samples_per_shard=1))
    for i in range(2):
        part = run_ingest(ingest_cfg(src, tmp_path / f"p{i}", samples_per_shard=1, part=(i, 2)))
        assert "cross_identity_duplicates" not in part
    merged = merge_datasets([tmp_path / "p0", tmp_path / "p1"], tmp_path / "m")
    assert merged["cross_identity_duplicates"] == whole["cross_identity_duplicates"]
    assert whole["cross_identity_duplicates"]["removed"] == 1
    for name in ("photos.parquet", "duplicates.parquet"):
        a = pq.read_table(tmp_path / "whole" / name).sort_by("photo_id")
        b = pq.read_table(tmp_path / "m" / name).sort_by("photo_id")
        assert a.equals(b), name
    for d in ("whole", "m"):
        rep = audit_dataset(tmp_path / d)
        assert rep.ok, rep.faults


def test_parse_masks_refuses_before_parsing_what_its_audit_must_reject(tmp_path, monkeypatch):
    """parse-masks parsed every photo and then discarded the result ("the new version failed the audit"); a
    dataset an older ingest left with a cross-split duplicate is now refused at once, and rerunning that ingest
    repairs it."""
    from lapdata.parsing.parse import ParseConfig, parse_masks

    src = leaky_source(tmp_path / "src")
    out = tmp_path / "ds"
    with monkeypatch.context() as m:  # as an ingest before the rule: the pair listed, nothing removed
        m.setattr(duplicates, "cross_split_removals", lambda *a, **k: {})
        run_ingest(ingest_cfg(src, out, samples_per_shard=1))
    assert not audit_dataset(out).ok
    calls = []
    monkeypatch.setattr("lapdata.parsing.parse.write_dataset", lambda *a, **k: calls.append(1))
    pcfg = ParseConfig(parser="ground-truth", contact_sheet_views=0)
    with pytest.raises(LapError, match=r"its audit fails before parsing \(1 fault\(s\) no parse repairs; first: "
                                       r"split leakage: photo"):
        parse_masks(out, pcfg, progress=False)
    assert not calls and not (tmp_path / "ds.parse-tmp").exists()
    monkeypatch.undo()
    st = run_ingest(ingest_cfg(src, out, samples_per_shard=1))  # the rerun applies the rule to what is there
    assert st["cross_identity_duplicates"]["removed"] == 1 and audit_dataset(out).ok
    rep = parse_masks(out, pcfg, progress=False)
    assert rep.swapped and not rep.audit_faults


@pytest.mark.shared
def test_celebrity_sets_ingest_passes_audit(tmp_path):
    """The README's celebrity-sets ingest wrote a near duplicate of a Robert_Downey_Jr photo (train) under
    Keanu_Reeves (val), then failed its own audit; two identities of it reproduce that."""
    from tests.builders import shared_path

    sets = shared_path("faces", "celebrity-sets")
    src = tmp_path / "src"
    shutil.copytree(sets / "Keanu_Reeves", src / "Keanu_Reeves")
    (src / "Robert_Downey_Jr").mkdir()
    for name in ["7865.jpg"] + sorted(p.name for p in (sets / "Robert_Downey_Jr").glob("*.jpg"))[:8]:
        shutil.copy(sets / "Robert_Downey_Jr" / name, src / "Robert_Downey_Jr" / name)
    st = run_ingest(ingest_cfg(src, tmp_path / "ds"))
    rows = {r["path"]: r for r in pq.read_table(tmp_path / "ds" / "photos.parquet").to_pylist()}
    gone = rows["Keanu_Reeves/5633.jpg"]
    assert (gone["split"], gone["reason"], gone["dup_of"]) == \
        ("val", "duplicate_other_split", rows["Robert_Downey_Jr/7865.jpg"]["photo_id"])
    assert st["cross_identity_duplicates"]["removed"] == 1
    rep = audit_dataset(tmp_path / "ds")
    assert rep.ok, rep.faults
