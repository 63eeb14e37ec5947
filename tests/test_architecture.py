"""The layout the ARCHITECTURE.md files promise: no import cycles, each package's layers imported one way, modules
under 400 lines and functions under 80.

Imports are read from the source (``ast``), module level and inside functions alike, so a lazy import that closes a
cycle counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from tests.builders import REPO

PACKAGES = ("lapdata", "lapmodel")
MAX_LINES = 400  # a module
MAX_FUNCTION_LINES = 80  # a function or method, decorators excluded

# each package's layers, top (imported by everything below it in the list) to bottom; see its ARCHITECTURE.md
LAYERS = {
    "lapdata": [("core",), ("geometry",), ("faces",), ("dataset",), ("sources",), ("parsing",), ("synthetic",),
                ("ingest",), ("commands", "cli", "__main__", "__init__")],
    "lapmodel": [("config",), ("render",), ("models",), ("io",), ("viz",), ("training",), ("inference",),
                 ("evaluation",), ("recipes",), ("commands", "cli", "__main__", "__init__")],
}
# lapdata's top level: only its subpackages and its entry points
LAPDATA_TOP = {"__init__.py", "__main__.py", "cli.py"}

def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports (``from a.b import c`` counts a.b.c when that is a module, else a.b)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {n: imports_of(n, p, known) for n, p in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative DFS)."""
    colour = {n: 0 for n in g}
    for root in sorted(g):
        if colour[root]:
            continue
        stack = [(root, iter(sorted(g[root])))]
        path = [root]
        colour[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
                continue
            if nxt not in g:
                continue
            if colour[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            if colour[nxt] == 0:
                colour[nxt] = 1
                stack.append((nxt, iter(sorted(g[nxt]))))
                path.append(nxt)
    return None


def layer(mod: str) -> int:
    pkg = mod.split(".")[0]
    sub = mod.split(".")[1] if "." in mod else "__init__"
    for i, names in enumerate(LAYERS[pkg]):
        if sub in names:
            return i
    raise AssertionError(f"{mod}: its subpackage {sub!r} is in no layer of LAYERS[{pkg!r}] ({pkg}/ARCHITECTURE.md)")


def layer_violations(g: dict[str, set[str]], pkg: str) -> list[str]:
    """Imports inside ``pkg`` from a lower layer to a higher one."""
    return sorted(f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})" for m, ts in g.items()
                  if m.startswith(pkg + ".") or m == pkg for t in ts
                  if t.startswith(pkg + ".") and layer(t) > layer(m))


def long_functions(path: Path, name: str) -> dict[str, int]:
    """{module.function (or module.Class.method): lines} of the functions in ``path`` longer than
    MAX_FUNCTION_LINES (from ``def`` to the last line of the body)."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = child.end_lineno - child.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out[f"{prefix}.{child.name}"] = n
                visit(child, f"{prefix}.{child.name}")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}.{child.name}")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), str(path)), name)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_relative_and_from_imports_resolve(tmp_path):
    known = {"lapmodel", "lapmodel.models", "lapmodel.models.lap", "lapmodel.models.networks", "lapdata.core.errors"}
    src = tmp_path / "lap.py"
    src.write_text("from .networks import Encoder\nfrom lapdata.core.errors import LapError\n"
                   "def f():\n    from lapmodel.models import networks\n")
    assert imports_of("lapmodel.models.lap", src, known) == {"lapmodel.models.networks", "lapdata.core.errors"}


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_lapdata_never_imports_lapmodel():
    bad = sorted(f"{m} imports {t}" for m, ts in graph().items() if m.startswith("lapdata")
                 for t in ts if t.startswith("lapmodel"))
    assert not bad, bad


def test_layer_check_finds_a_planted_violation():
    g = {"lapdata.core.errors": {"lapdata.dataset.sample"}, "lapdata.dataset.sample": {"lapdata.core.errors"}}
    assert layer_violations(g, "lapdata") == [
        "lapdata.core.errors (layer 0) imports lapdata.dataset.sample (layer 3)"]


@pytest.mark.parametrize("pkg", PACKAGES)
def test_layers_are_imported_one_way(pkg):
    bad = layer_violations(graph(), pkg)
    assert not bad, "\n".join(bad)


def test_lapdata_top_level_holds_only_subpackages_and_entry_points():
    top = {p.name for p in (REPO / "lapdata").glob("*.py")}
    assert top == LAPDATA_TOP, f"modules at lapdata's top level: {sorted(top - LAPDATA_TOP)}"


def test_function_size_check_finds_a_long_function(tmp_path):
    src = tmp_path / "m.py"
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    src.write_text(f"def short():\n    pass\n\n\nclass C:\n    def long(self):\n{body}")
    assert long_functions(src, "m") == {"m.C.long": MAX_FUNCTION_LINES + 1}


@pytest.mark.parametrize("pkg", PACKAGES)
def test_modules_are_small(pkg):
    big = {module_name(p): n for p in (REPO / pkg).rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_functions_are_short(pkg):
    long = {f: n for p in sorted((REPO / pkg).rglob("*.py")) for f, n in long_functions(p, module_name(p)).items()}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_module_is_in_the_architecture_file():
    for pkg in PACKAGES:
        text = (REPO / pkg / "ARCHITECTURE.md").read_text()
        missing = [m for m, p in modules().items() if m.startswith(pkg) and p.name != "__init__.py"
                   and p.name != "__main__.py" and f"{p.relative_to(REPO / pkg).as_posix()}" not in text
                   and f"`{p.name}`" not in text]
        assert not missing, f"{pkg}/ARCHITECTURE.md does not list {missing}"


# ------------------------------------------------------------------------------------------------ dependencies

# distribution name -> the module it provides (where they differ)
IMPORT_NAME = {"pillow": "PIL", "pyyaml": "yaml", "dlib-bin": "dlib", "face-recognition-models": "face_recognition_models",
               "tensorboard": "torch.utils.tensorboard", "pytest-timeout": None, "pytest": None, "pandas": None,
               "moto": None}  # moto: the tests' local S3 server
# imported when present, installed by the user (not on PyPI as a wheel for every platform)
USER_INSTALLED = {"nvdiffrast"}


def third_party_imports() -> set[str]:
    import sys

    mods: set[str] = set()
    for pkg in PACKAGES:
        for p in (REPO / pkg).rglob("*.py"):
            for n in ast.walk(ast.parse(p.read_text())):
                if isinstance(n, ast.Import):
                    mods |= {a.name for a in n.names}
                elif isinstance(n, ast.ImportFrom) and not n.level and n.module:
                    mods.add(n.module)
                elif isinstance(n, ast.Call) and getattr(n.func, "id", None) == "require" and n.args \
                        and isinstance(n.args[0], ast.Constant):
                    mods.add(n.args[0].value)  # lapdata.core.errors.require("dlib"): an optional dependency
    return {m for m in mods if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] not in PACKAGES}


def declared() -> dict[str, list[str]]:
    import re
    import tomllib

    proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"core": proj["dependencies"], **proj.get("optional-dependencies", {})}
    return {g: [re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in ds] for g, ds in groups.items()}


def test_what_is_declared_is_imported():
    imported = third_party_imports()
    for group, dists in declared().items():
        for d in dists:
            mod = IMPORT_NAME.get(d, d.replace("-", "_"))
            if mod is None:
                continue  # test/notebook tools (pandas: the `analysis` extra, to_pandas() on manifests)
            found = mod in imported or any(m.startswith(mod + ".") for m in imported) or \
                (d == "face-recognition-models" and "face_recognition_models" in (REPO / "lapdata/faces/detectors.py").read_text())
            assert found, f"pyproject declares {d} ({group}) but nothing in {PACKAGES} imports {mod}"


def test_what_is_imported_is_declared():
    provided = {IMPORT_NAME.get(d, d.replace("-", "_")) for ds in declared().values() for d in ds}
    provided = {p.split(".")[0] for p in provided if p}
    missing = sorted({m.split(".")[0] for m in third_party_imports()} - provided - USER_INSTALLED)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_no_optional_image_backend():
    """One image backend: nothing imports OpenCV (results must not depend on what happens to be installed)."""
    assert not {m for m in third_party_imports() if m.split(".")[0] == "cv2"}
