"""The import graph of a source tree, read with ``ast`` (nothing is imported), and its cycles.

Every ``import``/``from ... import`` counts, at module level or inside a function (a lazy import
only hides a cycle until the function runs).  ``from pkg import name`` is an edge to the submodule
``pkg.name`` when there is one, else to the package ``pkg`` (its ``__init__``), which is what Python
executes.  Modules outside the tree are ignored.
"""

from __future__ import annotations

import ast
from pathlib import Path


def modules_of(root: Path, name: str) -> dict[str, Path]:
    """Module name -> file of every module of the package ``name`` whose folder is ``root``.

    A package is a folder with ``__init__.py``; its own name stands for its ``__init__``."""
    found: dict[str, Path] = {}
    if not (root / "__init__.py").is_file():
        return found
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        # a folder without __init__.py on the way is not part of the package
        if any(not (root.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([name, *parts])] = path
    return found


def _is_package(module: str, files: dict[str, Path]) -> bool:
    return files[module].name == "__init__.py"


def _resolve(module: str, level: int, target: str | None, files: dict[str, Path]) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not _is_package(module, files):
        base = base[:-1]  # a plain module's relative imports start from its package
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _known(name: str, files: dict[str, Path]) -> str | None:
    """``name`` or its nearest enclosing module that is in the tree (``a.b.c`` may be an attribute of ``a.b``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in files:
            return candidate
        parts.pop()
    return None


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> modules of ``files`` it imports (anywhere in its body)."""
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, node.level, node.module, files)
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in files else source)
            for t in targets:
                hit = _known(t, files)
                if hit is not None and hit != module:
                    graph[module].add(hit)
    return graph


def package_of(module: str, files: dict[str, Path]) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to the package itself)."""
    return module if _is_package(module, files) else module.rsplit(".", 1)[0]


def package_graph(graph: dict[str, set[str]], files: dict[str, Path]) -> dict[str, set[str]]:
    """The module graph folded onto packages (edges inside one package dropped)."""
    out: dict[str, set[str]] = {}
    for module, deps in graph.items():
        p = package_of(module, files)
        out.setdefault(p, set())
        for d in deps:
            q = package_of(d, files)
            if q != p:
                out[p].add(q)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)
