"""The shape of the code base: no import cycles inside ``getok_core`` (imports inside functions
included), no module over 700 lines, no function over 80 lines without a stated reason."""

import ast
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("getok_core", "swift_plugin", "easyr1_plugin")
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80
LONG_REASON = "Long because"


def modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` (``pkg.sub`` for ``__init__``)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported(mod: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``mod`` imports anywhere in its file (functions included).
    ``from P import name`` is an edge to ``P.name`` when that is a module, else to ``P``."""
    is_pkg = path.name == "__init__.py"
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                src = ".".join(anchor + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            names = [f"{src}.{a.name}" if f"{src}.{a.name}" in known else src for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # import a.b.c of a module a.b: the edge is to a.b
                name = name.rpartition(".")[0]
            if name and name != mod:
                edges.add(name)
    return edges


def test_no_import_cycles_in_getok_core():
    mods = modules("getok_core")
    names = sorted(mods)
    index = {m: i for i, m in enumerate(names)}
    rows, cols = [], []
    for m in names:
        for dep in imported(m, mods[m], set(names)):
            rows.append(index[m])
            cols.append(index[dep])
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
    _, labels = connected_components(graph, directed=True, connection="strong")
    cycles = [sorted(names[i] for i in np.flatnonzero(labels == lab))
              for lab in np.unique(labels) if np.count_nonzero(labels == lab) > 1]
    assert not cycles, f"import cycles: {cycles}"
    assert len(rows) > 50  # the walk does see the imports


def test_the_cycle_walk_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (pkg / "b.py").write_text("from . import a\n")
    known = {"p", "p.a", "p.b"}
    assert imported("p.a", pkg / "a.py", known) == {"p.b"}
    assert imported("p.b", pkg / "b.py", known) == {"p.a"}


def test_no_module_over_700_lines():
    long = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in modules(pkg).values()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_long_function_without_a_reason():
    long = []
    for pkg in PACKAGES:
        for path in modules(pkg).values():
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES and LONG_REASON not in (ast.get_docstring(node) or ""):
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines without a '{LONG_REASON} ...' docstring: {long}"
