"""lapdata.core.storage on fsspec's in-memory filesystem: URLs, reading, the staging mirror of a dataset URL (pull,
push, tars streamed on demand, changed objects fetched again), and the shard reader on URLs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from lapdata.core import storage

from lapdata.core import staging
from lapdata.core.errors import LapError
from lapdata.dataset.reader import iter_tar_samples, shard_urls

fsspec = pytest.importorskip("fsspec", reason="the cluster extra (fsspec) is not installed")


def put(url: str, data: bytes) -> None:
    with fsspec.open(url, "wb") as f:
        f.write(data)


def tar_bytes(samples: dict[str, dict[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for key, fields in samples.items():
            for name, data in fields.items():
                ti = tarfile.TarInfo(f"{key}.{name}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_urls_and_paths():
    assert storage.is_url("s3://b/k") and storage.is_url("gs://b/k") and storage.is_url("memory://x")
    assert not storage.is_url("/data/x") and not storage.is_url("file:///data/x") and not storage.is_url("rel/x")
    assert storage.join("s3://b/ds/", "shards", "/a.tar") == "s3://b/ds/shards/a.tar"
    assert storage.strip_file("file:///tmp/x") == "/tmp/x"


def test_read_exists_size_sha(mem, tmp_path):
    put(mem + "/a.bin", b"hello")
    assert storage.read_bytes(mem + "/a.bin") == b"hello" and storage.size(mem + "/a.bin") == 5
    assert storage.exists(mem + "/a.bin") and not storage.exists(mem + "/b.bin")
    assert storage.sha256(mem + "/a.bin") == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    (tmp_path / "l.bin").write_bytes(b"hello")
    assert storage.sha256(tmp_path / "l.bin") == storage.sha256(mem + "/a.bin")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(mem + "/b.bin")
    assert storage.list_files(mem) == {"a.bin": 5} and storage.list_files(mem + "/nothing") == {}


def test_no_filesystem_is_one_line():
    with pytest.raises(LapError, match="no filesystem for this URL"):
        storage.exists("nosuchproto://b/k")


def test_mount_mirrors_small_files_and_streams_tars(mem):
    put(mem + "/stats.json", b"{}")
    put(mem + "/shards/train-000000.json", b'{"shard": "train-000000"}')
    put(mem + "/shards/train-000000.tar", tar_bytes({"k0": {"json": b'{"a": 1}', "000.jpg": b"x"}}))
    root = staging.mount(mem)
    assert (root / "stats.json").read_bytes() == b"{}" and (root / "shards/train-000000.json").is_file()
    assert not (root / "shards/train-000000.tar").exists()  # never mirrored whole
    tar = root / "shards/train-000000.tar"
    assert storage.remote_of(tar) == mem + "/shards/train-000000.tar" and storage.exists(tar)
    samples = list(iter_tar_samples(tar))  # streamed from the object
    assert [s["__key__"] for s in samples] == ["k0"] and samples[0]["json"] == b'{"a": 1}'
    assert shard_urls(root, "train") == [str(tar)]
    assert shard_urls(mem, "train") == [mem + "/shards/train-000000.tar"]
    assert storage.glob(mem + "/shards/train-*.tar") == [mem + "/shards/train-000000.tar"]
    from lapmodel.io.data import count_samples, expand_shards

    assert expand_shards(mem + "/shards/*.tar") == expand_shards(mem) == [mem + "/shards/train-000000.tar"]
    assert count_samples(expand_shards(mem)) == 1  # the json has no num_samples: the tar headers are counted
    with pytest.raises(LapError, match="no shard matches"):
        expand_shards(mem + "/shards/val-*.tar")
    with pytest.raises(LapError, match="shard does not exist"):
        expand_shards(mem + "/shards/val-000000.tar")
    assert list(iter_tar_samples(mem + "/shards/train-000000.tar"))[0]["000.jpg"] == b"x"


def test_sync_fetches_a_rewritten_object_of_the_same_size(mem):
    put(mem + "/shards/a.parquet", b"AAAA")
    root = staging.mount(mem)
    assert (root / "shards/a.parquet").read_bytes() == b"AAAA"
    put(mem + "/shards/a.parquet", b"BBBB")  # same size, new content
    staging.mount(mem)
    assert (root / "shards/a.parquet").read_bytes() == b"BBBB"


def test_mount_prunes_what_the_remote_lost(mem):
    put(mem + "/a.json", b"1")
    put(mem + "/b.json", b"2")
    root = staging.mount(mem)
    fsspec.filesystem("memory").rm("/bucket/ds/b.json")
    staging.mount(mem)
    assert (root / "a.json").exists() and not (root / "b.json").exists()


def test_push_order_and_tree(mem):
    root = staging.mount(mem)
    (root / "shards").mkdir(parents=True)
    for ext in (".tar", ".parquet", ".json"):
        (root / "shards" / f"train-000000{ext}").write_bytes(ext.encode())
    staging.push(root, [f"shards/train-000000{e}" for e in (".tar", ".parquet", ".json")])
    assert not (root / "shards/train-000000.tar").exists()  # a committed tar leaves the staging folder
    assert storage.read_bytes(mem + "/shards/train-000000.tar") == b".tar"
    (root / "stats.json").write_text("{}")
    (root / "cache").mkdir()
    (root / "cache/model.npz").write_bytes(b"big")
    assert staging.push_tree(root, skip=("cache/",)) == 1  # only stats.json is new
    assert storage.exists(mem + "/stats.json") and not storage.exists(mem + "/cache/model.npz")
    assert staging.push_tree(root, skip=("cache/",)) == 0  # nothing changed since
    (root / "shards/train-000000.parquet").write_bytes(b"changed")
    assert staging.push_tree(root, skip=("cache/",)) == 1  # the changed file only
    assert storage.read_bytes(mem + "/shards/train-000000.parquet") == b"changed"


def test_unmounted_push_is_a_no_op(tmp_path):
    (tmp_path / "a").write_text("x")
    staging.push(tmp_path, ["a"])
    assert staging.push_tree(tmp_path) == 0 and storage.remote_of(tmp_path / "a") is None
    assert (tmp_path / "a").exists()


def test_damaged_remote_tar_names_the_url(mem):
    put(mem + "/shards/bad.tar", b"not a tar at all" * 10)
    with pytest.raises(LapError, match=r"memory://bucket/ds/shards/bad.tar: damaged shard tar"):
        list(iter_tar_samples(mem + "/shards/bad.tar"))
    with pytest.raises(LapError, match="shard does not exist"):
        list(iter_tar_samples(mem + "/shards/none.tar"))


def test_engine_options_are_checked():
    from lapdata.core.engine import EngineConfig

    with pytest.raises(LapError, match="--ray-actors -1"):
        EngineConfig(ray_actors=-1)


def test_local_engine_maps_in_order_of_completion():
    from lapdata.core.engine import EngineConfig, map_unordered

    assert sorted(map_unordered(abs, [-3, 1, -2], engine=EngineConfig())) == [1, 2, 3]
    assert sorted(map_unordered(abs, [-3, 1, -2], workers=2)) == [1, 2, 3]
    assert list(map_unordered(abs, [])) == []
    with pytest.raises(LapError, match="unknown engine"):
        map_unordered(abs, [1], engine=EngineConfig(engine="spark"))  # type: ignore[arg-type]


def test_storage_paths_under_a_mount(mem, tmp_path):
    root = staging.mount(mem)
    assert storage.remote_of(root) == mem and storage.remote_of(root / "x/y") == mem + "/x/y"
    assert storage.remote_of(tmp_path / "elsewhere") is None
    assert isinstance(root, Path) and root.is_dir()
