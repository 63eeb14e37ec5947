"""Command-line options derived from config dataclasses: each option is declared once, as a dataclass field.

Why a small derivation rather than a library: the configs already are frozen dataclasses loaded from YAML by
``lapdata.core.config`` (unknown keys raise, dotted overrides); OmegaConf would add a second config system and typer is
the card's CLI. So a field's name gives the option (``min_images`` -> ``--min-images``), its type the parser
(``Literal`` -> choices shown in ``--help``; ``bool`` -> ``--x/--no-x``; ``tuple[str, ...]`` -> a repeatable option; other tuples -> ``"a,b"`` or ``"I/N"``), its
default the default, and its trailing source comment the help text (as ``simple-parsing`` does)::

    @dataclass(frozen=True)
    class IngestConfig:
        size: int = 128  # output face size in pixels      ->   --size INTEGER  output face size in pixels [128]

``config_parameters(cls)`` returns the ``inspect.Parameter`` list a command's signature is built from and
``config_values(cls, kwargs)`` turns the parsed options back into the dataclass's keyword arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import tokenize
import types
import typing
from typing import Any, Callable, Literal, Optional, Sequence, get_args, get_origin

import typer

from lapdata.core.errors import LapError

_MISSING = dataclasses.MISSING


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """{field name: its trailing ``# comment``} read from the class source (and its dataclass bases')."""
    out: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            out.update(field_comments(base))
    out.update(_own_comments(cls))
    return out


def _own_comments(cls: type) -> dict[str, str]:
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    line_field: dict[int, str] = {}
    for i, line in enumerate(src.splitlines(), 1):
        stripped = line.strip()
        name = stripped.split(":", 1)[0].strip()
        if ":" in stripped and name.isidentifier() and not stripped.startswith(("def ", "class ", "#", "@")):
            line_field[i] = name
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type != tokenize.COMMENT:
            continue
        text = tok.string.lstrip("#").strip()
        row = tok.start[0]
        if row in line_field:
            out[line_field[row]] = text
    return out


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _parse_tuple(text: str, n: int | None, item: type, name: str) -> tuple:
    sep = "/" if "/" in text and "," not in text else ","
    parts = [p.strip() for p in text.split(sep) if p.strip()]
    if n is not None and len(parts) != n:
        raise LapError(f"--{name.replace('_', '-')} {text!r}: expected {n} values separated by ',' (or 'I/N')")
    try:
        return tuple(item(p) for p in parts)
    except ValueError:
        raise LapError(f"--{name.replace('_', '-')} {text!r}: not a list of {item.__name__}") from None


def _option_type(tp: Any) -> tuple[Any, dict[str, Any], Callable[[Any], Any] | None]:
    """(annotation for typer, extra typer.Option kwargs, converter back to the field type)."""
    tp, optional = _unwrap_optional(tp)
    origin = get_origin(tp)
    if origin is Literal:
        return (Optional[tp] if optional else tp), {}, None  # typer shows the choices
    if origin is tuple and get_args(tp) == (str, Ellipsis):
        return (Optional[list[str]] if optional else list[str]), {}, None  # a repeatable option
    if origin is tuple:
        args = get_args(tp)
        n = None if len(args) == 2 and args[1] is Ellipsis else len(args)
        item = args[0] if args else str
        return (str | None if optional else str), {"metavar": "A,B"}, lambda s, _n=n, _i=item: s if isinstance(s, tuple) \
            else _parse_tuple(s, _n, _i, "value")
    if tp in (int, float, str, bool):
        return (tp | None if optional else tp), {}, None
    return (str | None if optional else str), {}, None


def config_parameters(cls: type, *, include: Sequence[str] | None = None, skip: Sequence[str] = (),
                      required: Sequence[str] = (), override: bool = False, short: dict[str, str] | None = None,
                      help: dict[str, str] | None = None,
                      flags: dict[str, str] | None = None) -> list[inspect.Parameter]:
    """One keyword parameter (a ``typer.Option``) per field of ``cls`` (those in ``include``, if given, minus ``skip``).

    ``required``: fields that must be given; ``override``: every option defaults to None, meaning "the config file's
    value" (for commands that read a config and let options override it); ``short``: {field: "-o"}; ``help``: help
    text instead of the field's comment; ``flags``: {field: "--aligned/--detect"} for a bool with other names.
    """
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    short, help, flags = short or {}, help or {}, flags or {}
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or (include is not None and f.name not in include):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            continue  # a nested section: --set section.key=value
        ann, extra, _ = _option_type(hints[f.name])
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else None)  # type: ignore[misc]
        if isinstance(default, tuple):
            if get_origin(_unwrap_optional(ann)[0]) is list:
                default = list(default) or None
            else:
                default = ("/" if f.name == "part" else ",").join(str(x) for x in default)
        if f.name in required or (f.default is _MISSING and f.default_factory is _MISSING):
            default = ...
        text = help.get(f.name, comments.get(f.name, ""))
        if override:
            text = f"{text} (default: the config's, built in {default})" if default is not ... else text
            default = None
            ann = Optional[ann]
        names = [flags[f.name]] if f.name in flags else (
            [f"--{f.name.replace('_', '-')}/--no-{f.name.replace('_', '-')}"] if hints[f.name] is bool
            else [f"--{f.name.replace('_', '-')}"])
        if f.name in short:
            names.append(short[f.name])
        opt = typer.Option(default, *names, help=text, show_default=not override, **extra)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann))
    return params


def config_values(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The parsed options of ``config_parameters(cls)`` as keyword arguments of ``cls`` (tuples parsed back)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        tp, optional = _unwrap_optional(hints[f.name])
        if v is None and not optional:
            continue  # a repeatable option not given (click's None): the field's own default
        if get_origin(tp) is tuple and isinstance(v, list):
            v = tuple(v)
        elif get_origin(tp) is tuple and isinstance(v, str):
            args = get_args(tp)
            n = None if len(args) == 2 and args[1] is Ellipsis else len(args)
            v = _parse_tuple(v, n, args[0] if args else str, f.name)
        out[f.name] = v
    return out


def refuse_empty(values: dict[str, Any], params: Sequence[inspect.Parameter]) -> None:
    """A value given as empty text where the option's default is not empty text is refused (LapError naming the
    option): an empty path would silently mean the current folder (``--out ""``, ``ingest folders ""``,
    ``--shards ""``). A field whose own default is "" (unset) may still be given as ""."""
    for p in params:
        v = values.get(p.name)
        info = p.default
        default = getattr(info, "default", None)
        if not (v == "" and default != "") and not (isinstance(v, (list, tuple)) and "" in v):
            continue
        decls = [d for d in (getattr(info, "param_decls", None) or ()) if d.startswith("--")]
        flag = decls[0].split("/")[0] if decls else p.name.upper()
        raise LapError(f"{flag} '': empty (an empty path would mean the current folder); give a value or leave it out")


def with_parameters(func: Callable[..., Any], params: Sequence[inspect.Parameter]) -> Callable[..., Any]:
    """``func(**kwargs)`` presented to typer with the signature ``params`` (positional arguments first); a value
    given empty is refused first (``refuse_empty``)."""
    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        refuse_empty(kwargs, params)
        return func(**kwargs)

    ordered = sorted(params, key=lambda p: p.kind)
    wrapper.__signature__ = inspect.Signature(ordered)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in ordered}
    del wrapper.__wrapped__
    return wrapper


def argument(name: str, annotation: Any, help: str, default: Any = ...) -> inspect.Parameter:
    """A positional ``typer.Argument`` parameter for ``with_parameters``."""
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation,
                             default=typer.Argument(default, help=help, show_default=default is not ...))


def option(name: str, annotation: Any, default: Any, *names: str, **kw: Any) -> inspect.Parameter:
    """A keyword ``typer.Option`` parameter that is not a config field (e.g. ``--set``)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *names, **kw))
