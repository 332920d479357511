"""The shape of the house: every import of a bsqvit module points down a fixed order of layers,
there is no import cycle, and nothing but the command line imports the command line.

Imports are read from the source (module level and inside functions alike), so a cycle hidden
in a function body counts. ``from pkg import sub`` counts as an import of ``pkg.sub`` when
``sub`` is a module, else of ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "bsqvit"

# lowest first; a module may import its own layer and those below it
LAYERS = [
    ["version", "config", "extras", "io"],
    ["quantizers", "nn", "nets", "data"],
    ["models", "metrics", "pretrained"],
    ["train"],
    ["codec"],
    ["generate"],
    ["evaluation", "export"],
    ["demo", "serve"],
    ["cli"],
    ["__main__"],
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = ["bsqvit", *p.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules) -> set[str]:
    """bsqvit modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            found |= set(subs) if len(subs) == len(node.names) else {base, *subs}
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return RANK.get(parts[1]) if len(parts) > 1 else None  # the root package is the public facade


def test_every_module_has_a_layer():
    assert [m for m in _graph() if m != "bsqvit" and _layer(m) is None] == []


def test_imports_point_down():
    bad = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps
           if a != "bsqvit" and (b == "bsqvit" or _layer(b) > _layer(a))]
    assert bad == []


def test_only_the_command_line_imports_the_command_line():
    bad = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps
           if b.startswith("bsqvit.cli") and not a.startswith(("bsqvit.cli", "bsqvit.__main__"))]
    assert bad == []


def test_no_import_cycles():
    graph, index, low, stack, on_stack, cycles = _graph(), {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checker_sees_cycles_and_upward_imports(tmp_path, monkeypatch):
    """The checks above can fail: a planted cycle and a planted upward import are found."""
    pkg = tmp_path / "bsqvit"
    (pkg / "io").mkdir(parents=True)
    (pkg / "cli").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "io" / "__init__.py").write_text("from .a import x\n")
    (pkg / "io" / "a.py").write_text("def f():\n    from . import b\nx = 1\n")
    (pkg / "io" / "b.py").write_text("from .a import x\nfrom ..cli import main\n")
    (pkg / "cli" / "__init__.py").write_text("main = 1\n")
    monkeypatch.setitem(globals(), "SRC", pkg)
    graph = _graph()
    assert "bsqvit.io.a" in graph["bsqvit.io.b"] and "bsqvit.io.b" in graph["bsqvit.io.a"]
    assert "bsqvit.cli" in graph["bsqvit.io.b"]
