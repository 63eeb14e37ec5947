"""Identity grouping and train/val/test splitting (by identity, as LAP does).

An identity's split depends only on (seed, identity id): ``u = sha256(f"{seed}:{identity}")`` read as a number in
[0, 1) is bucketed by the cumulative fractions (default 0.75 / 0.125 / 0.125, the paper's 12k/2k/2k of CelebA).
So the split is deterministic for a seed, independent of list order, and stable when identities are added (an
existing identity never moves). No identity can be in two splits. Identities with fewer than ``min_images`` photos
are dropped (split None) before splitting.

Regenerate the committed CelebA split::

    python -m lapdata.dataset.split ../shared/data/celeba/identity_CelebA.txt manifests/celeba_split.parquet
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from lapdata.core.errors import LapError
from lapdata.dataset.schema import SPLITS

DEFAULT_FRACTIONS = (0.75, 0.125, 0.125)

SPLIT_MANIFEST = pa.schema(
    [
        pa.field("identity", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("num_images", pa.int32(), nullable=False),
    ]
)


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS  # train, val, test
    min_images: int = 6


def unit_hash(identity: str, seed: int = 0) -> float:
    """Stable number in [0, 1) from (seed, identity)."""
    h = hashlib.sha256(f"{seed}:{identity}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def split_of(identity: str, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """train / val / test for ``identity`` (see the module doc)."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise LapError(f"split fractions must be 3 non-negative numbers summing to 1, got {list(fractions)}")
    u = unit_hash(identity, seed)
    acc = 0.0
    for name, f in zip(SPLITS, fractions):
        acc += f
        if u < acc:
            return name
    return SPLITS[-1]


def assign_splits(counts: Mapping[str, int], config: SplitConfig = SplitConfig()) -> dict[str, str | None]:
    """identity -> split, or None when it has fewer than ``min_images`` photos."""
    return {
        ident: (split_of(ident, config.seed, config.fractions) if n >= config.min_images else None)
        for ident, n in counts.items()
    }


# ------------------------------------------------------------------------------------------------- CelebA identities


def read_identity_file(path: str | Path) -> dict[str, str]:
    """identity_CelebA.txt -> {image file name: identity}. Accepts the optional header line ``image identity``."""
    p = Path(path)
    if not p.is_file():
        raise LapError(f"{p}: identity file does not exist")
    from lapdata.core.paths import read_utf8

    out: dict[str, str] = {}
    for n, line in enumerate(read_utf8(p, "identity file").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if n == 1 and parts == ["image", "identity"]:
            continue
        if len(parts) != 2:
            raise LapError(f"{p}:{n}: expected '<image> <identity>', got {line.strip()!r}")
        out[parts[0]] = parts[1]
    if not out:
        raise LapError(f"{p}: identity file is empty")
    return out


def split_table(counts: Mapping[str, int], config: SplitConfig = SplitConfig()) -> pa.Table:
    """(identity, split, num_images) of the identities kept, sorted by identity (numerically when all are ints)."""
    splits = assign_splits(counts, config)
    idents = [i for i, s in splits.items() if s is not None]
    try:
        idents.sort(key=int)
    except ValueError:
        idents.sort()
    return pa.Table.from_pydict(
        {"identity": idents, "split": [splits[i] for i in idents], "num_images": [counts[i] for i in idents]},
        schema=SPLIT_MANIFEST,
    )


def celeba_split_table(identity_file: str | Path, config: SplitConfig = SplitConfig()) -> pa.Table:
    counts = Counter(read_identity_file(identity_file).values())
    return split_table(counts, config)


def write_split_manifest(table: pa.Table, path: str | Path) -> None:
    from lapdata.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def load_split_manifest(path: str | Path) -> dict[str, str]:
    """identity -> split from a manifest written by write_split_manifest."""
    p = Path(path)
    if not p.is_file():
        raise LapError(f"{p}: split manifest does not exist")
    try:
        t = pq.read_table(p)
    except (OSError, ValueError, pa.ArrowException) as e:  # pyarrow: ArrowInvalid "not a parquet file"
        raise LapError(f"{p}: not a parquet split manifest ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if "identity" not in t.column_names or "split" not in t.column_names:
        raise LapError(f"{p}: not a split manifest (needs identity and split columns)")
    ids, splits = t.column("identity").to_pylist(), t.column("split").to_pylist()
    bad = sorted({str(s) for s in splits if s not in SPLITS})
    if bad:
        raise LapError(f"{p}: split values must be {', '.join(SPLITS)}; found {', '.join(bad[:5])}")
    return {str(i): s for i, s in zip(ids, splits) if i is not None}


def split_counts(splits: Iterable[str | None]) -> dict[str, int]:
    c = Counter(s for s in splits if s is not None)
    return {s: c.get(s, 0) for s in SPLITS}


def main(argv: Sequence[str] | None = None) -> int:
    """python -m lapdata.dataset.split IDENTITY_FILE OUT.parquet [--min-images 6] [--seed 0]"""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lapdata.dataset.split", description=main.__doc__)
    ap.add_argument("identity_file")
    ap.add_argument("out")
    ap.add_argument("--min-images", type=int, default=SplitConfig.min_images)
    ap.add_argument("--seed", type=int, default=SplitConfig.seed)
    a = ap.parse_args(argv)
    try:
        t = celeba_split_table(a.identity_file, SplitConfig(seed=a.seed, min_images=a.min_images))
    except LapError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_split_manifest(t, a.out)
    print(f"{a.out}: {t.num_rows} identities {split_counts(t.column('split').to_pylist())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
