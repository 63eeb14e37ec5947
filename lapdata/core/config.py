"""Frozen-dataclass configs loaded from YAML: unknown keys raise, each default is defined once (in the dataclass).

Usage::

    @dataclass(frozen=True)
    class TrainConfig:
        lr: float = 1e-4
        data: DataConfig = DataConfig()

    cfg = load_config(TrainConfig, "pipelines/unsup3d.yaml", overrides={"lr": 2e-4})
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from lapdata.core.errors import LapError

T = TypeVar("T")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise LapError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except LapError as e:
                errors.append(str(e))
        raise LapError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise LapError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple,):
        if isinstance(value, (str, Path)) and len(args) == 2 and args[1] is Ellipsis and args[0] is str:
            value = [value]  # tuple[str, ...]: a lone string is one item (shards: "d/train-{0..9}.tar")
        if not isinstance(value, (list, tuple)):
            raise LapError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise LapError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))) if args else tuple(value)
    if origin in (list,):
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)) if args else tuple(value)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise LapError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LapError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LapError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise LapError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise LapError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build frozen dataclass ``cls`` from a mapping; unknown keys raise LapError naming them."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LapError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict form of a config (tuples become lists), suitable for YAML/JSON and checkpoints."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise LapError(f"override {dotted}: {k} is not a section")
    d[keys[-1]] = value


def parse_overrides(items: Sequence[str], option: str = "--set") -> dict[str, str]:
    """``["optim.lr=2e-4", ...]`` -> ``{"optim.lr": "2e-4"}`` (the values are parsed as YAML by ``load_config``)."""
    out: dict[str, str] = {}
    for it in items:
        key, eq, value = it.partition("=")
        if not eq or not key.strip():
            raise LapError(f"{option} {it!r}: expected KEY=VALUE (e.g. {option} optim.lr=2e-4)")
        out[key.strip()] = value
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested and/or dotted mappings -> dotted keys (``{"a": {"b": 1}, "c.d": 2}`` -> ``{"a.b": 1, "c.d": 2}``),
    the one form ``load_config`` takes as overrides."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise LapError(f"{p}: config file does not exist")
    from lapdata.core.paths import read_utf8

    try:
        data = yaml.safe_load(read_utf8(p, "config file")) or {}
    except yaml.YAMLError as e:
        raise LapError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise LapError(f"{p}: top level must be a mapping")
    return data


def load_config(
    cls: type[T],
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    section: str | None = None,
) -> T:
    """Load ``cls`` from a YAML path or mapping (optionally one ``section`` of it), then apply dotted overrides.

    Overrides use dotted keys (``{"optim.lr": 1e-3}``); values given as strings are parsed as YAML scalars.
    """
    if source is None:
        data: dict[str, Any] = {}
        where = cls.__name__
    elif isinstance(source, Mapping):
        data = dict(source)
        where = cls.__name__
    else:
        data = read_yaml(source)
        where = str(source)
    if section is not None:
        data = dict(data.get(section) or {})
        where = f"{where}:{section}"
    data = _deepcopy(data)
    for k, v in (overrides or {}).items():
        if isinstance(v, str):
            try:
                v = yaml.safe_load(v)
            except yaml.YAMLError:
                pass
        _set_dotted(data, k, v)
    return from_dict(cls, data, where)


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d
