"""The import graph as a test, read with ``ast`` (nothing is imported).

Layers, bottom up: llasm_cli (the runtime) < export (formats: GGUF writers, the quantizer, the
Whisper readers) < finetune (the recipe) < bench. A layer may import the ones below it, never one
above, not even inside a function: the runtime installs and runs without the training stack, and
export runs without the recipe (``llasm export`` is the exporter's own command, which it registers
through an entry point). Inside llasm_cli, the module-level imports form no cycle, and its rooms
(sub-packages; each top-level module is a room of its own) form none either, counting the imports
made inside functions too.

finetune/ and export/ are installed as llasm_finetune / llasm_export; both spellings count as
the same package.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("llasm_cli", "finetune", "export", "bench")
ALIASES = {"llasm_finetune": "finetune", "llasm_export": "export"}
LAYERS = ("llasm_cli", "export", "finetune", "bench")  # bottom up
FORBIDDEN = {layer: set(LAYERS[i + 1 :]) for i, layer in enumerate(LAYERS)}  # every layer above


@dataclass(frozen=True)
class Import:
    file: str  # relative to the root, e.g. "llasm_cli/cli.py"
    line: int
    module: str  # the importing module, e.g. "llasm_cli.cli"
    target: str  # the module imported, aliases mapped, e.g. "export.bundle"
    in_function: bool  # inside a def or lambda: runs when called, not on import
    type_checking: bool  # under ``if TYPE_CHECKING:``: never runs

    @property
    def top(self) -> str:
        return self.target.split(".")[0]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def runs_on_import(self) -> bool:
        return not (self.in_function or self.type_checking)


def canonical(name: str) -> str:
    head, _, rest = name.partition(".")
    head = ALIASES.get(head, head)
    return f"{head}.{rest}" if rest else head


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages' folders."""
    out: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _dynamic_target(node: ast.Call) -> str | None:
    """The constant name given to importlib.import_module(...) or __import__(...)."""
    f = node.func
    named = (isinstance(f, ast.Name) and f.id in ("__import__", "import_module")) or (
        isinstance(f, ast.Attribute) and f.attr == "import_module"
    )
    if named and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        name = node.args[0].value
        return None if name.startswith(".") else name
    return None


def imports_of(root: Path, module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import in one file, relative ones resolved against its package."""
    rel = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def add(node: ast.AST, target: str, in_function: bool, type_checking: bool) -> None:
        found.append(Import(rel, node.lineno, module, canonical(target), in_function, type_checking))

    def resolve_from(node: ast.ImportFrom) -> list[str]:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            if node.level - 1 > len(base) - 1:
                raise AssertionError(f"{rel}:{node.lineno}: relative import beyond the top-level package")
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        prefix = canonical(prefix)
        targets = []
        for alias in node.names:
            sub = f"{prefix}.{alias.name}"
            targets.append(sub if sub in known else prefix)
        return sorted(set(targets))

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node, alias.name, in_function, type_checking)
        elif isinstance(node, ast.ImportFrom):
            for target in resolve_from(node):
                add(node, target, in_function, type_checking)
        elif isinstance(node, ast.Call) and (target := _dynamic_target(node)):
            add(node, target, in_function, type_checking)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, in_function, True)
            for child in node.orelse:
                visit(child, in_function, type_checking)
            visit(node.test, in_function, type_checking)
            return
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner, type_checking)

    visit(tree, False, False)
    return found


def all_imports(root: Path, packages=PACKAGES) -> tuple[dict[str, Path], list[Import]]:
    files = module_files(root, packages)
    known = set(files)
    found: list[Import] = []
    for module, path in files.items():
        found += imports_of(root, module, path, known)
    return files, found


def layer_violations(imports: list[Import]) -> list[str]:
    bad = []
    for imp in imports:
        layer = imp.module.split(".")[0]
        if imp.top not in FORBIDDEN.get(layer, set()):
            continue
        how = "inside a function" if imp.in_function else "at module level"
        bad.append(f"{imp.where}: {layer} imports {imp.target} ({how})")
    return bad


def missing_modules(files: dict[str, Path], imports: list[Import]) -> list[str]:
    """Imports of the packages' own modules that name no file (a module moved, a stale import)."""
    return [f"{imp.where}: {imp.target} does not exist" for imp in imports if imp.top in PACKAGES and imp.target not in files]


def module_graph(files: dict[str, Path], imports: list[Import], package: str) -> dict[str, dict[str, Import]]:
    """Module-level import edges between the modules of ``package``: importer -> target -> first import.

    Importing a.b.c also runs a.b's __init__; that edge is added unless the importer lives inside
    a.b itself (a package's own modules importing siblings through it is how packages work).
    """
    graph: dict[str, dict[str, Import]] = {m: {} for m in files if m.split(".")[0] == package}
    for imp in imports:
        if imp.module not in graph or not imp.runs_on_import or imp.top != package:
            continue
        parts = imp.target.split(".")
        targets = [imp.target] + [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
        for target in targets:
            if target == imp.module or (target != imp.target and imp.module.startswith(target + ".")):
                continue
            if target in graph:
                graph[imp.module].setdefault(target, imp)
    return graph


Edge = tuple[str, str, Import]  # importer, module it makes Python import, the import statement


def find_cycle(graph: dict[str, dict[str, Import]]) -> list[Edge] | None:
    """One cycle as the edges along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[tuple[str, Edge | None]] = []

    def dfs(node: str) -> list[Edge] | None:
        state[node] = 1
        for nxt, imp in sorted(graph[node].items()):
            if state.get(nxt) == 1:
                start = next(i for i, (m, _) in enumerate(path) if m == nxt)
                return [e for _, e in path[start + 1 :] if e is not None] + [(node, nxt, imp)]
            if nxt not in state:
                path.append((nxt, (node, nxt, imp)))
                found = dfs(nxt)
                if found:
                    return found
                path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            path[:] = [(node, None)]
            found = dfs(node)
            if found:
                return found
    return None


def describe(cycle: list[Edge]) -> str:
    lines = [" -> ".join([cycle[0][0]] + [target for _, target, _ in cycle])]
    for importer, target, imp in cycle:
        via = "" if target == imp.target else f" (importing {imp.target} runs it)"
        lines.append(f"  {imp.where}: {importer} imports {target}{via}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def repo():
    return all_imports(ROOT)


# --- the repository --------------------------------------------------------------------------


def test_every_package_is_scanned(repo):
    files, imports = repo
    for package in PACKAGES:
        assert package in files, f"{package}/__init__.py not found under {ROOT}"
        assert sum(m.split(".")[0] == package for m in files) >= 2, package
    assert len(imports) > 100
    # relative imports were resolved: the runtime's modules import each other
    internal = [i for i in imports if i.module.startswith("llasm_cli") and i.top == "llasm_cli"]
    assert len(internal) > 20


def test_layers(repo):
    _, imports = repo
    bad = layer_violations(imports)
    assert not bad, f"imports of a higher layer (bottom up: {' < '.join(LAYERS)}):\n" + "\n".join(bad)


def test_imports_inside_the_packages_resolve(repo):
    """A relative import (or one of the package's own names) names a module or package that exists."""
    files, imports = repo
    missing = missing_modules(files, imports)
    assert not missing, "\n".join(missing)


def test_no_import_cycle_in_the_runtime(repo):
    files, imports = repo
    graph = module_graph(files, imports, "llasm_cli")
    assert sum(len(v) for v in graph.values()) > 10  # the graph is not empty by mistake
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in llasm_cli (module-level imports):\n" + describe(cycle)


def room_of(module: str, files: dict[str, Path]) -> str:
    """A runtime module's room: its sub-package of llasm_cli (llasm_cli.audio, llasm_cli.llm, ...),
    else the top-level module itself."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and files.get(module, Path()).name == "__init__.py"):
        return ".".join(parts[:2])
    return module


def room_graph(files: dict[str, Path], imports: list[Import], package: str = "llasm_cli") -> dict[str, dict[str, Import]]:
    """Import edges between the runtime's rooms, counting the imports made inside functions too
    (they run on the journeys all the same): importer room -> imported room -> first import."""
    graph: dict[str, dict[str, Import]] = {room_of(m, files): {} for m in files if m.split(".")[0] == package}
    for imp in imports:
        if imp.type_checking or imp.module.split(".")[0] != package or imp.top != package or imp.target == package:
            continue
        a, b = room_of(imp.module, files), room_of(imp.target, files)
        if a != b and b in graph:
            graph[a].setdefault(b, imp)
    return graph


def test_no_cycle_between_the_runtimes_rooms(repo):
    """A journey reads downward through the runtime's rooms: no room calls back into one above it."""
    files, imports = repo
    graph = room_graph(files, imports)
    assert {"llasm_cli.audio", "llasm_cli.llm", "llasm_cli.formats", "llasm_cli.towers"} <= graph.keys()
    assert sum(len(v) for v in graph.values()) > 20
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between llasm_cli's rooms (imports inside functions too):\n" + describe(cycle)


MAX_LINES, EXPLAIN_OVER = 600, 400


def test_modules_are_small_or_say_why(repo):
    """No module over 600 lines; one over 400 says why in its docstring ("... 400 lines ...")."""
    files, _ = repo
    long, silent = [], []
    for module, path in sorted(files.items()):
        text = path.read_text(encoding="utf-8")
        n = text.count("\n")
        if n > MAX_LINES:
            long.append(f"{path.relative_to(ROOT)}: {n} lines")
        elif n > EXPLAIN_OVER and "400 lines" not in (ast.get_docstring(ast.parse(text)) or ""):
            silent.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not long, f"modules over {MAX_LINES} lines (split them):\n" + "\n".join(long)
    assert not silent, f"modules over {EXPLAIN_OVER} lines whose docstring does not say why:\n" + "\n".join(silent)


# --- the checker itself, on a made-up tree ---------------------------------------------------


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_what_it_should(tmp_path):
    write_tree(tmp_path, {
        "llasm_cli/__init__.py": "",
        "llasm_cli/a.py": "from . import b\n",
        "llasm_cli/b.py": "from .sub.c import x\n",
        "llasm_cli/sub/__init__.py": "from ..a import y\n",
        "llasm_cli/sub/c.py": "from .. import d\n",
        "llasm_cli/d.py": "import typing\nif typing.TYPE_CHECKING:\n    from .a import z\n\ndef f():\n    from .a import z\n",
        "llasm_cli/cli.py": "def export():\n    from llasm_export.bundle import e\n\nimport finetune\n",
        "llasm_cli/bad.py": "class C:\n    def m(self):\n        __import__('bench.latency')\n",
        "finetune/__init__.py": "import importlib\nimportlib.import_module('llasm_export')\nimport bench.x\n",
        "finetune/ok.py": "from llasm_cli import a\n",
        "export/__init__.py": "from llasm_finetune import ok\n",
        "export/x.py": "from bench import y\n",
        "bench/__init__.py": "from export import x\nfrom llasm_cli.cli import z\n",
    })
    files, imports = all_imports(tmp_path)
    bad = layer_violations(imports)
    assert sorted(bad) == [
        "export/__init__.py:1: export imports finetune.ok (at module level)",
        "export/x.py:1: export imports bench (at module level)",
        "finetune/__init__.py:3: finetune imports bench.x (at module level)",
        "llasm_cli/bad.py:3: llasm_cli imports bench.latency (inside a function)",
        "llasm_cli/cli.py:2: llasm_cli imports export.bundle (inside a function)",
        "llasm_cli/cli.py:4: llasm_cli imports finetune (at module level)",
    ]
    graph = module_graph(files, imports, "llasm_cli")
    assert set(graph["llasm_cli.d"]) == set()  # TYPE_CHECKING and function-level imports run later
    assert graph["llasm_cli.b"].keys() == {"llasm_cli.sub.c", "llasm_cli.sub"}
    assert graph["llasm_cli.sub.c"].keys() == {"llasm_cli.d"}
    cycle = find_cycle(graph)
    assert cycle is not None
    assert [(imp.where, target) for _, target, imp in cycle] == [
        ("llasm_cli/a.py:1", "llasm_cli.b"), ("llasm_cli/b.py:1", "llasm_cli.sub"),
        ("llasm_cli/sub/__init__.py:1", "llasm_cli.a"),
    ]
    assert describe(cycle).splitlines() == [
        "llasm_cli.a -> llasm_cli.b -> llasm_cli.sub -> llasm_cli.a",
        "  llasm_cli/a.py:1: llasm_cli.a imports llasm_cli.b",
        "  llasm_cli/b.py:1: llasm_cli.b imports llasm_cli.sub (importing llasm_cli.sub.c runs it)",
        "  llasm_cli/sub/__init__.py:1: llasm_cli.sub imports llasm_cli.a",
    ]
    write_tree(tmp_path, {"llasm_cli/sub/__init__.py": "def later():\n    from ..a import y\n"})
    files, imports = all_imports(tmp_path)
    assert find_cycle(module_graph(files, imports, "llasm_cli")) is None


def test_room_checker_sees_a_cycle_through_a_function(tmp_path):
    write_tree(tmp_path, {
        "llasm_cli/__init__.py": "",
        "llasm_cli/top.py": "from .low.a import x\n",
        "llasm_cli/low/__init__.py": "",
        "llasm_cli/low/a.py": "def f():\n    from ..top import y\n",
        "llasm_cli/low/b.py": "from . import a\n",
        "finetune/__init__.py": "", "export/__init__.py": "", "bench/__init__.py": "",
    })
    files, imports = all_imports(tmp_path)
    assert find_cycle(module_graph(files, imports, "llasm_cli")) is None  # module level: no cycle
    graph = room_graph(files, imports)
    assert graph["llasm_cli.top"].keys() == {"llasm_cli.low"} and graph["llasm_cli.low"].keys() == {"llasm_cli.top"}
    cycle = find_cycle(graph)
    assert cycle is not None and {a for a, _, _ in cycle} == {"llasm_cli.top", "llasm_cli.low"}


def test_checker_reports_missing_modules(tmp_path):
    write_tree(tmp_path, {
        "llasm_cli/__init__.py": "",
        "llasm_cli/a.py": "from .gone import x\nfrom . import b\n",
        "llasm_cli/b.py": "",
        "finetune/__init__.py": "", "export/__init__.py": "", "bench/__init__.py": "",
    })
    files, imports = all_imports(tmp_path)
    assert missing_modules(files, imports) == ["llasm_cli/a.py:1: llasm_cli.gone does not exist"]


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists the packages setuptools puts in the wheel by hand (two are installed under other
    names), so a new sub-package missing from it would install broken with `pip install .` while an editable
    install still worked."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {v: k for k, v in config["package-dir"].items()}  # "finetune" -> "llasm_finetune"
    found = set()
    for init in ROOT.glob("*/**/__init__.py"):
        parts = list(init.parent.relative_to(ROOT).parts)
        if parts[0] in ("llasm_cli", *folders):
            parts[0] = folders.get(parts[0], parts[0])
            found.add(".".join(parts))
    assert found == listed, f"in the tree, not listed: {sorted(found - listed)}; listed, not in the tree: {sorted(listed - found)}"
