"""The tests' builders, one definition each: photo folders, ingest configs, shard datasets, tiny training configs,
stand-in models, damaged files and a second S3 server. Test modules import them (``from tests.builders import
...``), and so do the fault catalogues (``benchmarks/faults.py``, ``benchmarks/faults_issue21.py``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds
from PIL import Image

from lapdata.core import storage
from lapdata.core.config import load_config
from lapdata.dataset.sample import IdentitySample, View, encode_sample, sample_key
from lapdata.dataset.writer import ShardResult, ShardTask
from lapdata.ingest.config import IngestConfig
from lapdata.parsing.bisenet import BiSeNet
from lapmodel.config import TrainConfig
from lapmodel.models.outputs import Reconstruction

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LAP_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or pytest.skip with the reason when it is absent."""
    import pytest

    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p} is absent (see ../shared/README.md)")
    return p


# ---------------------------------------------------------------------------------------------------------- photos

def pattern(seed: int, size: int = 112) -> np.ndarray:
    """Smooth random pattern (distinct perceptual hashes for distinct seeds)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def save_jpeg(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=95)


def jpeg_bytes(arr: np.ndarray, quality: int = 95) -> bytes:
    """``arr`` (H, W, 3) uint8 encoded as JPEG (the bytes ``save_jpeg`` writes at quality 95)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def solid_jpeg(w: int, h: int, color=(120, 80, 60)) -> bytes:
    """A one-colour w x h JPEG."""
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="JPEG")
    return buf.getvalue()


def make_aligned_folders(root: Path, n_ids: int = 6, per_id: int = 7, faults: bool = True, seed: int = 0) -> Path:
    """One folder per identity (``person{i}``) of 112x112 'ArcFace-aligned' photos (``pattern(seed + 1000 i + j)``);
    with ``faults`` a few bad files, a duplicate and an identity under min-images."""
    for i in range(n_ids):
        for j in range(per_id):
            save_jpeg(root / f"person{i}" / f"{j}.jpg", pattern(seed + 1000 * i + j))
    if faults:
        good = (root / "person0" / "0.jpg").read_bytes()
        (root / "person0" / "truncated.jpg").write_bytes(good[: len(good) // 3])
        (root / "person0" / "notes.jpg").write_text("this is not an image")
        (root / "person1" / "copy.jpg").write_bytes((root / "person1" / "3.jpg").read_bytes())  # exact duplicate
        for j in range(3):  # an identity under min-images
            save_jpeg(root / "few" / f"{j}.jpg", pattern(99000 + j))
    return root


def make_celeba(root, n_ids=3, per_id=7, header=True, aligned=True):
    """A CelebA layout (img_align_celeba or img_celeba, identity_CelebA.txt) of solid-colour photos."""
    sub = root / ("img_align_celeba" if aligned else "img_celeba")
    sub.mkdir(parents=True)
    lines = ["image identity"] if header else []
    k = 1
    for i in range(n_ids):
        for _ in range(per_id):
            name = f"{k:06d}.jpg"
            (sub / name).write_bytes(solid_jpeg(178, 218, (40 * i, 100, 100)))
            lines.append(f"{name} {100 + i}")
            k += 1
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    return root


def tiny_rec_writer(rec_path, idx_path, items):
    """Independent writer (straight from the format description): header record 0, the (label, bytes) records,
    the identity records."""
    with open(rec_path, "wb") as f, open(idx_path, "w") as fi:

        def put(key, payload):
            fi.write(f"{key}\t{f.tell()}\n")
            f.write(struct.pack("<II", 0xCED7230A, len(payload)))
            f.write(payload + b"\0" * ((4 - len(payload) % 4) % 4))

        # insightface's layout: images 1..n, then one record per identity (label = its [first, end) image range, no
        # image); record 0's label = the identity records' range [n + 1, n + 1 + identities)
        n, ids = len(items), sorted({label for label, _ in items})
        put(0, struct.pack("IfQQ", 2, 0.0, 0, 0) + np.array([n + 1, n + 1 + len(ids)], np.float32).tobytes())
        for k, (label, data) in enumerate(items, 1):
            put(k, struct.pack("IfQQ", 0, float(label), k, 0) + data)
        for j, ident in enumerate(ids):
            first = 1 + min(k for k, (label, _) in enumerate(items) if label == ident)
            end = 2 + max(k for k, (label, _) in enumerate(items) if label == ident)
            put(n + 1 + j, struct.pack("IfQQ", 2, 0.0, 0, 0) + np.array([first, end], np.float32).tobytes())

# ------------------------------------------------------------------------------------------- ingest and the writer

def ingest_cfg(src, out, **kw) -> IngestConfig:
    """A quiet IngestConfig of a folders source (2 samples a shard unless given)."""
    kw.setdefault("progress", False)
    kw.setdefault("samples_per_shard", 2)
    return IngestConfig(kind=kw.pop("kind", "folders"), src=str(src), out=str(out), **kw)


def make_groups(n_ids: int = 10, per_id: int = 3) -> list[tuple[str, str, tuple]]:
    groups = []
    for i in range(n_ids):
        split = "train" if i < 7 else ("val" if i < 9 else "test")
        groups.append((f"person_{i:02d}", split, tuple(range(per_id))))
    return groups


def fake_image(pid: str) -> np.ndarray:
    """Smooth (JPEG-friendly) 16x16 image determined by the photo id."""
    c = np.frombuffer(bytes.fromhex(pid[:6]), dtype=np.uint8).astype(np.float64)
    ramp = np.linspace(0, 40, 16)
    return np.clip(c[None, None, :] * 0.8 + ramp[None, :, None], 0, 255).astype(np.uint8).repeat(16, 0)


def synth_process(task: ShardTask, fail_on: str | None = None, exit_on: str | None = None) -> ShardResult:
    """Deterministic fake work: one sample per identity, views are seeded noise; photo 0 of each is an error row."""
    if task.name == fail_on:
        raise RuntimeError("simulated failure")
    if task.name == exit_on:
        os._exit(3)  # a killed process: nothing after this runs
    samples, rows = [], []
    for ident, payload in task.items:
        views = []
        for j in payload:
            pid = hashlib.sha256(f"{ident}/{j}".encode()).hexdigest()[:16]
            row = {"photo_id": pid, "identity": ident, "split": task.split, "source": "test", "path": f"{ident}/{j}"}
            if j == 0:
                row.update(status="error", error="simulated unreadable file")
            else:
                img = fake_image(pid)
                views.append(View(image=img, meta={"photo_id": pid}))
                row.update(status="ok", size=16)
            rows.append(row)
        if views:
            samples.append(IdentitySample(key=sample_key(ident), identity=ident, split=task.split, views=views))
    return ShardResult(samples=samples, rows=rows)

# -------------------------------------------------------------------------------------------------- shard datasets

def write_shards(root: Path, n_shards: int = 3, ids_per_shard: int = 4, views: int = 3, size: int = 40,
                 extras: bool = False, seed: int = 0, smooth: bool = False) -> list[str]:
    """Tiny shards written directly with encode_sample + TarWriter (independent of lapdata.dataset.writer).

    smooth: low-frequency images (bilinear 4x4 noise) that a tiny autoencoder can learn, instead of pixel noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    urls = []
    for s in range(n_shards):
        path = root / f"train-{s:06d}.tar"
        with wds.TarWriter(str(path)) as tw:
            for i in range(ids_per_shard):
                ident = f"person {s}-{i}"
                vs = []
                for v in range(views):
                    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                    if smooth:
                        small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
                        img = np.asarray(small.resize((size, size), Image.BILINEAR))
                    kw = {}
                    if extras:
                        kw = dict(seg=rng.integers(0, 19, (size, size)).astype(np.uint8),
                                  mask=rng.random((size, size)) > 0.5,
                                  depth=np.where(rng.random((size, size)) > 0.2, 1 + rng.random((size, size)),
                                                 np.nan).astype(np.float32))
                    vs.append(View(image=img, meta={"photo_id": f"{ident}/{v}", "hard": v == 1}, **kw))
                tw.write(encode_sample(IdentitySample(sample_key(ident), ident, "train", vs), image_ext="png"))
        urls.append(str(path))
    return urls


def face_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth face-like picture (skin ellipse, darker eyes and mouth) and its 19-class label map."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    cx, cy = rng.uniform(-0.1, 0.1, 2)
    skin = ((xx - cx) / 0.6) ** 2 + ((yy - cy) / 0.8) ** 2 < 1
    eyes = (((xx - cx - 0.25) ** 2 + (yy - cy + 0.2) ** 2) < 0.01) | (((xx - cx + 0.25) ** 2 + (yy - cy + 0.2) ** 2)
                                                                      < 0.01)
    mouth = (np.abs(xx - cx) < 0.25) & (np.abs(yy - cy - 0.4) < 0.05)
    tone = rng.uniform(0.5, 0.9, 3)
    img = np.ones((size, size, 3)) * rng.uniform(0.0, 0.3, 3)
    shade = 0.6 + 0.4 * np.clip(1 - (xx - cx + 0.3 * rng.uniform(-1, 1)) ** 2, 0, 1)
    img[skin] = (tone[None] * shade[skin, None])
    img[eyes] = 0.1
    img[mouth] = [0.6, 0.1, 0.1]
    seg = np.zeros((size, size), np.uint8)
    seg[skin] = 1
    seg[eyes & (xx > cx)] = 5
    seg[eyes & (xx <= cx)] = 4
    seg[mouth] = 11
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), seg


def write_tiny_shards(out: Path, identities: int = 6, views: int = 4, size: int = 32, seed: int = 0,
                      depth: bool = False) -> Path:
    """A dataset folder with one finished shard of ``identities`` samples (images + seg [+ gt depth and mask])."""
    rng = np.random.default_rng(seed)
    d = out / "shards"
    d.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(d / "train-000000.tar")) as w:
        for i in range(identities):
            vs = []
            for j in range(views):
                img, seg = face_image(rng, size)
                v = View(image=img, seg=seg, meta={"photo_id": f"id{i}-{j}"})
                if depth:
                    m = seg > 0
                    v.depth = np.where(m, 1.0 - 0.05 * m, np.nan).astype(np.float32)
                    v.mask = m
                vs.append(v)
            ident = f"id{i:03d}"
            w.write(encode_sample(IdentitySample(sample_key(ident), ident, "train", vs), image_ext="png"))
    (d / "train-000000.json").write_text(json.dumps({"samples": identities}))
    return out

# ---------------------------------------------------------------------------------------------------------- models

TINY_UNSUP3D = dict(image_size=32, nf=8, nf_encoder=8, zdim=16, zdim_conf=16)


def tiny_train_cfg(tmp: Path, urls, **kw) -> TrainConfig:
    """A 4-step CPU Unsup3D training config on ``urls`` writing under ``tmp/run``; ``kw`` overrides sections."""
    d = {"model": dict(TINY_UNSUP3D), "data": {"shards": urls, "workers": 0, "shuffle_buffer": 8, "shuffle_initial": 4,
                                       "fields": ["image"]},
         "batch": 4, "steps": 4, "log_every": 1, "picture_every": 1000, "ckpt_every": 1000, "out": str(tmp / "run"),
         "device": "cpu", "optim": {"lr": 1e-3}}
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return load_config(TrainConfig, d)


def sphere_depth(b: int, s: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    r2 = (x**2 + y**2).clamp(max=1.0)
    return (1.0 - 0.1 * torch.sqrt(1 - r2)).expand(b, s, s).clone()


def fake_reconstruction(images: torch.Tensor) -> Reconstruction:
    from lapdata.geometry.camera import depth_to_normals

    b, _, s, _ = images.shape
    d = sphere_depth(b, s)
    n = depth_to_normals(d, 10.0)
    shading = 0.5 + 0.5 * n[..., 2].clamp(min=0)[:, None]
    return Reconstruction(
        canon_depth=d, canon_albedo=images, canon_normal=n, canon_shading=shading, canon_image=images * shading,
        view=torch.zeros(b, 6), light=torch.tensor([[0.5, 0.5, 0.0, 0.0]]).expand(b, 4),
        recon_image=images * shading, recon_depth=d, recon_mask=torch.ones(b, s, s), fov_deg=10.0,
    )


class StandIn(torch.nn.Module):
    """Single-image model: a sphere for every face."""

    image_size = 16
    accepts_sets = False

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[int] = []

    def reconstruct(self, images: torch.Tensor, as_set: bool = False) -> Reconstruction:
        self.calls.append(len(images))
        return fake_reconstruction(images)


def random_bisenet(seed: int = 0) -> BiSeNet:
    """A BiSeNet with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    m = BiSeNet()
    with torch.no_grad():  # non-trivial BN statistics so a wrong mapping would show
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
    return m.eval()


def forced_state_dict(net_id: int) -> dict:
    """Weights in the 79999_iter.pth layout (191 keys, net.state_dict()) whose main head always answers ``net_id``:
    the head's BatchNorm outputs a constant 1 after ReLU, and only row ``net_id`` of the classifier is non-zero."""
    sd = {k: v.clone() for k, v in random_bisenet(1).state_dict().items()}
    sd["conv_out.conv.bn.weight"].zero_()
    sd["conv_out.conv.bn.bias"].fill_(1.0)
    w = torch.zeros_like(sd["conv_out.conv_out.weight"])  # (19, 256, 1, 1)
    w[net_id] = 1.0
    sd["conv_out.conv_out.weight"] = w
    return sd

# --------------------------------------------------------------------------------------------------- damaged files

def rewrite_parquet(p: Path, column: str, row: int, value) -> None:
    """Set ``column`` of row ``row`` of parquet file ``p`` to ``value`` (a damaged manifest)."""
    t = pq.read_table(p)
    vals = t.column(column).to_pylist()
    vals[row] = value
    i = t.schema.get_field_index(column)
    pq.write_table(t.set_column(i, t.schema.field(i), pa.array(vals, t.schema.field(i).type)), p)


def flip_first_jpeg(tar: Path) -> str:
    """Flip bytes in the middle of the first .jpg member (same size: the tar stays readable); its sample key."""
    with tarfile.open(tar) as tf:
        m = next(m for m in tf if m.name.endswith(".jpg"))
    data = bytearray(tar.read_bytes())
    mid = m.offset_data + m.size // 2
    data[mid : mid + 16] = bytes(255 - b for b in data[mid : mid + 16])
    tar.write_bytes(bytes(data))
    return m.name.split(".")[0]


def huge_png(path: Path, w: int, h: int) -> None:
    """A valid w x h 8-bit grey PNG of zeros, streamed (never w*h bytes in memory)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (w + 1)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))

# -------------------------------------------------------------------------------------------------- object storage

BUCKET = "lap-test"


def upload_tree(local: Path, url: str) -> None:
    """Upload every file under ``local`` to ``url`` (same relative keys)."""
    for p in sorted(local.rglob("*")):
        if p.is_file():
            storage.upload(p, storage.join(url, p.relative_to(local).as_posix()))


def auth_s3_server() -> tuple[subprocess.Popen, str]:
    """A second S3 server that checks credentials (every key unknown: wrong credentials)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import time\nfrom moto.server import ThreadedMotoServer\n"
            f"ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False).start()\ntime.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    p.kill()
    raise RuntimeError("the S3 server with credentials did not start")
