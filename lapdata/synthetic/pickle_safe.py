"""Reading tensors out of a Python pickle without running anything from it (NVlabs' ``.pkl`` generators).

A pickle is a program: every global it names is imported and called while loading. NVlabs' network pickles
carry their source code (``torch_utils.persistence``) and rebuild the modules by executing it. This reader never
imports or calls what the file names, except an allowlist of data rebuilders:

* ``collections.OrderedDict``, ``set``, ``frozenset``;
* torch's tensor/parameter rebuilders, replaced by checked equivalents (a storage must be a real storage);
* ``torch.storage._load_from_bytes`` (how a tensor's storage is pickled outside ``torch.save``), read with
  ``torch.load(weights_only=True)``;
* ``torch_utils.persistence._reconstruct_persistent_obj`` -> a ``Persistent`` record (class name + state; the
  module source it carries is kept as text, never executed).

Every other global becomes an ``Inert`` placeholder: calling it, building it or filling it only records the
arguments (``os.system`` in a ``__reduce__`` is stored, not run). ``persistent_state`` then turns a persistent
module into its ``state_dict()``-style tensors and its ``__init__`` kwargs. Used by ``stylegan_files``.
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any

import torch


class Inert(dict):
    """A global the file names that we do not run: a record of its name and of what the pickle did with it."""

    global_name = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        self.args, self.kwargs, self.state, self.items_ = args, kwargs, None, []

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items_ = args, kwargs, None, []
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, x: Any) -> None:
        self.items_.append(x)

    def extend(self, xs: Any) -> None:
        self.items_.extend(xs)

    def __repr__(self) -> str:
        return f"<inert {self.global_name}>"


def _inert_class(module: str, name: str) -> type:
    return type("Inert", (Inert,), {"global_name": f"{module}.{name}"})


class Persistent:
    """An NVlabs persistent object: ``class_name`` and its pickled ``state`` (the module's ``__dict__``)."""

    def __init__(self, meta: Any):
        meta = meta if isinstance(meta, dict) else {}
        self.class_name = str(meta.get("class_name", "?"))
        self.state = meta.get("state") if isinstance(meta.get("state"), dict) else {}
        self.module_src = meta.get("module_src") if isinstance(meta.get("module_src"), str) else ""

    def __repr__(self) -> str:
        return f"<persistent {self.class_name}>"


def _storage(x: Any) -> bool:
    return isinstance(x, (torch.UntypedStorage, torch.TypedStorage))


def _tensor(storage: Any, offset: int, size: Any, stride: Any, *_rest: Any) -> torch.Tensor:
    if not _storage(storage):
        raise pickle.UnpicklingError(f"tensor built from a {type(storage).__name__}, not a storage")
    return torch._utils._rebuild_tensor(storage, int(offset), tuple(size), tuple(stride))


def _parameter(data: Any, *_rest: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"parameter built from a {type(data).__name__}, not a tensor")
    return data


def _from_type(func: Any, _type: Any, args: Any, _state: Any) -> Any:
    if func not in (_tensor, _parameter):
        raise pickle.UnpicklingError("tensor subclass rebuilt by a function outside the allowlist")
    return func(*args)


def _load_from_bytes(b: Any) -> Any:
    if not isinstance(b, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage bytes expected")
    return torch.load(io.BytesIO(bytes(b)), map_location="cpu", weights_only=True)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor"): _tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _from_type,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): Persistent,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f):
        super().__init__(f)
        self.globals_seen: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        self.globals_seen.append(f"{module}.{name}")
        return _ALLOWED.get((module, name)) or _inert_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not plain pickle data (a torch.save file?)")


def safe_load(f) -> tuple[Any, list[str]]:
    """Unpickle one object from the binary file ``f`` with the allowlist above -> (object, globals the file named).

    Raises ``pickle.UnpicklingError`` / ``EOFError`` etc. on a damaged or non-pickle file (the caller words it)."""
    u = _Unpickler(f)
    return u.load(), u.globals_seen


def persistent_state(obj: Persistent, prefix: str = "") -> dict[str, torch.Tensor]:
    """The parameters and persistent buffers of a persistent ``torch.nn.Module`` and its submodules, named as its
    ``state_dict()`` would name them. Submodules that are not persistent objects are skipped."""
    st = obj.state
    out: dict[str, torch.Tensor] = {}
    skip = st.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for k, v in (st.get(group) or {}).items():
            if isinstance(v, torch.Tensor) and not (group == "_buffers" and k in skip):
                out[prefix + k] = v.detach()
    for k, child in (st.get("_modules") or {}).items():
        if isinstance(child, Persistent):
            out.update(persistent_state(child, f"{prefix}{k}."))
    return out


def plain(x: Any) -> Any:
    """``x`` with every dict-like record (``dnnlib.EasyDict`` placeholders included) as a plain dict, recursively;
    other placeholders stay as they are."""
    if isinstance(x, Inert) and not x.args and x.state in (None, {}) and not x.items_:
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, dict) and not isinstance(x, Inert):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(plain(v) for v in x)
    return x
