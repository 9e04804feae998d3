"""The package's imports flow one way: no module imports one that imports it back (at top level
or inside a function), and no module imports another module's underscore names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "polytask"


def module_files() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(the polytask module imported, the name taken from it or None), for every import anywhere in the file."""

    def known(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(known(a.name), None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]) if node.level \
                else node.module
            base = base.rstrip(".")
            for a in node.names:  # "from polytask.store import db" imports the module polytask.store.db
                sub = f"{base}.{a.name}"
                out.append((sub, None) if sub in modules else (known(base), a.name))
    return [(m, n) for m, n in out if m is not None and m != name]


def graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = module_files()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, path in modules.items():
        for target, imported in imports(name, path, modules):
            edges[name].add(target)
            if imported and imported.startswith("_") and not imported.startswith("__"):
                private.append(f"{name} imports {target}.{imported}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
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

    for v in edges:
        if v not in index:
            visit(v)
    return found


def private_uses(path: Path, modules: dict[str, Path]) -> list[str]:
    """``from polytask.x import _name`` and ``x._name`` on a polytask module ``x`` imported by name,
    anywhere in a file outside the package (tests, tools, benchmarks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases = {}  # local name -> the polytask module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("polytask"):
            for a in node.names:
                if f"{node.module}.{a.name}" in modules:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                elif a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{path.name} imports {node.module}.{a.name}")
        elif isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.name} uses {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_import_cycles_and_no_private_cross_imports():
    edges, private = graph()
    assert len(edges) > 50 and "polytask.engine" in edges["polytask.runtime"]  # the walk sees the package
    assert cycles(edges) == []
    assert private == []


def test_tests_tools_and_benchmarks_use_only_public_names():
    modules = module_files()
    root = PACKAGE.parent
    files = [p for folder in ("tests", "tools", "benchmarks") for p in sorted((root / folder).rglob("*.py"))]
    assert Path(__file__) in files
    assert [u for p in files for u in private_uses(p, modules)] == []


def test_a_private_use_is_found(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from polytask.model import _secret\nfrom polytask import engine as e\ne._hidden()\n")
    assert private_uses(probe, module_files()) == ["probe.py imports polytask.model._secret",
                                                   "probe.py uses polytask.engine._hidden"]


# (importer, imported): package prefixes that must not meet, with the layering they keep.
FORBIDDEN = [
    ("polytask.tasks", "polytask.store"),  # a task splits sentences (polytask.text) and embeds (polytask.embed)
    # without the document store; the store and the applications sit beside or above the tasks
    ("polytask.text", "polytask"),  # the text tools are a leaf below the tasks, the store and the apps
    ("polytask.embed", "polytask.store"),
    ("polytask.prompts", "polytask"),  # the shared task wording is a leaf
    ("polytask.apps", "polytask.tasks"),  # the applications take task wording from polytask.prompts
]


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def forbidden_imports(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {t}" for m, targets in edges.items() for t in targets
                  for importer, imported in FORBIDDEN if within(m, importer) and within(t, imported))


def test_layers_are_kept():
    edges, _ = graph()
    assert "polytask.text" in edges["polytask.tasks.qa"]  # the walk sees function-level imports
    assert forbidden_imports(edges) == []
    assert forbidden_imports({"polytask.tasks.qa": {"polytask.store.text"}}) == [
        "polytask.tasks.qa imports polytask.store.text"
    ]


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def loaded_after_import(module: str) -> set[str]:
    """The polytask modules that importing ``module`` loads, in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('polytask')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    return set(out.stdout.split())


def test_config_is_a_leaf():
    # Reading a training config (or the optimizer's) must not load the task registry, the data
    # pipeline or the model code: polytask.data and polytask.lora consume config, not the reverse.
    loaded = loaded_after_import("polytask.config")
    assert "polytask.config" in loaded
    assert not {m for m in loaded if m.split(".")[:2] in (["polytask", "data"], ["polytask", "tasks"],
                                                          ["polytask", "lora"])}
