"""Structure the codebase promises: no module-level import circle, a model that opens no file, short modules,
presets outside ``config.py``, one name list per strategy registry."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "page4d"
MAX_LINES = 500

DEFERRED_DELEGATES = {("page4d.model", "page4d.checkpoints.pretrained")}
"""The one function-level import allowed to point back up the layering: ``Page4D.from_pretrained``'s thin delegate
into the weights loader, which builds ``Page4D`` models (the Hub mixin puts ``from_pretrained`` on the class)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(path: Path, module_level: bool) -> set[str]:
    """page4d modules (and the packages they are in) imported by ``path``: at module level only (``module_level``)
    or inside functions only."""
    tree = ast.parse(path.read_text())
    top = set(tree.body)
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or (node in top) != module_level:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif node.level == 0 and node.module:
            targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            targets = []
        for target in targets:  # importing a.b.c runs a.b's __init__ first: a dependency too
            parts = target.split(".")
            names |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & MODULES.keys()
    own = module_name(path)
    return {t for t in names if t != own and not own.startswith(t + ".")}  # a package's own __init__ runs first


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_level_import_circle():
    graph = {name: imported(path, module_level=True) for name, path in MODULES.items()}
    assert sum(map(len, graph.values())) > 100  # the parser sees the imports
    assert cycles(graph) == []


def test_function_level_imports_close_no_circle_except_the_model_delegates():
    graph = {name: imported(path, module_level=True) for name, path in MODULES.items()}
    for name, path in MODULES.items():
        graph[name] |= imported(path, module_level=False)
    for source, target in DEFERRED_DELEGATES:
        graph[source].discard(target)
    assert cycles(graph) == []


def test_model_module_opens_no_file():
    tree = ast.parse((PACKAGE / "model.py").read_text())
    imports = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imports |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imports & {"json", "safetensors", "pickle", "shutil", "os", "io"}
    calls = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            owner = getattr(n.func.value, "id", "") if isinstance(n.func, ast.Attribute) else ""
            name = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
            if owner != "native":  # the delegate: the native format's own module writes the files
                calls.add(name)
    file_calls = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "load_file", "save_file", "load",
                  "save", "mkdir"}
    assert "Aggregator" in calls and not calls & file_calls, calls & file_calls


def test_no_library_module_is_longer_than_one_sitting():
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_config_module_holds_no_presets():
    import page4d.config as config
    from page4d import presets

    tree = ast.parse((PACKAGE / "config.py").read_text())
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    builds = [f.name for f in functions for n in ast.walk(f)
              if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "ModelConfig"]
    assert builds == [] and not hasattr(config, "PRESETS") and not hasattr(config, "preset")
    assert "tiny-mv" in presets.PRESETS and isinstance(presets.preset("tiny-mv"), config.ModelConfig)
