"""Paths and names read from data: a manifest never leads outside its dataset, a file name never breaks a manifest.

Containment (every path read from a manifest, a shard json or a CSV)::

    inside(root, "shards/train-000000.tar", "shards.parquet path")   # -> the resolved Path, or PathEscape (LapError)
    escape_reason(root, rel)                                          # -> None, or why it is refused (for audit)
    check_shard_name("train-000003")                                  # a shard name is `{split}-{index:06d}`
    plain_name("../x y")                                              # -> "_x_y-<sha1[:8]>": a name, never a path

A path is refused when it is absolute, empty, holds a ``..`` component or NUL, or resolves (symlinks followed) to
somewhere outside ``root`` (resolved too). ``root`` itself may be a symlink (a dataset on another disk).

Names (file and folder names from a source): on POSIX a name is bytes; Python decodes the bytes that are not
UTF-8 as lone surrogates (``os.fsdecode``), which Parquet, JSON and hashing reject. ``display_name(name)`` gives
``(text, escaped)``: the name itself when it is valid UTF-8, else the bytes decoded with ``backslashreplace``
(``b"caf\\xe9"`` -> ``"caf\\\\xe9"``, readable and stable) and ``escaped=True`` (the PHOTOS column
``name_escaped``); the file is still opened by its real name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from lapdata.core.errors import LapError

SHARD_NAME = re.compile(r"^[a-z][a-z0-9_]*-[0-9]{6}$")  # {split}-{index:06d}
PLAIN_NAME = re.compile(r"^\w[\w.-]*$")  # a file name made from data: word characters, '.', '-', no leading dot


class PathEscape(LapError):
    """A path read from data that would lead outside its dataset (or source folder)."""


def escape_reason(root: str | Path, rel: str | os.PathLike | None) -> str | None:
    """Why ``rel`` (relative to ``root``) is not a path inside ``root``, or None when it is."""
    if rel is None or str(rel) == "":
        return "empty path"
    text = os.fspath(rel)
    if "\x00" in text:
        return "NUL byte in the path"
    if os.path.isabs(text) or PurePosixPath(text).is_absolute() or re.match(r"^[A-Za-z]:[\\/]", text):
        return "absolute path"
    if ".." in PurePosixPath(text.replace("\\", "/")).parts:
        return "'..' in the path"
    base = Path(root).resolve()
    try:
        target = (base / text).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        return f"cannot resolve ({type(e).__name__})"
    if target != base and base not in target.parents:
        return f"resolves outside (to {target})"
    return None


def inside(root: str | Path, rel: str | os.PathLike | None, what: str) -> Path:
    """``root / rel`` when it stays inside ``root`` (see the module doc), else PathEscape naming ``what``."""
    why = escape_reason(root, rel)
    if why is not None:
        raise PathEscape(f"{what} {os.fspath(rel) if rel is not None else None!r} leaves {root} ({why}); "
                         f"the dataset is damaged or tampered with: rewrite it")
    return Path(root) / os.fspath(rel)


def check_shard_name(name: object, what: str = "shard name") -> str:
    """``name`` when it is a shard name (``{split}-{index:06d}``: no slash, no dot), else PathEscape."""
    if not isinstance(name, str) or not SHARD_NAME.match(name):
        raise PathEscape(f"{what} {name!r} is not a shard name ({{split}}-{{index:06d}}); the dataset is damaged "
                         f"or tampered with: rewrite it")
    return name


def plain_name(text: str, limit: int = 64) -> str:
    """A file or folder name made from ``text`` (a photo's stem, an identity, a step): ``text`` itself when it is a
    plain name (``PLAIN_NAME``) of at most ``limit`` characters; else its plain characters (others -> '_') cut to
    ``limit`` + '-' + 8 hex of the sha1 of ``text``, so distinct texts never share a name. Never empty, '.' or '..',
    never a path (no separator)."""
    import hashlib

    if PLAIN_NAME.match(text) and len(text) <= limit:
        return text
    slug = re.sub(r"[^\w.-]+", "_", text).lstrip(".")[:limit] or "_"
    digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{slug}-{digest}"


def display_name(name: str) -> tuple[str, bool]:
    """A file/folder name as manifest text: (name, False) when it is valid UTF-8, else (the bytes with
    backslash escapes, True). Never raises."""
    try:
        name.encode("utf-8")
        return name, False
    except UnicodeEncodeError:
        pass
    try:
        raw = name.encode("utf-8", "surrogateescape")  # the name's bytes (os.fsdecode made the surrogates)
    except UnicodeEncodeError:  # other lone surrogates: escape them as code points
        return name.encode("utf-8", "backslashreplace").decode("utf-8"), True
    return raw.decode("utf-8", "backslashreplace"), True


def read_utf8(path: str | Path, what: str) -> str:
    """The text of a UTF-8 file (a BOM is dropped), or a LapError naming the file and the first bad byte."""
    p = Path(path)
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise LapError(f"{p}: {what} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}, line "
                       f"{line}); save it as UTF-8") from None
