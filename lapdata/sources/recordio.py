"""MXNet RecordIO (.rec/.idx) reader and writer, without mxnet: the format insightface datasets ship in
(CASIA-WebFace, MS1M, Glint360k: ``train.rec`` + ``train.idx``, 112x112 aligned faces, label in the record header).

Format (dmlc-core recordio):

* each record: ``uint32 magic = 0xced7230a``, ``uint32 lrec`` (upper 3 bits = cflag, lower 29 bits = length),
  then ``length`` payload bytes, zero-padded to a multiple of 4. cflag 0 = whole record; a payload that contains the
  magic word at a 4-byte-aligned position is written in parts (cflag 1 = first, 2 = middle, 3 = last) and the reader joins the parts with the
  magic word re-inserted between them.
* ``.idx``: text lines ``<key>\\t<byte offset of the record>``.
* payload (mx.recordio.pack): IRHeader ``struct 'IfQQ'`` = flag (uint32), label (float32), id (uint64), id2 (uint64);
  when flag > 0 the label is instead ``flag`` float32 values following the header; then the encoded image bytes.
  insightface datasets (arcface_torch ``MXFaceDataset``) lay out: images at keys 1..n (label = identity), then one
  record per identity (flag 2, label = [first, end) of its image keys, no image); record 0 is a header (flag 2,
  label = [n + 1, end): the identity records' range, so the images are keys 1 .. label[0] - 1; no image).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
IR_FORMAT = "IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24


class RecordIOError(ValueError):
    pass


@dataclass
class IRHeader:
    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def unpack(payload: bytes) -> tuple[IRHeader, bytes]:
    """Record payload -> (header, image bytes)."""
    if len(payload) < IR_SIZE:
        raise RecordIOError(f"record payload of {len(payload)} bytes is shorter than the {IR_SIZE}-byte IRHeader")
    flag, label, id1, id2 = struct.unpack(IR_FORMAT, payload[:IR_SIZE])
    rest = payload[IR_SIZE:]
    if flag > 0:
        n = 4 * flag
        if len(rest) < n:
            raise RecordIOError(f"record header says {flag} float labels but only {len(rest)} bytes follow")
        lab: float | np.ndarray = np.frombuffer(rest[:n], dtype=np.float32).copy()
        rest = rest[n:]
    else:
        lab = float(label)
    return IRHeader(flag, lab, id1, id2), rest


def pack(header: IRHeader, data: bytes) -> bytes:
    """(header, image bytes) -> payload (inverse of unpack)."""
    if isinstance(header.label, np.ndarray) or isinstance(header.label, (list, tuple)):
        lab = np.asarray(header.label, dtype=np.float32)
        return struct.pack(IR_FORMAT, lab.size, 0.0, header.id, header.id2) + lab.tobytes() + data
    return struct.pack(IR_FORMAT, 0, float(header.label), header.id, header.id2) + data


def read_record_at(f: BinaryIO, offset: int | None = None) -> bytes | None:
    """Read one (possibly multi-part) record from ``f`` (at ``offset`` if given); None at end of file."""
    if offset is not None:
        f.seek(offset)
    parts: list[bytes] = []
    while True:
        head = f.read(8)
        if not head:
            if parts:
                raise RecordIOError("file ends inside a multi-part record")
            return None
        if len(head) < 8:
            raise RecordIOError(f"truncated record header at byte {f.tell() - len(head)}")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordIOError(f"bad magic 0x{magic:08x} at byte {f.tell() - 8} (not a RecordIO file?)")
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        data = f.read(length)
        if len(data) < length:
            raise RecordIOError(f"truncated record at byte {f.tell() - len(data) - 8}: {len(data)} of {length} bytes")
        pad = (4 - length % 4) % 4
        if pad:
            f.read(pad)
        parts.append(data)
        if cflag in (0, 3):
            if cflag == 0 and len(parts) > 1:
                raise RecordIOError("whole record inside a multi-part record")
            return _MAGIC_BYTES.join(parts)
        if cflag not in (1, 2):
            raise RecordIOError(f"bad cflag {cflag}")


def write_record(f: BinaryIO, payload: bytes) -> int:
    """Append one record (split at 4-byte-aligned magic words, as dmlc does); returns its start offset."""
    start = f.tell()
    chunks, prev = [], 0
    for i in range(0, len(payload) - 3, 4):  # dmlc checks 4-byte-aligned words only
        if payload[i : i + 4] == _MAGIC_BYTES:
            chunks.append(payload[prev:i])
            prev = i + 4
    chunks.append(payload[prev:])
    for i, c in enumerate(chunks):
        if len(chunks) == 1:
            cflag = 0
        else:
            cflag = 1 if i == 0 else (3 if i == len(chunks) - 1 else 2)
        if len(c) > _LEN_MASK:
            raise RecordIOError("record part too large")
        f.write(struct.pack("<II", MAGIC, (cflag << 29) | len(c)))
        f.write(c)
        f.write(b"\0" * ((4 - len(c) % 4) % 4))
    return start


def read_idx(path: str | Path) -> list[tuple[int, int]]:
    """.idx file -> [(key, offset)] in file order."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise RecordIOError(f"{path}:{n}: expected '<key>\\t<offset>'")
            out.append((int(parts[0]), int(parts[1])))
    return out


def iter_offsets(rec_path: str | Path) -> Iterator[tuple[int, int]]:
    """(sequential index, offset) of every record of a .rec file, by scanning it (when there is no .idx)."""
    with open(rec_path, "rb") as f:
        i = 0
        while True:
            off = f.tell()
            if read_record_at(f) is None:
                return
            yield i, off
            i += 1


class RecordReader:
    """Random access to a .rec by offset; opens the file lazily (picklable: reopens in each worker)."""

    def __init__(self, rec_path: str | Path):
        self.rec_path = str(rec_path)
        self._f: BinaryIO | None = None

    def __getstate__(self):
        return {"rec_path": self.rec_path}

    def __setstate__(self, st):
        self.rec_path = st["rec_path"]
        self._f = None

    def read(self, offset: int) -> tuple[IRHeader, bytes]:
        if self._f is None:
            self._f = open(self.rec_path, "rb")
        payload = read_record_at(self._f, offset)
        if payload is None:
            raise RecordIOError(f"{self.rec_path}: no record at offset {offset}")
        return unpack(payload)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def write_rec(rec_path: str | Path, idx_path: str | Path, items, header_record: bool = True) -> None:
    """Write ``items`` [(label: float, image bytes)] as an insightface-style .rec/.idx: with ``header_record``,
    record 0 = the header (label = the identity records' range) and, after the images, one identity record per
    label (label = [first, end) of its image keys), as in the module doc."""
    items = list(items)
    with open(rec_path, "wb") as f, open(idx_path, "w", encoding="utf-8") as fi:
        n, ids = len(items), sorted({float(label) for label, _ in items})
        records = [(IRHeader(0, float(label), k, 0), data) for k, (label, data) in enumerate(items, 1)]
        if header_record:
            keys = {i: [k for k, (label, _) in enumerate(items, 1) if float(label) == i] for i in ids}
            records.insert(0, (IRHeader(2, np.array([n + 1, n + 1 + len(ids)], np.float32), 0, 0), b""))
            records += [(IRHeader(2, np.array([min(keys[i]), max(keys[i]) + 1], np.float32), 0, 0), b"") for i in ids]
        for key, (header, data) in enumerate(records):
            off = write_record(f, pack(header, data))
            fi.write(f"{key}\t{off}\n")
