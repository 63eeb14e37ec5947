"""The one atomic-write helper of the toolkit: nothing is ever half-written.

Every file goes to a temporary sibling (same folder, so ``os.replace`` is an atomic rename on POSIX and Windows) and
is moved over the target only once complete; an exception removes the temporary file and leaves the target as it
was::

    with atomic_path("out/model.pt") as tmp:     # any writer that takes a path
        torch.save(state, tmp)
    write_json("out/eval.json", doc)
    write_table("out/photos.parquet", table)     # a pyarrow.Table
    write_bytes("out/depth.png", png_bytes)
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

PathLike = str | os.PathLike


def tmp_sibling(path: PathLike) -> Path:
    """``dir/.name.<pid>.tmp``: unique per process, hidden, in the target's folder."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: PathLike, mkdir: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``, on error delete it."""
    p = Path(path)
    if mkdir:
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(p)
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, doc: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write ``doc`` as JSON (non-JSON values through ``str``) atomically; returns the path."""
    return write_text(path, json.dumps(doc, indent=indent, sort_keys=sort_keys, default=str) + "\n")


def write_table(path: PathLike, table) -> Path:
    """Write a ``pyarrow.Table`` as Parquet atomically; returns the path."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def copy_file(src: PathLike, dst: PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically (the copy appears whole or not at all)."""
    import shutil

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)
