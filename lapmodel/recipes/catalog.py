"""The configs and recipes installed with the package (``lapmodel/recipes/pipelines/*.yaml``), found by name.

    find_config("unsup3d")                  # -> .../lapmodel/recipes/pipelines/unsup3d.yaml
    find_config("pipelines/lap.yaml")       # an existing path wins; otherwise its file name is looked up here
    find_config("runs/my.yaml")             # any existing file

The repository's top-level ``pipelines/`` is a link to the same folder, so paths in the README work in a clone and
names work anywhere the package is installed.
"""

from __future__ import annotations

from pathlib import Path

from lapdata.core.errors import LapError

PACKAGED = Path(__file__).resolve().parent / "pipelines"


def available() -> list[str]:
    """Names of the packaged configs and recipes (``quickstart``, ``unsup3d``, ``lap``, ...)."""
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def find_config(name: str | Path) -> Path:
    """An existing YAML file, else the packaged one of that name (``unsup3d``, ``unsup3d.yaml``, ``pipelines/lap.yaml``)."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    packaged = PACKAGED / f"{stem}.yaml"
    if packaged.is_file() and (p.parent == Path(".") or p.parent.name == "pipelines"):
        return packaged
    raise LapError(f"{name}: no such config file, and no packaged config of that name "
                   f"(packaged: {', '.join(available())})")
