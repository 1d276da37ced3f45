"""Architecture rules over the package's own Python files, checked on their syntax trees (nothing is imported).

1. No import cycles between the package's modules (lazy imports inside functions count; `if TYPE_CHECKING:`
   imports do not).
2. No module over MAX_LINES lines.
3. ComfyUI is imported in runtime.py only (every other module reaches it through runtime).
4. Outside the Wan family's own code (models/wan/), nothing tests for the "wan" family by its name ("wan",
   "wan21", "wan22" in a comparison or as a dict key) or by its classes (isinstance(x, WanDiT)): such choices
   belong to registries the families fill in.

The last test functions run the checkers on small synthetic packages, so a rule that finds nothing is known to
be a rule that looks.
"""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "openreel"  # the name the repository root is imported under (tests/conftest.py)

EXCLUDED_TOP = {"tests", "bench", "workflows"}  # plus hidden folders (.git, .venv, .venv-ci, ...) anywhere
MAX_LINES = 600

COMFY_ALLOWED = {"runtime.py"}
# ComfyUI's top-level modules and packages. `nodes` is ComfyUI's nodes.py: our own nodes/ package is only ever
# imported relatively (`from .nodes import ...`), which is never flagged.
COMFY_MODULES = {"comfy", "comfy_extras", "comfy_api", "comfy_execution", "folder_paths", "nodes", "server",
                 "execution", "latent_preview", "node_helpers"}

WAN_OWN_CODE = ("models", "wan")  # files under this folder may name their own family
WAN_STRING = re.compile(r"wan\d*")      # fullmatch: "wan", "wan21", "wan22" (not "wan2.1_t2v.safetensors")
WAN_CLASS = re.compile(r"Wan(?![a-z])")  # WanDiT, WanVAE, WanConfig (not "Wander")


# ----------------------------------------------------------------------------------------- files and modules
def package_files(root: Path) -> list[Path]:
    """Every .py file of the package under `root`, except tests/, bench/, workflows/ and hidden folders."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__"
                         and not (here == root and d in EXCLUDED_TOP))
        found += [here / f for f in sorted(files) if f.endswith(".py")]
    return found


def module_name(root: Path, path: Path, package: str) -> str:
    """`a/b.py` → package.a.b; `a/__init__.py` → package.a; the root `__init__.py` → package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def relpath(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def parse(path: Path) -> tuple[ast.Module, list[str]]:
    source = path.read_text(encoding="utf-8")
    return ast.parse(source, filename=str(path)), source.splitlines()


def where(root: Path, path: Path, lines: list[str], node: ast.AST) -> str:
    """`path:line: code`, the code being the (first) source line of the node."""
    code = lines[node.lineno - 1].strip() if 0 < node.lineno <= len(lines) else ""
    return f"{relpath(root, path)}:{node.lineno}: {code}"


# ----------------------------------------------------------------------------------------- 1. import cycles
def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def runtime_nodes(tree: ast.AST):
    """Every node of the tree except the bodies of `if TYPE_CHECKING:` (their `else:` runs, and is kept)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        elif (isinstance(node, ast.If) and isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not)
              and _is_type_checking(node.test.operand)):
            stack.extend(node.body)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _ancestors_or_self(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def imported_modules(module: str, is_package: bool, tree: ast.AST, modules: set[str], package: str):
    """(dependency, line) for each package module this module imports at run time.

    `import P.a.b` / `from P.a import b` / `from ..a import b` depend on the module named (`P.a`, its __init__
    if a package) and, when `b` is a submodule, on `P.a.b`; the packages above the target are imported too, and
    count unless they already enclose this module. A package enclosing this module (`from . import sibling`,
    `from .. import runtime`) is necessarily imported before it, so it is a dependency only for the names taken
    from its __init__ (`from . import SOME_CONSTANT`), not for its submodules.
    """
    mine = _ancestors_or_self(module)
    current = module if is_package else module.rpartition(".")[0]

    def target_and_parents(target: str) -> set[str]:
        """The target, and the packages above it that do not already enclose this module."""
        return {target} if target in mine else _ancestors_or_self(target) - mine

    for node in runtime_nodes(tree):
        deps: set[str] = set()
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    deps |= target_and_parents(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = current.split(".")
                if node.level - 1 >= len(parts):
                    continue  # beyond the top package: not ours (and an ImportError anyway)
                base = ".".join(parts[:len(parts) - (node.level - 1)])
                if node.module:
                    base += "." + node.module
            elif node.module and (node.module == package or node.module.startswith(package + ".")):
                base = node.module
            else:
                continue
            submodules = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
            takes_names = len(submodules) < len(node.names)  # some name comes from base itself (or `*`)
            if base in mine:
                deps |= submodules | ({base} if takes_names else set())
            else:
                deps |= target_and_parents(base) | submodules
        for dep in deps:
            yield dep, node.lineno


def import_graph(root: Path, package: str = PACKAGE):
    """{module: {dependency: [(path, line), ...]}} over the package's modules, and their files."""
    files = {module_name(root, p, package): p for p in package_files(root)}
    graph: dict[str, dict[str, list[tuple[str, int]]]] = {}
    for module, path in files.items():
        tree, _ = parse(path)
        edges = graph.setdefault(module, {})
        for dep, line in imported_modules(module, path.name == "__init__.py", tree, set(files), package):
            edges.setdefault(dep, []).append((relpath(root, path), line))
    return graph


def strongly_connected(graph: dict[str, dict]) -> list[list[str]]:
    """Tarjan's strongly connected components (each sorted), over the nodes that have outgoing edges."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _cycle_through(graph: dict[str, dict], members: list[str]) -> list[str]:
    """A shortest cycle from the first member back to it, staying inside the component."""
    start, inside = members[0], set(members)
    previous, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    path = [v]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w in inside and w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start, start]


def import_cycles(root: Path, package: str = PACKAGE) -> list[str]:
    """One entry per cycle (strongly connected component, or self-import): its members, one loop through them,
    and every import (path:line) between them."""
    graph = import_graph(root, package)
    found = []
    for members in strongly_connected(graph):
        if len(members) == 1 and members[0] not in graph.get(members[0], {}):
            continue
        loop = " -> ".join(_cycle_through(graph, members))
        inside = [f"{path}:{line}: {a} -> {b}" for path, line, a, b in
                  sorted((p, n, a, b) for a in members for b in graph[a] if b in members for p, n in graph[a][b])]
        found.append(f"{len(members)} module(s) {members}, e.g. {loop}; the imports inside it:\n      "
                     + "\n      ".join(inside))
    return found


# ----------------------------------------------------------------------------------------- 2. module length
def long_modules(root: Path, limit: int = MAX_LINES) -> list[str]:
    found = []
    for path in package_files(root):
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > limit:
            found.append(f"{relpath(root, path)}: {count} lines")
    return found


# ----------------------------------------------------------------------------------------- 3. ComfyUI imports
def _is_comfy(name: str | None) -> bool:
    top = (name or "").partition(".")[0]
    return top in COMFY_MODULES or top.startswith("comfy_")


def comfy_imports(root: Path) -> list[str]:
    """Absolute imports of ComfyUI modules, at any depth (functions, try blocks, TYPE_CHECKING), outside
    runtime.py; `importlib.import_module("comfy...")` / `__import__("comfy...")` with a literal name too."""
    found = []
    for path in package_files(root):
        if relpath(root, path) in COMFY_ALLOWED:
            continue
        tree, lines = parse(path)
        for node in sorted(ast.walk(tree), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0))):
            if isinstance(node, ast.Import):
                hit = any(_is_comfy(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                hit = node.level == 0 and _is_comfy(node.module)
            elif isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                hit = (called in ("import_module", "__import__") and node.args
                       and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                       and _is_comfy(node.args[0].value))
            else:
                continue
            if hit:
                found.append(where(root, path, lines, node))
    return found


# ----------------------------------------------------------------------------------------- 4. "wan" checks
def _is_wan_string(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and bool(WAN_STRING.fullmatch(node.value))


def _holds_wan_string(node: ast.AST) -> bool:
    """The string itself, or a tuple / list / set literal containing it."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_wan_string(e) for e in node.elts)
    return _is_wan_string(node)


def _is_wan_class(node: ast.AST) -> bool:
    if isinstance(node, (ast.Tuple, ast.List)):
        return any(_is_wan_class(e) for e in node.elts)
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    return bool(name and WAN_CLASS.match(name))


def wan_family_checks(node: ast.AST) -> str | None:
    """Why this node tests for the Wan family by name or class, or None."""
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        ops = node.ops
        if any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in ops) \
                and any(_holds_wan_string(o) for o in operands):
            return "comparison with a wan family string"
        if any(isinstance(op, (ast.Is, ast.IsNot, ast.Eq, ast.NotEq)) for op in ops) \
                and any(_is_wan_class(o) for o in operands):
            return "type comparison with a Wan class"
    elif isinstance(node, ast.MatchValue) and _is_wan_string(node.value):
        return "match case on a wan family string"
    elif isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("isinstance", "issubclass") and len(node.args) == 2 \
                and _is_wan_class(node.args[1]):
            return f"{func.id} with a Wan class"
        if isinstance(func, ast.Attribute) and func.attr in ("startswith", "endswith") and node.args \
                and _holds_wan_string(node.args[0]):
            return f"{func.attr} with a wan family string"
    elif isinstance(node, ast.Dict) and any(k is not None and _is_wan_string(k) for k in node.keys):
        return "wan family string as a dict key"
    return None


def _location(node: ast.AST) -> ast.AST:
    """Where to point at: a dict's first wan key (the dict may start lines above it), else the node."""
    if isinstance(node, ast.Dict):
        return next(k for k in node.keys if k is not None and _is_wan_string(k))
    return node


def wan_checks(root: Path) -> list[str]:
    found = []
    for path in package_files(root):
        if path.relative_to(root).parts[:len(WAN_OWN_CODE)] == WAN_OWN_CODE:
            continue
        tree, lines = parse(path)
        hits = []
        for node in ast.walk(tree):
            why = wan_family_checks(node)
            if why:
                at = _location(node)
                hits.append((at.lineno, at.col_offset, f"{where(root, path, lines, at)}    [{why}]"))
        found += [entry for *_, entry in sorted(hits)]
    return found


# ----------------------------------------------------------------------------------------- the rules
def _listing(items: list[str]) -> str:
    return "\n  " + "\n  ".join(items)


def test_no_import_cycles():
    cycles = import_cycles(ROOT)
    assert not cycles, (f"{len(cycles)} import cycle(s) between the package's modules (lazy imports count; "
                        f"break them by moving the shared piece down or registering instead):{_listing(cycles)}")


def test_no_module_over_600_lines():
    long = long_modules(ROOT)
    assert not long, f"modules over {MAX_LINES} lines (split them by responsibility):{_listing(long)}"


def test_no_comfyui_import_outside_runtime():
    found = comfy_imports(ROOT)
    assert not found, f"ComfyUI imported outside runtime.py (go through openreel.runtime):{_listing(found)}"


def test_no_wan_family_checks_outside_wan():
    found = wan_checks(ROOT)
    assert not found, ("the Wan family tested by name or class outside models/wan/ (look it up in a registry "
                       f"the family fills in instead):{_listing(found)}")


# ----------------------------------------------------------------------------------------- the checkers' own tests
def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_cycle_checker_finds_cycles_and_ignores_type_checking(tmp_path):
    root = _write(tmp_path / "pkg", {
        "__init__.py": "from .sub import thing\n",
        "a.py": "from . import b\n",                                   # a -> b
        "b.py": "def f():\n    from .a import g\n",                    # b -> a, lazily: a cycle
        "c.py": ("from typing import TYPE_CHECKING\nfrom . import a\n"
                 "if TYPE_CHECKING:\n    from .d import D\n"),          # c -> a; c -> d ignored
        "d.py": "import pkg.c\n",                                      # d -> c: no cycle (c -> d is typing only)
        "e.py": "from .e import x\n",                                  # self-loop
        "sub/__init__.py": "thing = 1\n",
        "sub/x.py": "from .. import a\nfrom . import y\n",              # enclosing packages: no edge to them
        "sub/y.py": "from . import thing\n",                          # a name from sub/__init__: sub.y -> sub
        "tests/t.py": "from ..a import b\nfrom ..b import a\n",         # excluded folder
        ".hidden/h.py": "import pkg.h2\n",
    })
    graph = import_graph(root, "pkg")
    assert "pkg.tests.t" not in graph and "pkg..hidden.h" not in graph and "pkg.hidden.h" not in graph
    assert set(graph["pkg.c"]) == {"pkg.a"}                    # the TYPE_CHECKING import is not an edge
    assert set(graph["pkg.b"]) == {"pkg.a"}                    # the lazy import is
    assert set(graph["pkg.sub.x"]) == {"pkg.a", "pkg.sub.y"}   # `from .. import a`: pkg.a, not pkg itself
    assert set(graph["pkg.sub.y"]) == {"pkg.sub"}
    assert set(graph["pkg"]) == {"pkg.sub"}
    assert set(graph["pkg.d"]) == {"pkg.c"}
    cycles = import_cycles(root, "pkg")
    assert len(cycles) == 2, cycles
    assert cycles[0].startswith("2 module(s) ['pkg.a', 'pkg.b'], e.g. pkg.a -> pkg.b -> pkg.a;"), cycles
    assert "a.py:1: pkg.a -> pkg.b" in cycles[0] and "b.py:2: pkg.b -> pkg.a" in cycles[0], cycles
    assert cycles[1].startswith("1 module(s) ['pkg.e']"), cycles

    # `from .pkg import name`: the package's __init__, and the submodule when the name is one
    _write(root, {"f.py": "from .sub import x, thing\n", "g.py": "from pkg.sub.x import z\n"})
    graph = import_graph(root, "pkg")
    assert set(graph["pkg.f"]) == {"pkg.sub", "pkg.sub.x"}
    assert set(graph["pkg.g"]) == {"pkg.sub", "pkg.sub.x"}
    # the TYPE_CHECKING import made real closes the loop c -> d -> c
    (root / "c.py").write_text("from . import a\nfrom .d import D\n", encoding="utf-8")
    assert any("['pkg.c', 'pkg.d']" in c for c in import_cycles(root, "pkg"))


def test_length_and_comfy_checkers(tmp_path):
    root = _write(tmp_path / "pkg", {
        "runtime.py": "import comfy.model_management\nimport folder_paths\n",  # allowed here only
        "ok.py": "from . import nodes\nfrom .nodes import loaders\nimport comfyui_like_name_is_not_comfy\n",
        "bad.py": ("import torch, folder_paths\n"
                   "def f():\n    try:\n        from comfy.utils import ProgressBar\n    except ImportError:\n"
                   "        pass\n    import nodes\n    from comfy_extras import nodes_wan\n"
                   "    import importlib\n    return importlib.import_module('server')\n"),
        "long.py": "x = 1\n" * (MAX_LINES + 1),
        "short.py": "x = 1\n" * MAX_LINES,
        "bench/comfy_bench.py": "import comfy\n",
    })
    assert comfy_imports(root) == ["bad.py:1: import torch, folder_paths",
                                   "bad.py:4: from comfy.utils import ProgressBar",
                                   "bad.py:7: import nodes",
                                   "bad.py:8: from comfy_extras import nodes_wan",
                                   "bad.py:10: return importlib.import_module('server')"]
    assert long_modules(root) == [f"long.py: {MAX_LINES + 1} lines"]


def test_wan_checker(tmp_path):
    root = _write(tmp_path / "pkg", {
        "flagged.py": ('if x == "wan21":\n    pass\n'
                       'y = kind != "wan"\n'
                       'z = fmt in ("wan21", "wan22")\n'
                       'w = fmt not in {"wan22"}\n'
                       'v = isinstance(m, WanDiT)\n'
                       'u = isinstance(m, (nn.Linear, wan.model.WanVAE))\n'
                       'FORMATS = {"wan21": 16, "wan22": 48}\n'
                       'ok = name.startswith("wan")\n'
                       'match kind:\n    case "wan22":\n        pass\n'
                       'FACTORS = {\n    "hunyuan": 1,\n    "wan": 2,\n}\n'),
        "clean.py": ('a = kind == "hunyuan"\n'
                     'b = name == "wan2.1_t2v_14B.safetensors"\n'   # a file name, not a family string
                     'c = "wander" == s\n'
                     'd = {16: "wan21"}\n'                            # a value, not a key
                     'e = isinstance(m, Wander)\n'
                     'f = describe("wan")\n'                          # an argument, not a test
                     'g = registry["wan"]\n'),
        "models/wan/family.py": 'if kind == "wan21" or isinstance(m, WanDiT):\n    FORMATS = {"wan22": 48}\n',
        "tests/t.py": 'assert kind == "wan21"\n',
    })
    found = wan_checks(root)
    assert [f.split("    [")[0] for f in found] == [
        'flagged.py:1: if x == "wan21":',
        'flagged.py:3: y = kind != "wan"',
        'flagged.py:4: z = fmt in ("wan21", "wan22")',
        'flagged.py:5: w = fmt not in {"wan22"}',
        'flagged.py:6: v = isinstance(m, WanDiT)',
        'flagged.py:7: u = isinstance(m, (nn.Linear, wan.model.WanVAE))',
        'flagged.py:8: FORMATS = {"wan21": 16, "wan22": 48}',
        'flagged.py:9: ok = name.startswith("wan")',
        'flagged.py:11: case "wan22":',
        'flagged.py:15: "wan": 2,',                                  # the key's own line
    ], found
